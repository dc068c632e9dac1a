"""Image metrics shared by every evaluation: PSNR and SSIM on uint8 frames, code statistics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return rearrange(frames, "b h w c -> b c h w").float() / 255.0


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) between uint8 (B, H, W, 3) frames; identical frames give 100 dB."""
    mse = ((a.float() - b.float()) / 255.0).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03),
    computed per RGB channel over the valid region and averaged."""
    x, y = _as_float(a), _as_float(b)
    C = x.shape[1]
    g = _gaussian().to(x.device)
    w = (g[:, None] * g[None, :]).expand(C, 1, 11, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx**2
    syy = blur(y * y) - my**2
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def code_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage and perplexity of a code histogram `counts` (V,)."""
    total = counts.sum().clamp(min=1)
    p = counts.float() / total
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum())
    return {
        "codebook_usage": float((counts > 0).float().mean()),
        "codes_used": int((counts > 0).sum()),
        "code_perplexity": math.exp(entropy),
        "code_entropy_bits": entropy / math.log(2),
    }


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties get their mean rank); NaN when
    either has no spread or fewer than 2 items."""
    import numpy as np

    from gaia_gym.errors import ConfigError

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"rank_correlation needs two 1-D sequences of one length, got {x.shape} and {y.shape}")

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for u in np.unique(v):  # ties: their mean rank
            m = v == u
            r[m] = r[m].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
