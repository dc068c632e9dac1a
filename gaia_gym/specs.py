"""Shared specs that both the models and the simulators speak: the agent-box fields and their scales, and
a camera's pose vector. Layer 0: it imports nothing of gaia_gym, so `models/` needs nothing of `sims/`."""

from __future__ import annotations

import math

import numpy as np

AGENT_FIELDS = ("presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "length", "width")
AGENT_SCALE = (1.0, 20.0, 20.0, 10.0, 10.0, 1.0, 1.0, 5.0, 2.0)  # divisors: metres / 20, m/s / 10, ...
DEFAULT_SIZE_M = (5.0, 2.0)  # highway-env's Vehicle.LENGTH x WIDTH (every vehicle of these scenarios)


def normalise_boxes(boxes):
    """Raw boxes (..., F) in `AGENT_FIELDS` order scaled by `AGENT_SCALE` for the network: a numpy array
    in, float32 numpy out; a torch tensor in, a tensor out on its device (the engine's hot path)."""
    try:
        import torch

        if isinstance(boxes, torch.Tensor):
            return boxes.float() / torch.tensor(AGENT_SCALE, dtype=torch.float32, device=boxes.device)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return (np.asarray(boxes, dtype=np.float32) / np.asarray(AGENT_SCALE, dtype=np.float32)).astype(np.float32)


def camera_pose(yaw_deg: float, anchor_x: float, anchor_y: float) -> np.ndarray:
    """(4,) float32 [cos yaw, sin yaw, anchor_x, anchor_y]: what a world model's camera embedding reads."""
    y = math.radians(yaw_deg)
    return np.array([math.cos(y), math.sin(y), anchor_x, anchor_y], np.float32)


__all__ = ["AGENT_FIELDS", "AGENT_SCALE", "DEFAULT_SIZE_M", "camera_pose", "normalise_boxes"]
