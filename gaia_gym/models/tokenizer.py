"""The image tokenizer: 64x64 RGB frames <-> a small grid of discrete tokens (GAIA-1's first stage).

Convolutional encoder -> discrete bottleneck (FSQ by default, or GAIA-1's L2-normalised VQ) -> convolutional
decoder, trained with L1 + L2 reconstruction losses, the quantizer's own loss, and optionally a
feature-distillation term towards a frozen teacher (GAIA-1/2 distil DINO; no weights ship with
gaia_gym, so the teacher is any `nn.Module` a user supplies and the term is off by default).

Shapes: frames uint8 (B, H, W, 3) -> tokens int64 (B, h, w) with h = H / 2**len(down), and back.
The decoder is kept light on purpose: the RL loop decodes every imagined frame somebody asks to see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gaia_gym.models.quantizers import FSQ, L2VQ
from gaia_gym.errors import ConfigError


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture and loss weights of the tokenizer (stored in every tokenizer model file)."""

    frame_size: int = 64  # input frames are frame_size x frame_size RGB
    enc_channels: tuple[int, ...] = (32, 64, 128)  # one 2x-downsampling stage each: 64 -> 8x8 tokens
    dec_channels: tuple[int, ...] = (128, 64, 32)  # decoder width per resolution, token grid upwards
    res_blocks: int = 1  # residual blocks per encoder stage and on the decoder's two coarsest grids
    quantizer: str = "fsq"  # "fsq" or "vq" (GAIA-1-style L2-normalised codebook)
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # 1000 codes -> 9.97 bits per token
    vq_size: int = 1024  # codebook size for quantizer="vq"
    vq_dim: int = 16  # low code dimension for quantizer="vq" (GAIA-1: low-dim L2-normalised codes)
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    # per-pixel weight 1 + saliency_weight * chroma (max - min of the target's RGB, 0 for greys and
    # whites): small coloured objects (highway-env's vehicles: a few pixels each on grey road) count
    # in the reconstruction loss as much as the road around them; 0 = plain L1/L2
    saliency_weight: float = 0.0
    quant_weight: float = 1.0  # weight of the VQ codebook/commitment loss (FSQ has none)
    distill_weight: float = 0.0  # cosine feature distillation towards a frozen teacher (0 = off)
    distill_dim: int = 0  # teacher feature channels (set when a teacher is used)

    @property
    def downsample(self) -> int:
        return 2 ** len(self.enc_channels)

    @property
    def grid(self) -> int:
        return self.frame_size // self.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.vq_size

    @property
    def bits_per_frame(self) -> float:
        return self.tokens_per_frame * math.log2(self.vocab_size)

    @property
    def compression_ratio(self) -> float:
        return self.frame_size**2 * 3 * 8 / self.bits_per_frame


TOKENIZER_PRESETS = {
    "tiny": dict(enc_channels=(8, 16, 16), dec_channels=(16, 16, 8), fsq_levels=(4, 4)),
    "default": {},
    # the comparison points of the tokens-per-frame study (docs/tokenizer.md)
    "t4x4": dict(enc_channels=(32, 64, 128, 192), dec_channels=(192, 128, 64, 32),
                 fsq_levels=(8, 8, 8, 5, 5, 5)),
    "t8x8": {},
    # highway-env: vehicles are a few coloured pixels on grey road; weight them (see saliency_weight)
    "highway": dict(saliency_weight=30.0),
    "t8x8-vq": dict(quantizer="vq"),
    "t16x16": dict(enc_channels=(32, 64), dec_channels=(64, 32), fsq_levels=(4, 4)),
}


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c // 4) or 1, c)


class ResBlock(nn.Module):
    """Pre-activation residual block; `norm=False` drops GroupNorm (a third of the decoder's CPU time)."""

    def __init__(self, c: int, norm: bool = True) -> None:
        super().__init__()
        n = (lambda: _norm(c)) if norm else nn.Identity
        self.body = nn.Sequential(n(), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  n(), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, D, H/2^n, W/2^n): n strided 4x4 convs, each followed by residual blocks.

    No convolution runs at full resolution: the first layer already halves it (the frames are simple,
    and full-resolution 3x3 convs would cost more than the rest of the encoder together).
    """

    def __init__(self, cfg: TokenizerConfig, out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for c in cfg.enc_channels:
            layers.append(nn.Conv2d(prev, c, 4, stride=2, padding=1))  # 2x down
            layers += [ResBlock(c) for _ in range(cfg.res_blocks)]
            prev = c
        layers += [_norm(prev), nn.SiLU(), nn.Conv2d(prev, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, h, w) -> (B, 3, H, W), built for decoding speed on a CPU.

    Norm-free residual blocks on the two coarsest grids; 2x upsampling by 2x2 transposed convs (a
    quarter of the cost of a 3x3 sub-pixel conv); the last 2x is a sub-pixel conv (3x3 conv to 12
    channels + PixelShuffle), so nothing is ever computed at full resolution.
    """

    def __init__(self, cfg: TokenizerConfig, in_dim: int) -> None:
        super().__init__()
        ch = cfg.dec_channels
        if len(ch) != len(cfg.enc_channels):
            raise ConfigError(f"dec_channels needs {len(cfg.enc_channels)} entries (one per resolution below "
                             f"the frame's), got {ch}")
        layers: list[nn.Module] = [nn.Conv2d(in_dim, ch[0], 3, padding=1)]
        layers += [ResBlock(ch[0], norm=False) for _ in range(cfg.res_blocks)]
        for i in range(1, len(ch)):
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch[i - 1], ch[i], 2, stride=2)]  # 2x up
            if i == 1:
                layers += [ResBlock(ch[i], norm=False) for _ in range(cfg.res_blocks)]
            else:
                layers += [nn.SiLU(), nn.Conv2d(ch[i], ch[i], 3, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(ch[-1], 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class TokenizerOutput:
    """What `Tokenizer.forward` returns."""

    recon: torch.Tensor  # (B, 3, H, W) in [-1, 1] (not clamped)
    tokens: torch.Tensor  # (B, h, w) int64
    quant_loss: torch.Tensor  # scalar
    z_q: torch.Tensor  # (B, D, h, w)


class Tokenizer(nn.Module):
    """Frames <-> tokens. Optional `teacher`: a frozen module mapping (B, 3, H, W) in [0, 1] to
    (B, C, h', w') features, distilled into the quantized latent (GAIA-1's DINO distillation)."""

    CODE_PARTS = ("encoder", "quant")  # what maps frames to codes: two tokenizers with these equal read the same

    def __init__(self, cfg: TokenizerConfig, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.quantizer == "fsq":
            self.quant: nn.Module = FSQ(cfg.fsq_levels)
        elif cfg.quantizer == "vq":
            self.quant = L2VQ(cfg.vq_size, cfg.vq_dim)
        else:
            raise ConfigError(f"unknown quantizer {cfg.quantizer!r} (fsq or vq)")
        self.encoder = Encoder(cfg, self.quant.dim)
        self.decoder = Decoder(cfg, self.quant.dim)
        self.teacher = teacher
        self.distill_head = distillation_head(teacher, cfg, self.quant.dim)

    # ---- conversions ---------------------------------------------------------------------------
    @staticmethod
    def to_input(frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
        return rearrange(frames, "b h w c -> b c h w").float().div(127.5).sub(1.0)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
        return rearrange(((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), "b c h w -> b h w c")

    # ---- public API ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        z = self.encoder(x)
        zq, tokens, qloss = self.quant(z)
        recon = self.decoder(zq.to(z.dtype))
        return TokenizerOutput(recon, tokens, qloss, zq)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) -> tokens (B, h, w) int64."""
        self._check_frames(frames)
        z = self.encoder(self.to_input(frames))
        return self.quant(z)[1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w) -> uint8 frames (B, H, W, 3)."""
        if tokens.dim() != 3 or tokens.shape[1:] != (self.cfg.grid, self.cfg.grid):
            raise ConfigError(f"tokens must be (B, {self.cfg.grid}, {self.cfg.grid}), got {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size:
            raise ConfigError(f"token ids must lie in [0, {self.cfg.vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
        zq = self.quant.embed(tokens)
        p = next(self.decoder.parameters())
        return self.to_uint8(self.decoder(zq.to(p.device)))

    def _check_frames(self, frames: torch.Tensor) -> None:
        s = self.cfg.frame_size
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1:] != (s, s, 3):
            raise ConfigError(f"frames must be uint8 (B, {s}, {s}, 3), got {frames.dtype} {tuple(frames.shape)}")

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch["frames"]: uint8 (B, H, W, 3) (or (B, T, H, W, 3) clips, flattened)."""
        frames = batch["frames"]
        if frames.dim() == 5:
            frames = rearrange(frames, "b t h w c -> (b t) h w c")
        x = self.to_input(frames)
        if next(self.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        out = self(x)
        recon = out.recon.float()
        if self.cfg.saliency_weight > 0:
            w = 1.0 + self.cfg.saliency_weight * (x.amax(1, keepdim=True) - x.amin(1, keepdim=True)).float()
            w = w / w.mean()
            l1 = ((recon - x).abs() * w).mean()
            l2 = ((recon - x).pow(2) * w).mean()
        else:
            l1 = F.l1_loss(recon, x)
            l2 = F.mse_loss(recon, x)
        loss = self.cfg.l1_weight * l1 + self.cfg.l2_weight * l2 + self.cfg.quant_weight * out.quant_loss
        metrics = {"l1": l1.item(), "l2": l2.item(), "quant": float(out.quant_loss.detach()),
                   "psnr": psnr(recon.detach(), x).item()}
        if self.teacher is not None:
            dl = distillation_loss(self.teacher, self.distill_head, x, out.z_q.to(x.dtype))
            loss = loss + self.cfg.distill_weight * dl
            metrics["distill"] = dl.item()
        used = torch.unique(out.tokens).numel()
        metrics["batch_code_usage"] = used / self.cfg.vocab_size
        return loss, metrics


def distillation_head(teacher: nn.Module | None, cfg, latent_dim: int) -> nn.Module | None:
    """Freeze a feature teacher (checking the config asks for distillation) and return the 1x1 conv that
    maps latents (latent_dim channels) to its features, or None when `cfg.distill_dim` is 0."""
    if teacher is not None:
        if cfg.distill_weight <= 0 or cfg.distill_dim <= 0:
            raise ConfigError("a distillation teacher needs distill_weight > 0 and distill_dim > 0")
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
    return nn.Conv2d(latent_dim, cfg.distill_dim, 1) if cfg.distill_dim > 0 else None


def distillation_loss(teacher: nn.Module, head: nn.Module, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between `head(latent)` and a frozen teacher's features of the frames x
    (B, 3, H, W) in [-1, 1] (pooled to the latent grid): GAIA-1/2's feature distillation."""
    with torch.no_grad():
        t = teacher((x + 1) / 2).float()
    t = F.adaptive_avg_pool2d(t, latent.shape[-2:])
    s = head(latent).float()
    return 1 - F.cosine_similarity(s, t, dim=1).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), averaged over the batch."""
    mse = ((a.clamp(-1, 1) - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean()


def build_tokenizer(config: dict | TokenizerConfig, teacher: nn.Module | None = None) -> Tokenizer:
    """Tokenizer from a config dataclass or its stored dict (lists become tuples)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return Tokenizer(config, teacher)


def config_from_dict(stored: dict) -> TokenizerConfig:
    """A TokenizerConfig from its stored JSON form (lists back to tuples)."""
    return TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
