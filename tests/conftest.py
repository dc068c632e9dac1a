"""Fixtures shared by the test files: a tiny untrained model (as a loaded bundle and as a model
directory on disk), a headless display, and synthetic drives in the real dataset format
(`make_dataset`): a red vertical bar moves sideways by 2 px per unit of steering each step, a green
horizontal bar sits at a height that grows with the measured speed, so both read-backs have a signal."""

from __future__ import annotations

import functools
import runpy
import types
from pathlib import Path

import numpy as np
import pytest

from gaia_gym.bundle import save_bundle
from gaia_gym.testing import tiny_bundle
from gaia_gym.data import format as fmt

S = 64  # frame size of the synthetic drives


@pytest.fixture(scope="module")
def bundle():
    """A tiny untrained bundle (4x4 tokens, 16 codes): every code path in milliseconds."""
    return tiny_bundle()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bundle) -> Path:
    """`bundle` saved as a self-contained model directory."""
    return save_bundle(bundle, tmp_path_factory.mktemp("bundle") / "wm")


@pytest.fixture
def headless(monkeypatch):
    """No display: pygame and SDL draw into a dummy driver."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")


def _episode(rng: np.random.Generator, T: int, terminated: bool) -> dict:
    """One synthetic drive of T steps (see the module docstring), every dataset field filled."""
    steer = np.zeros(T, np.float32)
    speed = np.zeros(T, np.float32)
    x, v = float(rng.uniform(24, 40)), float(rng.uniform(10, 30))
    xs = []
    for t in range(T):
        if t % 4 == 0:  # a new held command every 4 steps, kept inside the frame
            opts = [-1.0, -0.6, 0.0, 0.6, 1.0]
            opts = [o for o in opts if (x < 44 or o <= 0) and (x > 20 or o >= 0)]
            s_cmd = float(rng.choice(opts))
            dv = float(rng.choice([-2.0, 0.0, 2.0]))
        steer[t], speed[t] = s_cmd, v
        xs.append(x)
        x += 2.0 * s_cmd
        v = float(np.clip(v + dv, 0.0, 40.0))
    frames = rng.integers(20, 40, size=(T, S, S, 3), dtype=np.uint8)
    for t in range(T):
        xi = int(round(xs[t]))
        frames[t, :, xi - 2 : xi + 2, 0] = 230
        yi = int(round(8 + speed[t]))
        frames[t, yi - 2 : yi + 2, :, 1] = 230
    term = np.zeros(T, bool)
    term[-1] = terminated
    return {
        "frames": frames,
        "last_frame": frames[-1],
        "steering": steer,
        "speed_mps": speed,
        "target_speed_mps": np.clip(speed + 2.0, 0, 100).astype(np.float32),
        "raw_action": np.zeros((T, 3), np.float32),
        "reward": (speed / 20.0 - 0.1).astype(np.float32),
        "terminated": term,
        "truncated": ~term & (np.arange(T) == T - 1),
    }


def make_dataset(root: Path, train=(60,) * 8, val=(80,) * 4, seed: int = 0) -> Path:
    """A dataset directory of synthetic drives with these episode lengths per split (episode i ends in a
    termination when i is even)."""
    rng = np.random.default_rng(seed)
    (root / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": 12.5, "frame_size": S})
    for i, (T, split) in enumerate([(t, "train") for t in train] + [(t, "val") for t in val]):
        arrays = _episode(rng, T, terminated=i % 2 == 0)
        meta = {"source": "synthetic", "seed": i, "split": split, "fps": 12.5}
        m["episodes"].append(fmt.write_episode(root / fmt.EPISODES / fmt.episode_filename(i), arrays, meta))
    fmt.write_manifest(root, m)
    return root


def fit(model, batch: dict, steps: int, lr: float) -> tuple[dict, dict]:
    """`steps` Adam steps of `model.compute_loss` on one batch (its trainable parameters): the metrics of
    the first and of the last step."""
    import torch

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr)
    first = met = None
    for _ in range(steps):
        loss, met = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = met if first is None else first
    return first, met


@functools.cache
def script(rel: str) -> types.SimpleNamespace:
    """A script's globals, as `runpy.run_path` leaves them (run as a file: scripts are not importable)."""
    return types.SimpleNamespace(**runpy.run_path(str(Path(__file__).resolve().parents[1] / rel)))
