"""Training the continuous tokenizer (`gaia-gym train vae`): GAIA-2's first stage.

Clips of ``decode_window`` frames stream from the dataset's train split (each clip's last frame is decoded
from its window of latents), through the shared training loop (bf16 autocast where fast, channels_last,
TensorBoard, checkpoints, resume, DDP). Validation reconstructions (per-frame and windowed) go to
TensorBoard as it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from gaia_gym.data.loader import ClipDataset, EpisodeIndex
from gaia_gym.errors import ConfigError
from gaia_gym.models.vae import VAE, VAE_PRESETS, VAEConfig
from gaia_gym.train.tokenizer import reconstruction_logger

KIND = "vae"


def vae_config(preset: str = "default", **overrides) -> VAEConfig:
    if preset not in VAE_PRESETS:
        raise ConfigError(f"unknown VAE preset {preset!r}; choose from {', '.join(VAE_PRESETS)}")
    return VAEConfig(**{**VAE_PRESETS[preset], **overrides})


def clip_batches(data: Path, batch_size: int, clip_len: int, split: str = "train"):
    """Factory for the training loop: rank-aware endless stream of {"frames": uint8 (B, clip_len, H, W, 3)}."""

    def make(rank: int, world_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        ds = ClipDataset(data, split=split, clip_len=clip_len, fields=("frames",), buffer_episodes=16,
                         seed=seed, shuffle=True, rank=rank, world_size=world_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=1, persistent_workers=True,
                                             prefetch_factor=4)
        while True:
            for b in loader:
                yield {"frames": b["frames"]}

    return make


def train_vae(data: Path, out: Path, preset: str = "default", train_cfg=None, teacher: torch.nn.Module | None = None,
              progress: bool = True, **model_overrides) -> dict:
    """Train (or resume training) a VAE on the train split of `data` into model directory `out`."""
    from gaia_gym.train.loop import TrainConfig, train

    cfg = vae_config(preset, **model_overrides)
    train_cfg = train_cfg or TrainConfig(steps=8000, batch_size=32, lr=1e-3, warmup_steps=200, channels_last=True,
                                         log_every=25, image_every=500)
    EpisodeIndex(data, split="train")  # a clear error now, not in a worker process later
    model = VAE(cfg, teacher=teacher)
    return train(model, KIND, cfg, clip_batches(data, train_cfg.batch_size, cfg.decode_window), train_cfg, out,
                 log_images=reconstruction_logger(data, train_cfg.bf16), progress=progress)


__all__ = ["KIND", "clip_batches", "train_vae", "vae_config"]
