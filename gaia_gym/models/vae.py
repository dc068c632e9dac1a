"""The continuous video tokenizer (GAIA-2's first stage, scaled down): 64x64 RGB frames <-> a small grid of
float latents with many channels.

Convolutional encoder (the discrete tokenizer's `Encoder`) -> a diagonal Gaussian (mean, log-variance)
-> the decoder. GAIA-2 compresses space hard and makes up for it with channels: at 64x64 the presets
compare 4x4x64 and 8x8x16 (both 1,024 floats per frame) and 2x2x256. Losses: L1 + L2 reconstruction and
a small KL towards N(0, 1) (GAIA-2: L1 0.2, L2 2.0, KL 1e-6; LPIPS and DINO need downloaded weights, so a
user may plug a feature teacher in, as for the discrete tokenizer).

Latent normalisation (GAIA-2 uses a fixed global mean/std): training keeps a running estimate of the
global standard deviation of the posterior means (`latent_std`, a buffer saved with the weights);
`encode` returns ``mean / latent_std``, so the world model sees latents of unit scale, and `decode`
undoes it. Inference encodes the posterior mean (deterministic); training samples.

Temporal decoding: with ``decode_window`` W > 1 the decoder of frame t also sees the latents of the W-1
frames before it (concatenated on channels; GAIA-2 decodes a rolling window of latents jointly), which
damps frame-to-frame flicker. In training the past is replaced by the frame itself with probability
``past_dropout``, so ``decode(latents)`` of a lone frame (past = the frame) works too; ``decode_video``
uses the real past.

Shapes: frames uint8 (B, H, W, 3) -> latents float32 (B, C, h, w), C = ``latent_channels``,
h = w = H / 2**len(enc_channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gaia_gym.errors import ConfigError
from gaia_gym.models.tokenizer import Decoder, Encoder, Tokenizer, distillation_head, distillation_loss, psnr


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and loss weights of the continuous tokenizer (stored in every VAE model file)."""

    frame_size: int = 64
    enc_channels: tuple[int, ...] = (32, 64, 128, 192)  # one 2x-downsampling stage each: 64 -> 4x4
    dec_channels: tuple[int, ...] = (192, 128, 64, 32)
    res_blocks: int = 1
    latent_channels: int = 64
    decode_window: int = 3  # latents the decoder sees per frame: this frame and the W-1 before it
    past_dropout: float = 0.5  # training: the past replaced by the frame itself (so lone frames decode)
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-4  # per latent element (GAIA-2: 1e-6 on a sum over far more elements)
    std_momentum: float = 0.99  # running estimate of the latents' global std
    distill_weight: float = 0.0
    distill_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "enc_channels", tuple(int(c) for c in self.enc_channels))
        object.__setattr__(self, "dec_channels", tuple(int(c) for c in self.dec_channels))
        if self.decode_window < 1:
            raise ConfigError(f"decode_window must be >= 1, got {self.decode_window}")
        if self.frame_size % 2 ** len(self.enc_channels):
            raise ConfigError(f"{len(self.enc_channels)} downsampling stages do not divide frame_size {self.frame_size}")

    @property
    def grid(self) -> int:
        return self.frame_size // 2 ** len(self.enc_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.grid, self.grid)

    @property
    def floats_per_frame(self) -> int:
        return self.latent_channels * self.grid**2


VAE_PRESETS = {
    "tiny": dict(enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8), latent_channels=4, decode_window=2),
    "default": {},  # 4x4x64
    "v4x4x64": {},
    "v8x8x16": dict(enc_channels=(32, 64, 128), dec_channels=(128, 64, 32), latent_channels=16),
    "v2x2x256": dict(enc_channels=(32, 64, 128, 192, 256), dec_channels=(256, 192, 128, 64, 32), latent_channels=256),
}


class VAE(nn.Module):
    """Frames <-> continuous latents (see the module docstring)."""

    def __init__(self, cfg: VAEConfig, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.latent_channels
        self.encoder = Encoder(cfg, 2 * C)
        self.decoder = Decoder(cfg, C * cfg.decode_window)
        self.register_buffer("latent_std", torch.ones(()))
        self.teacher = teacher
        self.distill_head = distillation_head(teacher, cfg, C)

    to_input = staticmethod(Tokenizer.to_input)
    to_uint8 = staticmethod(Tokenizer.to_uint8)

    # ---- pieces ----------------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (mean, logvar), each (B, C, h, w), unnormalised."""
        mean, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def _window(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, C, h, w) -> decoder input of the last frame (B, W*C, h, w): frames T-W .. T-1, the
        oldest first, with missing ones (T < W) filled by the oldest given."""
        W = self.cfg.decode_window
        if z.shape[1] < W:
            z = torch.cat([z[:, :1].expand(-1, W - z.shape[1], -1, -1, -1), z], 1)
        return rearrange(z[:, -W:], "b w c h v -> b (w c) h v")

    def decode_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents (B, T, C, h, w) -> frame T-1 as floats (B, 3, H, W) in [-1, 1] (unclamped)."""
        p = next(self.decoder.parameters())
        return self.decoder(self._window(z).to(device=p.device))

    # ---- public API ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) -> normalised latents (B, C, h, w) float32 (the posterior mean)."""
        s = self.cfg.frame_size
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1:] != (s, s, 3):
            raise ConfigError(f"frames must be uint8 (B, {s}, {s}, 3), got {frames.dtype} {tuple(frames.shape)}")
        return (self.posterior(self.to_input(frames))[0] / self.latent_std).float()

    def _check_latents(self, z: torch.Tensor, lead: int) -> None:
        if z.dim() != lead + 3 or tuple(z.shape[lead:]) != self.cfg.latent_shape:
            raise ConfigError(f"latents must be ({'B, T' if lead == 2 else 'B'}, "
                              f"{', '.join(map(str, self.cfg.latent_shape))}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ConfigError("latents hold NaN or inf")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> uint8 frames (B, H, W, 3), each frame decoded alone."""
        self._check_latents(latents, 1)
        return self.to_uint8(self.decode_normalised(latents[:, None].float() * self.latent_std))

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, T, C, h, w) -> uint8 frames (B, T, H, W, 3), each frame decoded with the
        `decode_window` - 1 latents before it (a rolling window: temporally consistent video)."""
        self._check_latents(latents, 2)
        z = latents.float() * self.latent_std
        W, T = self.cfg.decode_window, z.shape[1]
        z = torch.cat([z[:, :1].expand(-1, W - 1, -1, -1, -1), z], 1)  # the first frame's past: itself
        windows = z.unfold(1, W, 1)  # (B, T, C, h, w, W)
        windows = rearrange(windows, "b t c h v w -> (b t) w c h v")
        out = self.to_uint8(self.decode_normalised(windows))
        return rearrange(out, "(b t) h v c -> b t h v c", t=T)

    # ---- training --------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch["frames"]: uint8 clips (B, T, H, W, 3) (T >= 1); the last frame of each clip is decoded
        from the latents of its window (sampled from the posterior)."""
        frames = batch["frames"]
        if frames.dim() == 4:
            frames = frames[:, None]
        B, T = frames.shape[:2]
        W = self.cfg.decode_window
        frames = frames[:, -W:]
        T = frames.shape[1]
        x = self.to_input(rearrange(frames, "b t h w c -> (b t) h w c"))
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        z = rearrange(z, "(b t) c h w -> b t c h w", t=T)
        if T > 1 and self.training and self.cfg.past_dropout > 0:
            drop = torch.rand(B, device=z.device) < self.cfg.past_dropout
            z = torch.where(drop[:, None, None, None, None], z[:, -1:].expand_as(z), z)
        target = rearrange(x, "(b t) c h w -> b t c h w", t=T)[:, -1]
        recon = self.decoder(self._window(z).to(x.dtype)).float()
        l1, l2 = F.l1_loss(recon, target), F.mse_loss(recon, target)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = self.cfg.l1_weight * l1 + self.cfg.l2_weight * l2 + self.cfg.kl_weight * kl
        if self.training:  # the global latent scale (GAIA-2's fixed std), as a running estimate
            with torch.no_grad():
                std = mean.detach().float().std()
                m = self.cfg.std_momentum
                self.latent_std.mul_(m).add_((1 - m) * std)
        metrics = {"l1": l1.item(), "l2": l2.item(), "kl": kl.item(), "psnr": psnr(recon.detach(), target).item(),
                   "latent_std": float(self.latent_std)}
        if self.teacher is not None:
            dl = distillation_loss(self.teacher, self.distill_head, target, z[:, -1].to(target.dtype))
            loss = loss + self.cfg.distill_weight * dl
            metrics["distill"] = dl.item()
        return loss, metrics


def vae_config_from_dict(stored: dict) -> VAEConfig:
    return VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


def build_vae(config: dict | VAEConfig, teacher: nn.Module | None = None) -> VAE:
    """VAE from a config dataclass or its stored dict."""
    if isinstance(config, dict):
        config = vae_config_from_dict(config)
    return VAE(config, teacher)


__all__ = ["VAE", "VAEConfig", "VAE_PRESETS", "build_vae", "vae_config_from_dict"]
