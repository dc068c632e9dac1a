"""Training the inverse-dynamics probe on real frames (`train_probe`); the model is `gaia_gym.models.probe`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from gaia_gym.checkpoint import read_model_info, save_model
from gaia_gym.data.loader import EpisodeIndex, has_split
from gaia_gym.evaluation.probe import ProbePairs, _head_stats, collate_pairs, evaluate_probe
from gaia_gym.models.probe import KIND, Probe, ProbeConfig, with_reconstructions


def pair_batches(data: Path, cfg: ProbeConfig, batch_size: int, split: str = "train", workers: int = 1,
                 buffer_episodes: int = 8, tokenizer: nn.Module | None = None, recon_fraction: float = 0.5):
    """Batch factory for the training loop: endless, augmented, rank-sharded batches of labelled pairs.

    With a `tokenizer`, a `recon_fraction` of each batch's pairs is replaced by the tokenizer's
    reconstruction of the same real frames (still real drives, never the world model's), so the probe also
    reads frames in the decoder's style, which is how it sees imagined frames.
    """

    def make(rank: int, world_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        ds = ProbePairs(data, split, cfg, seed=seed, shuffle=True, augment=True, buffer_episodes=buffer_episodes,
                        rank=rank, world_size=world_size)
        kw = dict(num_workers=workers, persistent_workers=True, prefetch_factor=4) if workers else {}
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_pairs, **kw)
        while True:
            for b in loader:
                if tokenizer is not None and recon_fraction > 0:
                    b["frames"] = with_reconstructions(tokenizer, b["frames"], recon_fraction)
                yield b

    return make


def train_probe(
    data: str | Path,
    out: str | Path,
    minutes: float = 5.0,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-3,
    workers: int = 1,
    threads: int = 0,
    seed: int = 0,
    bf16: bool = False,
    val_max_pairs: int | None = None,
    progress: bool = True,
    train_cfg=None,
    tokenizer: nn.Module | None = None,
    recon_fraction: float = 0.5,
    checkpoint_minutes: float | None = None,
    **config_overrides,
) -> dict:
    """Train (or resume) a probe on the train split of `data` into model directory `out`, for `steps`
    optimizer steps or `minutes` of training, whichever ends first; then evaluate it on the val split
    (held-out tracks) and store those metrics in the model file's meta under ``"val"``.

    `checkpoint_minutes`: checkpoint at least this often (default: the training loop's
    DEFAULT_CHECKPOINT_MINUTES; ignored with `train_cfg`).

    `tokenizer` (optional): train on a `recon_fraction` of tokenizer reconstructions of the real pairs too
    (see `pair_batches`); validation then also reports the accuracy on reconstructions (``"val_recon"``).

    Returns the training loop's result plus ``"val"`` (see `evaluate_probe`; None without a val split).
    """
    from gaia_gym.train.loop import DEFAULT_CHECKPOINT_MINUTES, TrainConfig, train

    data, out = Path(data), Path(out)
    cfg = ProbeConfig(**config_overrides)
    train_cfg = train_cfg or TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 10),
                                         max_minutes=minutes,
                                         checkpoint_minutes=DEFAULT_CHECKPOINT_MINUTES if checkpoint_minutes is None
                                         else checkpoint_minutes,
                                         log_every=25, image_every=max(1, steps // 10), bf16=bf16, seed=seed,
                                         threads=threads)
    EpisodeIndex(data, split="train")  # a clear error now, not in a worker process later
    has_val = has_split(data, "val")
    torch.manual_seed(seed)
    model = Probe(cfg)

    val_batch = None
    if has_val:  # a fixed handful of val pairs for the TensorBoard curve
        first = list(itertools.islice(iter(ProbePairs(data, "val", cfg, shuffle=False)), 256))
        val_batch = collate_pairs(first) if first else None

    def log_images(m, writer, step):
        if val_batch is None:
            return
        p = torch.sigmoid(m(val_batch["frames"].to(next(m.parameters()).device))).cpu().numpy()
        for j, name in enumerate(("steer", "faster")):
            acc = _head_stats(p[:, j], val_batch[name].numpy())["accuracy"]
            if acc is not None:
                writer.add_scalar(f"val/{name}_acc", acc, step)

    if tokenizer is not None:
        tokenizer.eval()
    batches = pair_batches(data, cfg, train_cfg.batch_size, workers=workers, tokenizer=tokenizer,
                           recon_fraction=recon_fraction)
    result = train(model, KIND, cfg, batches, train_cfg, out, log_images=log_images, progress=progress)
    model.eval()
    val = evaluate_probe(model, data, "val", max_pairs=val_max_pairs) if has_val else None
    extra = {}
    if has_val and tokenizer is not None:
        extra["val_recon"] = evaluate_probe(model, data, "val", max_pairs=val_max_pairs, tokenizer=tokenizer)
    info = read_model_info(out)
    save_model(out, model, KIND, cfg, meta={**info["meta"], "val": val, **extra})  # same weights: same sha256
    return {**result, "val": val, **extra}


__all__ = ["pair_batches", "train_probe"]
