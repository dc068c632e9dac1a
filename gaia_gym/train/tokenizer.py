"""Training the tokenizer (`gaia-gym train tokenizer`).

Training streams frames from the dataset's train split (whole clips, flattened to frames, so a batch
mixes many tracks), with the shared training loop (bf16 autocast, channels_last, TensorBoard,
checkpoints, resume, DDP). A sample of validation frames is reconstructed into TensorBoard as it goes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

from gaia_gym.bundle import TOKENIZER_KIND
from gaia_gym.data.loader import ClipDataset, EpisodeIndex
from gaia_gym.data.loader import has_split
from gaia_gym.evaluation.tokenizer import sample_frames
from gaia_gym.metrics import psnr_uint8
from gaia_gym.models.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig
from gaia_gym.precision import autocast
from gaia_gym.sims.rig import dataset_rig
from gaia_gym.errors import ConfigError

KIND = TOKENIZER_KIND


def tokenizer_config(preset: str = "default", **overrides) -> TokenizerConfig:
    if preset not in TOKENIZER_PRESETS:
        raise ConfigError(f"unknown tokenizer preset {preset!r}; choose from {', '.join(TOKENIZER_PRESETS)}")
    return TokenizerConfig(**{**TOKENIZER_PRESETS[preset], **overrides})


def frame_batches(data: Path, batch_size: int, clip_len: int = 4, split: str = "train", views: bool = False):
    """Factory for the training loop: rank/world-size aware endless stream of frame batches.

    Short clips (4 frames) from a buffer of episodes keep the stream diverse while reading each shard
    sequentially; the batch is `batch_size` frames. `views`: every camera of a rig dataset's `views`
    (a tokenizer is shared by the rig's cameras), so a clip gives clip_len x V frames.
    """
    field = "views" if views else "frames"
    V = len(dataset_rig(data)) if views else 1

    def make(rank: int, world_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        ds = ClipDataset(data, split=split, clip_len=clip_len, fields=(field,), buffer_episodes=16,
                         seed=seed, shuffle=True, rank=rank, world_size=world_size)
        per = max(1, batch_size // (clip_len * V))
        loader = torch.utils.data.DataLoader(ds, batch_size=per, num_workers=1, persistent_workers=True,
                                             prefetch_factor=4)
        while True:
            for b in loader:
                f = b[field]
                yield {"frames": f.reshape(-1, *f.shape[-3:])}

    return make


def train_tokenizer(
    data: Path,
    out: Path,
    preset: str = "default",
    train_cfg=None,
    teacher: torch.nn.Module | None = None,
    progress: bool = True,
    init: Path | None = None,
    **model_overrides,
) -> dict:
    """Train (or resume training) a tokenizer on the train split of `data` into model directory `out`.
    `init`: a tokenizer directory of the same architecture to start from (ignored when `out` already
    holds a checkpoint: a resumed run continues from its own)."""
    from gaia_gym.train.loop import TrainConfig, train

    cfg = tokenizer_config(preset, **model_overrides)
    train_cfg = train_cfg or TrainConfig(steps=6000, batch_size=64, lr=1e-3, warmup_steps=200,
                                         channels_last=True, log_every=25, image_every=500)
    EpisodeIndex(data, split="train")  # a clear error now, not in a worker process later
    model = Tokenizer(cfg, teacher=teacher)
    if init is not None and not (Path(out) / "config.json").exists():
        from gaia_gym.checkpoint import load_weights_into, read_model_info

        if read_model_info(init).get("kind") != KIND:
            raise ConfigError(f"--init {init} is not a tokenizer")
        load_weights_into(model, init)
    return train(model, KIND, cfg, frame_batches(data, train_cfg.batch_size), train_cfg, out,
                 log_images=reconstruction_logger(data, train_cfg.bf16), progress=progress)


def reconstruction_logger(data: Path, bf16: bool, n: int = 8):
    """`log_images` for a frame codec (anything with encode/decode of uint8 frames): n validation frames
    over their reconstructions, and their PSNR, into TensorBoard."""
    val_frames = sample_frames(data, "val" if has_split(data, "val") else "train", n)

    def log_images(m, writer, step):
        f = torch.from_numpy(val_frames).to(next(m.parameters()).device)
        with autocast(f.device, bf16):
            r = m.decode(m.encode(f))
        grid = torch.cat([torch.cat(list(f), 1), torch.cat(list(r), 1)], 0)  # (2H, nW, 3)
        writer.add_image("val/reconstruction", grid.cpu().numpy(), step, dataformats="HWC")
        writer.add_scalar("val/psnr_db", psnr_uint8(r, f).mean().item(), step)

    return log_images


def decoder_student(teacher: Tokenizer, channels) -> Tokenizer:
    """A tokenizer with `teacher`'s encoder and quantizer (copied, frozen: the same frames give the same
    tokens, so world models trained on the teacher's tokens read it unchanged) and a new decoder of
    widths `channels` (one per resolution, token grid upwards), to be trained. Widths equal to the
    teacher's: its decoder is the starting point (fine-tuning, e.g. on a rig's other cameras)."""
    channels = tuple(int(c) for c in channels)
    if len(channels) != len(teacher.cfg.dec_channels) or min(channels, default=0) < 1:
        raise ConfigError(f"--channels needs {len(teacher.cfg.dec_channels)} positive widths (one per resolution "
                          f"below the frame's, like the teacher's {list(teacher.cfg.dec_channels)}), got {list(channels)}")
    cfg = replace(teacher.cfg, dec_channels=channels, distill_weight=0.0, distill_dim=0)
    student = Tokenizer(cfg)
    if channels == tuple(teacher.cfg.dec_channels):
        student.decoder.load_state_dict(teacher.decoder.state_dict())
    for part in Tokenizer.CODE_PARTS:
        getattr(student, part).load_state_dict(getattr(teacher, part).state_dict())
        getattr(student, part).requires_grad_(False)
    return student


def train_decoder(data: Path, tokenizer: Path | None, out: Path, channels, train_cfg=None, progress: bool = True,
                  views: bool = False) -> dict:
    """Train (or resume) a new decoder for the tokenizer in `tokenizer` (None: the shipped one) on the train split of `data`
    (`gaia-gym train decoder`): its encoder and codes stay the teacher's, so the result is a drop-in
    tokenizer directory for any world model trained on the teacher's tokens, e.g. a narrower decoder
    that decodes frames faster (docs/performance.md measures the trade). `views`: train on every camera
    of a rig dataset (docs/multiview.md)."""
    from gaia_gym.bundle import load_tokenizer
    from gaia_gym.train.loop import TrainConfig, train

    teacher = load_tokenizer(tokenizer)
    train_cfg = train_cfg or TrainConfig(steps=4000, batch_size=64, lr=1e-3, warmup_steps=100, channels_last=True,
                                         log_every=25, image_every=500)
    EpisodeIndex(data, split="train")
    model = decoder_student(teacher, channels)
    return train(model, KIND, model.cfg, frame_batches(data, train_cfg.batch_size, views=views), train_cfg, out,
                 log_images=reconstruction_logger(data, train_cfg.bf16), progress=progress)


__all__ = ["decoder_student", "frame_batches", "reconstruction_logger", "tokenizer_config", "train_decoder",
           "train_tokenizer"]
