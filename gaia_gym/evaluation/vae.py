"""Continuous-tokenizer evaluation (`gaia-gym eval vae`): reconstruction PSNR/SSIM of held-out frames
decoded alone and with their window of past latents, flicker (the error of decoded frame-to-frame
differences against the real ones) both ways, the latents' scale, and encode/decode speed."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from gaia_gym.evaluation.common import select_clips
from gaia_gym.evaluation.tokenizer import measure_speed
from gaia_gym.evaluation.world_model import flicker
from gaia_gym.metrics import psnr_uint8, ssim_uint8
from gaia_gym.models.vae import VAE
from gaia_gym.precision import autocast, precision_name


@torch.no_grad()
def evaluate_vae(model: VAE, data: str | Path, split: str = "val", clip_len: int = 16, max_clips: int | None = 64,
                 bf16: bool = True, progress: bool = True) -> dict:
    """Quality, flicker, latent statistics and speed of `model` on clips of `split` (held-out tracks)."""
    dev = next(model.parameters()).device
    clips = select_clips(data, split, clip_len, max_clips, fields=("frames",))
    rec = {"per_frame": {"psnr": [], "ssim": [], "flicker": []}, "windowed": {"psnr": [], "ssim": [], "flicker": []}}
    stds = []
    for c in tqdm(clips, unit="clip", desc=f"eval vae ({split})", disable=not progress):
        f = c["frames"].to(dev)
        with autocast(dev, bf16):
            z = model.encode(f)
            per = model.decode(z)[None].cpu()
            win = model.decode_video(z[None]).cpu()
        stds.append(float(z.float().std()))
        real = f[None].cpu()
        for name, out in (("per_frame", per), ("windowed", win)):
            rec[name]["psnr"].append(psnr_uint8(out[0], real[0]).mean())
            rec[name]["ssim"].append(ssim_uint8(out[0], real[0]).mean())
            rec[name]["flicker"].append(flicker(out, real).mean())
    mean = lambda xs: float(torch.stack(xs).mean())  # noqa: E731
    cfg = model.cfg
    res = {"split": split, "clips": len(clips), "clip_len": clip_len,
           "latent_shape": list(cfg.latent_shape), "floats_per_frame": cfg.floats_per_frame,
           "decode_window": cfg.decode_window,
           "psnr_db": mean(rec["per_frame"]["psnr"]), "ssim": mean(rec["per_frame"]["ssim"]),
           "psnr_db_windowed": mean(rec["windowed"]["psnr"]), "ssim_windowed": mean(rec["windowed"]["ssim"]),
           "flicker_per_frame": mean(rec["per_frame"]["flicker"]), "flicker_windowed": mean(rec["windowed"]["flicker"]),
           "latent_std_normalised": sum(stds) / max(1, len(stds)), "latent_scale": float(model.latent_std),
           "parameters": sum(p.numel() for p in model.parameters()),
           "precision": precision_name(dev, bf16)}
    res.update(measure_speed(model, batch_size=64, bf16=bf16))
    return res


__all__ = ["evaluate_vae"]
