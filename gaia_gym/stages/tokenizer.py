"""The tokenizer stage: `gaia-gym train tokenizer` and `gaia-gym eval tokenizer`.

Training streams frames from the dataset's train split (whole clips, flattened to frames, so a batch
mixes many tracks), with the shared training loop (bf16 autocast, channels_last, TensorBoard,
checkpoints, resume, DDP). Evaluation runs on the validation split (held-out tracks) or on all of a
directory nobody trained on (`--split all`, e.g. an imported drive).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from gaia_gym.checkpoint import load_model
from gaia_gym.data.loader import ClipDataset, EpisodeIndex, iter_frames
from gaia_gym.metrics import code_stats, psnr_uint8, ssim_uint8
from gaia_gym.models.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig, build_tokenizer
from gaia_gym.precision import autocast, precision_name  # noqa: F401 (autocast re-exported)

KIND = "tokenizer"
DEFAULT_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


def tokenizer_config(preset: str = "default", **overrides) -> TokenizerConfig:
    if preset not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset {preset!r}; choose from {', '.join(TOKENIZER_PRESETS)}")
    return TokenizerConfig(**{**TOKENIZER_PRESETS[preset], **overrides})


def frame_batches(data: Path, batch_size: int, clip_len: int = 4, split: str = "train"):
    """Factory for the training loop: rank/world-size aware endless stream of frame batches.

    Short clips (4 frames) from a buffer of episodes keep the stream diverse while reading each shard
    sequentially; the batch is `batch_size` frames.
    """

    def make(rank: int, world_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        ds = ClipDataset(data, split=split, clip_len=clip_len, fields=("frames",), buffer_episodes=16,
                         seed=seed, shuffle=True, rank=rank, world_size=world_size)
        per = max(1, batch_size // clip_len)
        loader = torch.utils.data.DataLoader(ds, batch_size=per, num_workers=1, persistent_workers=True,
                                             prefetch_factor=4)
        while True:
            for b in loader:
                yield {"frames": b["frames"].flatten(0, 1)}

    return make


def load_tokenizer(path: Path | str | None = None, device: str | torch.device = "cpu") -> Tokenizer:
    """A trained tokenizer from its model directory (default: the shipped one)."""
    path = Path(path) if path is not None else DEFAULT_TOKENIZER
    model, _cfg, _meta = load_model(path, KIND, build_tokenizer, device=device)
    return model.eval()


@torch.no_grad()
def evaluate_tokenizer(
    model: Tokenizer,
    data: Path,
    split: str = "val",
    batch_size: int = 64,
    max_frames: int | None = None,
    bf16: bool = True,
    progress: bool = True,
) -> dict:
    """Reconstruction quality, code statistics, compression and speed on `split` of `data`."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    cfg = model.cfg
    idx = EpisodeIndex(data, split=split)
    total = idx.total_steps if max_frames is None else min(max_frames, idx.total_steps)
    counts = torch.zeros(cfg.vocab_size, dtype=torch.long)
    psnrs, ssims = [], []
    bar = tqdm(total=total, unit="frame", desc=f"eval tokenizer ({split})", disable=not progress)
    for frames in iter_frames(data, split=split, batch_size=batch_size, max_frames=max_frames):
        f = torch.from_numpy(frames).to(device)
        if f.shape[1:3] != (cfg.frame_size, cfg.frame_size):
            raise ValueError(f"dataset frames are {f.shape[1]}x{f.shape[2]}, the tokenizer expects "
                             f"{cfg.frame_size}x{cfg.frame_size}")
        with autocast(device, bf16):
            tokens = model.encode(f)
            recon = model.decode(tokens)
        counts += torch.bincount(tokens.flatten().cpu(), minlength=cfg.vocab_size)
        psnrs.append(psnr_uint8(recon, f).cpu())
        ssims.append(ssim_uint8(recon, f).cpu())
        bar.update(len(f))
    bar.close()
    p, s = torch.cat(psnrs), torch.cat(ssims)
    speed = measure_speed(model, batch_size=64, bf16=bf16)
    return {
        "split": split,
        "frames": int(len(p)),
        "psnr_db": float(p.mean()),
        "psnr_db_p10": float(p.quantile(0.1)),
        "ssim": float(s.mean()),
        **code_stats(counts),
        "tokens_per_frame": cfg.tokens_per_frame,
        "token_grid": [cfg.grid, cfg.grid],
        "vocab_size": cfg.vocab_size,
        "bits_per_frame": cfg.bits_per_frame,
        "compression_ratio": cfg.compression_ratio,
        **speed,
        "precision": precision_name(device, bf16),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }


@torch.no_grad()
def measure_speed(model: Tokenizer, batch_size: int = 64, repeats: int = 10, bf16: bool = True) -> dict:
    """Encode and decode frames/s at `batch_size` (median of `repeats` timed batches)."""
    device = next(model.parameters()).device
    s = model.cfg.frame_size
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch_size, s, s, 3), dtype=torch.uint8, generator=g).to(device)
    with autocast(device, bf16):
        tokens = model.encode(frames)
        times = {"encode": [], "decode": []}
        for _ in range(repeats + 2):
            for name, fn, arg in (("encode", model.encode, frames), ("decode", model.decode, tokens)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn(arg)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v[2:])) for k, v in times.items()}
    return {"encode_frames_per_s": batch_size / med["encode"], "decode_frames_per_s": batch_size / med["decode"],
            "speed_batch_size": batch_size}


def recon_grid(model: Tokenizer, data: Path, path: Path, split: str = "val", n: int = 8, bf16: bool = True) -> Path:
    """PNG: a row of real validation frames over their reconstructions (2x upscaled)."""
    import cv2

    f = torch.from_numpy(_sample_frames(data, split, n)).to(next(model.parameters()).device)
    with torch.no_grad(), autocast(f.device, bf16):
        r = model.decode(model.encode(f)).cpu().numpy()
    top, bottom = np.concatenate(list(f.cpu().numpy()), 1), np.concatenate(list(r), 1)
    img = np.concatenate([top, np.full((2, top.shape[1], 3), 255, np.uint8), bottom], 0)
    img = img.repeat(3, 0).repeat(3, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[:, :, ::-1])
    return path


def estimate_world_model_cost(tokens_per_frame: int, action_tokens: int = 2, context_frames: int = 8,
                              d_model: int = 256, layers: int = 4) -> dict:
    """What a frame's token count costs the world model (per imagined frame, batch 1).

    Transformer FLOPs per token ~ 2 * 12 * layers * d^2 (weights) + 2 * 2 * layers * ctx * d (attention
    over a context of ctx tokens). Token-by-token decoding runs one forward per token; decoding a
    frame's tokens in parallel (one pass per frame) runs one per frame.
    """
    per_step = tokens_per_frame + action_tokens
    ctx = context_frames * per_step
    flops_token = 2 * 12 * layers * d_model**2 + 4 * layers * ctx * d_model
    return {
        "tokens_per_step": per_step,
        "context_tokens": ctx,
        "gflop_per_frame": flops_token * per_step / 1e9,
        "sequential_passes_per_frame_token_by_token": per_step,
        "attention_cost_vs_weights": 4 * ctx * d_model / (2 * 12 * d_model**2),
        "kv_cache_mb_per_env": 2 * layers * ctx * d_model * 2 / 2**20,
    }


def train_tokenizer(
    data: Path,
    out: Path,
    preset: str = "default",
    train_cfg=None,
    teacher: torch.nn.Module | None = None,
    progress: bool = True,
    **model_overrides,
) -> dict:
    """Train (or resume training) a tokenizer on the train split of `data` into model directory `out`."""
    from gaia_gym.train.loop import TrainConfig, train

    cfg = tokenizer_config(preset, **model_overrides)
    train_cfg = train_cfg or TrainConfig(steps=6000, batch_size=64, lr=1e-3, warmup_steps=200,
                                         channels_last=True, checkpoint_minutes=5, log_every=25, image_every=500)
    EpisodeIndex(data, split="train")  # a clear error now, not in a worker process later
    model = Tokenizer(cfg, teacher=teacher)
    val_frames = _sample_frames(data, "val" if _has_split(data, "val") else "train", 8)

    def log_images(m, writer, step):
        f = torch.from_numpy(val_frames).to(next(m.parameters()).device)
        with autocast(f.device, train_cfg.bf16):
            r = m.decode(m.encode(f))
        grid = torch.cat([torch.cat(list(f), 1), torch.cat(list(r), 1)], 0)  # (2H, 8W, 3)
        writer.add_image("val/reconstruction", grid.cpu().numpy(), step, dataformats="HWC")
        writer.add_scalar("val/psnr_db", psnr_uint8(r, f).mean().item(), step)

    return train(model, KIND, cfg, frame_batches(data, train_cfg.batch_size), train_cfg, out,
                 log_images=log_images, progress=progress)


def _has_split(data: Path, split: str) -> bool:
    try:
        EpisodeIndex(data, split=split)
        return True
    except Exception:
        return False


def _sample_frames(data: Path, split: str, n: int) -> np.ndarray:
    idx = EpisodeIndex(data, split=split)
    out = []
    for frames in iter_frames(data, split=split, batch_size=max(1, idx.total_steps // n)):
        out.append(frames[len(frames) // 2])
        if len(out) == n:
            break
    return np.stack(out)
