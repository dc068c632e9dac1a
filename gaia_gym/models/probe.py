"""An inverse-dynamics probe trained on real frames only: which way did the car turn, did it speed up?

The world model's action adherence is measured by decoding imagined frames and asking a model that never
saw the world model what happened between two of them. `Probe` is a small CNN over a pair of frames
(frame t, frame t+k), stacked into 6 channels, with two binary heads:

- **steering**: the mean steering command over the k steps t..t+k-1 is < -``steer_threshold`` (left,
  label 0) or > +``steer_threshold`` (right, label 1); pairs in between are ignored in training and
  evaluation;
- **speed**: the measured speed at t+k is higher than at t by more than ``speed_threshold_mps`` (faster,
  label 1) or lower by more than that (slower, label 0); pairs in between are ignored.

A single pair shows the average velocity over the interval, not its change; speed changes are still
readable through cues such as the car's displacement and skid marks, but less directly than steering.
``ProbeConfig(frames=4)`` adds frames t+1 and t+k-1, so the velocity at both ends of the interval is
visible (12 channels; `predict` then needs those frames too).

Training pairs (`gaia_gym.evaluation.probe.ProbePairs`) come from the train split (``ClipDataset`` clips of k+1 frames, k in ``ks``), validation
pairs from the val split (held-out tracks). With ``flip_augment`` a pair is mirrored left-right at random,
and its steering label swapped (CarRacing's view is centred on the car, so a mirrored drive is a valid
drive turning the other way): both steering classes get the same number of examples.

The probe later reads *decoded* frames. `train_probe(tokenizer=...)` therefore can also train on the
tokenizer's reconstructions of the same real pairs (half of each batch by default; still real drives,
never the world model's output) and reports the val accuracy on reconstructions too.

Train with `gaia_gym.train.probe.train_probe` (the shared training loop; the model file's kind is
``"probe"``), score with `gaia_gym.evaluation.probe.evaluate_probe`, load with `load_probe`, read imagined
frames with `Probe.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gaia_gym.checkpoint import load_model
from gaia_gym.errors import ConfigError

KIND = "probe"
PROBE_FIELDS = ("frames", "steering", "speed_mps")
IGNORE = -1.0  # label of a head that does not apply to a pair


@dataclass(frozen=True)
class ProbeConfig:
    """Architecture and labelling of the probe (stored in every probe model file)."""

    frame_size: int = 64
    frames: int = 2  # 2: (t, t+k); 4: (t, t+1, t+k-1, t+k) - velocity visible at both ends
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one stride-2 conv each: 64 -> 4x4
    hidden: int = 128
    ks: tuple[int, ...] = (4, 8)  # frame gaps trained on
    steer_threshold: float = 0.3  # |mean steering| above this is a turn
    speed_threshold_mps: float = 3.0  # |speed change| above this is a speed-up / slow-down
    flip_augment: bool = True  # mirror pairs at random (training only), swapping left/right

    def __post_init__(self):
        if self.frames not in (2, 4):
            raise ConfigError(f"ProbeConfig.frames must be 2 or 4, got {self.frames}")
        if not self.ks or min(self.ks) < (2 if self.frames == 4 else 1):
            raise ConfigError(f"ProbeConfig.ks must be non-empty gaps >= {2 if self.frames == 4 else 1}, got {self.ks}")

    def offsets(self, k: int) -> list[int]:
        """Frame indices (within a clip of k+1 frames) the probe reads for gap k."""
        return [0, k] if self.frames == 2 else [0, 1, k - 1, k]


def pair_labels(steering: np.ndarray, speed_mps: np.ndarray, k: int, cfg: ProbeConfig) -> tuple[float, float]:
    """(steer label, faster label) of the pair (0, k) of a clip: 1 / 0 / IGNORE."""
    s = float(np.mean(steering[:k]))
    dv = float(speed_mps[k] - speed_mps[0])
    steer = 1.0 if s > cfg.steer_threshold else 0.0 if s < -cfg.steer_threshold else IGNORE
    faster = 1.0 if dv > cfg.speed_threshold_mps else 0.0 if dv < -cfg.speed_threshold_mps else IGNORE
    return steer, faster


class Probe(nn.Module):
    """Frames (B, n, H, W, 3) uint8 -> logits (B, 2): [steer right, faster]."""

    def __init__(self, cfg: ProbeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        prev = 3 * cfg.frames
        for i, c in enumerate(cfg.channels):
            layers += [nn.Conv2d(prev, c, 4 if i == 0 else 3, stride=2, padding=1), nn.GroupNorm(min(8, c // 4) or 1, c),
                       nn.SiLU()]
            prev = c
        self.conv = nn.Sequential(*layers)
        side = cfg.frame_size // 2 ** len(cfg.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, 2))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, n, H, W, C = frames.shape
        if n != self.cfg.frames or H != self.cfg.frame_size or W != self.cfg.frame_size:
            raise ConfigError(f"probe expects (B, {self.cfg.frames}, {self.cfg.frame_size}, {self.cfg.frame_size}, 3) "
                             f"frames, got {tuple(frames.shape)}")
        x = frames.permute(0, 1, 4, 2, 3).reshape(B, n * C, H, W).float().div(127.5).sub(1.0)
        return self.head(self.conv(x)).float()

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(batch["frames"])
        losses, metrics = [], {}
        for j, name in enumerate(("steer", "faster")):
            y = batch[name].float()
            valid = y != IGNORE
            n = valid.sum()
            lj = F.binary_cross_entropy_with_logits(logits[:, j], y.clamp(min=0), reduction="none")
            losses.append((lj * valid).sum() / n.clamp(min=1))
            if int(n):
                metrics[f"{name}_acc"] = float(((logits[:, j] > 0).float() == y)[valid].float().mean())
        return losses[0] + losses[1], metrics

    @torch.no_grad()
    def predict(self, frames_a, frames_b, frames_a_next=None, frames_b_prev=None) -> dict[str, torch.Tensor]:
        """P(turned right) and P(got faster) between uint8 frames (B, H, W, 3) a (time t) and b (t+k).

        With ``cfg.frames == 4`` also pass the frames at t+1 (``frames_a_next``) and t+k-1 (``frames_b_prev``).
        Returns CPU float tensors (B,): ``steer_right_prob``, ``faster_prob``.
        """
        dev = next(self.parameters()).device
        seq = [frames_a, frames_b] if self.cfg.frames == 2 else [frames_a, frames_a_next, frames_b_prev, frames_b]
        if any(f is None for f in seq):
            raise ConfigError("this probe reads 4 frames: pass frames_a_next and frames_b_prev too")
        x = torch.stack([torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f).to(dev)
                         for f in seq], dim=1)
        p = torch.sigmoid(self(x)).cpu()
        return {"steer_right_prob": p[:, 0], "faster_prob": p[:, 1]}


def build_probe(config: dict | ProbeConfig) -> Probe:
    if isinstance(config, dict):
        config = ProbeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return Probe(config)


def load_probe(path: str | Path, device: str | torch.device = "cpu") -> Probe:
    """A trained probe from its model directory (kind ``"probe"``), in eval mode."""
    model, _cfg, _meta = load_model(path, KIND, build_probe, device=device)
    return model.eval()


@torch.no_grad()
def with_reconstructions(tokenizer: nn.Module, frames: torch.Tensor, fraction: float) -> torch.Tensor:
    """frames (B, n, H, W, 3) with the first round(fraction * B) pairs replaced by reconstructions (the
    batch is already shuffled)."""
    m = int(round(fraction * len(frames)))
    if m == 0:
        return frames
    dev = next(tokenizer.parameters()).device
    x = frames[:m].flatten(0, 1).to(dev)
    recon = tokenizer.decode(tokenizer.encode(x)).cpu().view(m, *frames.shape[1:])
    return torch.cat([recon, frames[m:]])


__all__ = ["with_reconstructions", "IGNORE", "KIND", "PROBE_FIELDS", "Probe", "ProbeConfig", "build_probe", "load_probe", "pair_labels"]
