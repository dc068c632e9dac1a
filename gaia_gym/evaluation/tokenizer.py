"""Tokenizer evaluation (`gaia-gym eval tokenizer`): reconstruction PSNR/SSIM, code usage, compression and
encode/decode speed on the validation split (held-out tracks), or on all of a directory nobody trained on
(`--split all`, e.g. an imported drive); reconstruction contact sheets; what a token count costs the world
model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from gaia_gym.data.loader import EpisodeIndex, iter_frames
from gaia_gym.metrics import code_stats, psnr_uint8, ssim_uint8
from gaia_gym.models.tokenizer import Tokenizer
from gaia_gym.precision import autocast, precision_name
from gaia_gym.errors import ConfigError


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
            raise ConfigError(f"dataset frames are {f.shape[1]}x{f.shape[2]}, the tokenizer expects "
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

    f = torch.from_numpy(sample_frames(data, split, n)).to(next(model.parameters()).device)
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


def sample_frames(data: Path, split: str, n: int) -> np.ndarray:
    idx = EpisodeIndex(data, split=split)
    out = []
    for frames in iter_frames(data, split=split, batch_size=max(1, idx.total_steps // n)):
        out.append(frames[len(frames) // 2])
        if len(out) == n:
            break
    return np.stack(out)


__all__ = ["estimate_world_model_cost", "evaluate_tokenizer", "measure_speed", "recon_grid", "sample_frames"]
