"""Reading the ego's motion back from CarRacing frames, without any learned model: the track's rotation.

CarRacing's camera follows the car and turns with it: the car sits at a fixed point near the bottom of
the frame, pointing up, and when it turns the whole world rotates about it (and slides down the frame as
the car moves forward). Between two consecutive frames we search the rigid motion of the world about the
car, rotation theta and shift (dx, dy), that best maps one frame's "grassness" image (green minus the other
channels: the grey road is 0, grass and its lighter squares positive) onto the next, by brute force over
a grid, and sum theta over a sequence. Its sign is the direction the car turned; the convention
(`TURN_SIGN`) and the accuracy of this instrument on real frames with known steering are measured by
`calibrate` (see results/world_model.json, ``readback_real_accuracy``).

Used by the world-model evaluation to check that imagined futures turn the way they were told to.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# where the car sits in the 64x64 dataset frame (fraction of width, height), the pivot of the rotation
CAR_XY = (0.5, 0.85)
THETAS_DEG = np.arange(-12.0, 12.01, 1.0)
SHIFTS_DX = np.arange(-3.0, 3.01, 1.5)  # pixels
SHIFTS_DY = np.arange(-2.0, 10.01, 2.0)  # pixels (forward motion moves the world down the frame)
# a car turning right (clockwise seen from above) sees the world turn counter-clockwise on screen, a negative
# `step_rotation_deg`; confirmed on real frames with logged steering (`calibrate`)
TURN_SIGN = -1.0


def grassness(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., H, W): G - (R + B) / 2, scaled to ~[0, 1] (road ~0)."""
    f = frames.float()
    return ((f[..., 1] - (f[..., 0] + f[..., 2]) / 2) / 100.0).clamp(-1, 2)


def _grids(h: int, w: int, device, yaw_deg: float = 0.0) -> tuple[torch.Tensor, list[tuple[float, float, float]]]:
    """Sampling grids (K, H, W, 2) for every candidate motion, in grid_sample's [-1, 1] coordinates. A rig
    camera yawed by `yaw_deg` (gaia_gym.sims.rig) sees the forward motion's shift rotated by its yaw; the
    rotation about the car is the same in every view."""
    cx, cy = CAR_XY[0] * (w - 1), CAR_XY[1] * (h - 1)
    yc, ys_ = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grids, params = [], []
    for th in THETAS_DEG:
        t = math.radians(th)
        c, s = math.cos(t), math.sin(t)
        for dx in SHIFTS_DX:
            for dy in SHIFTS_DY:
                # pixel p of the next frame came from R(-theta)(p - car - d) + car in the previous frame
                rx, ry = yc * dx - ys_ * dy, ys_ * dx + yc * dy  # the shift as the camera sees it
                px, py = xs - cx - rx, ys - cy - ry
                sx, sy = c * px + s * py + cx, -s * px + c * py + cy
                grids.append(torch.stack([sx / (w - 1) * 2 - 1, sy / (h - 1) * 2 - 1], -1))
                params.append((float(th), float(dx), float(dy)))
    return torch.stack(grids).to(device), params


_GRID_CACHE: dict = {}


@torch.no_grad()
def step_rotation_deg(prev: torch.Tensor, nxt: torch.Tensor, yaw_deg: float = 0.0) -> torch.Tensor:
    """Rotation (degrees, clockwise on screen positive) of the world between frames prev -> nxt:
    uint8 (N, H, W, 3) each -> (N,). `yaw_deg`: the rig camera's yaw (0 = the front camera)."""
    n, h, w = prev.shape[:3]
    key = (h, w, str(prev.device), float(yaw_deg))
    if key not in _GRID_CACHE:
        grids, params = _grids(h, w, prev.device, yaw_deg)
        valid = F.grid_sample(torch.ones(len(grids), 1, h, w, device=prev.device), grids, mode="nearest",
                              padding_mode="zeros", align_corners=True)[:, 0]
        _GRID_CACHE[key] = (grids, params, valid)
    grids, params, valid = _GRID_CACHE[key]
    thetas = torch.tensor([p[0] for p in params], device=prev.device)
    norm = valid.sum((1, 2)).clamp(min=1)
    a, b = grassness(prev), grassness(nxt)
    out = []
    K = len(grids)
    for i in range(n):
        warped = F.grid_sample(a[i][None, None].expand(K, 1, h, w), grids, mode="bilinear", padding_mode="zeros",
                               align_corners=True)[:, 0]
        err = ((warped - b[i]).abs() * valid).sum((1, 2)) / norm
        out.append(thetas[err.argmin()])
    return torch.stack(out)


@torch.no_grad()
def turn_deg(frames: torch.Tensor, yaw_deg: float = 0.0) -> torch.Tensor:
    """Total turn of the car over a sequence, degrees, positive = right: uint8 (N, T, H, W, 3) -> (N,), seen
    by a camera yawed `yaw_deg` about the car (a rig camera; the front camera: 0)."""
    N, T = frames.shape[:2]
    if T < 2:
        return torch.zeros(N)
    rot = step_rotation_deg(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), yaw_deg).view(N, T - 1)
    return TURN_SIGN * rot.sum(1)


def calibrate(data, split: str = "val", windows: int = 200, steps: int = 8, min_steer: float = 0.3,
              min_speed: float = 10.0, seed: int = 0) -> dict:
    """Accuracy of `turn_deg` on real frames: windows of `steps` steps where the logged steering held one
    sign (|mean| >= min_steer) and the car moved (>= min_speed m/s); the fraction whose measured turn has
    the steering's sign."""
    from gaia_gym.data.format import load_episode
    from gaia_gym.data.loader import EpisodeIndex

    idx = EpisodeIndex(data, split=split)
    rng = np.random.default_rng(seed)
    seqs, signs = [], []
    paths = list(idx.paths)
    rng.shuffle(paths)
    for p in paths:
        ep = load_episode(p, fields=["frames", "steering", "speed_mps"])
        st, sp = ep["steering"], ep["speed_mps"]
        cands = [s for s in range(0, len(st) - steps - 1)
                 if abs(st[s : s + steps].mean()) >= min_steer and np.ptp(np.sign(st[s : s + steps])) == 0
                 and sp[s] >= min_speed]
        if cands:
            s = int(rng.choice(cands))
            seqs.append(ep["frames"][s : s + steps + 1])
            signs.append(float(np.sign(st[s : s + steps].mean())))
        if len(seqs) >= windows:
            break
    turns = turn_deg(torch.from_numpy(np.stack(seqs)))
    signs_t = torch.tensor(signs)
    correct = (torch.sign(turns) == signs_t).float()
    return {"readback_real_windows": len(seqs), "readback_real_accuracy": float(correct.mean()),
            "readback_real_mean_turn_deg_right": float(turns[signs_t > 0].mean()) if (signs_t > 0).any() else None,
            "readback_real_mean_turn_deg_left": float(turns[signs_t < 0].mean()) if (signs_t < 0).any() else None,
            "readback_steps": steps, "readback_min_steer": min_steer, "readback_min_speed_mps": min_speed}
