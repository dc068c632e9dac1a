"""Fixtures shared by the test files: a tiny untrained model (as a loaded bundle and as a model
directory on disk), a headless display, and a small synthetic dataset in the real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gaia_gym.bundle import save_bundle, tiny_bundle
from gaia_gym.data import format as fmt

FRAME = 64


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


def synthetic_episode(rng: np.random.Generator, T: int, terminated: bool, size: int = FRAME) -> dict:
    """A drive of T steps in the dataset format: a bright bar that moves with the steering on noise."""
    steer = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=(T + 3) // 4), 4)[:T].astype(np.float32)
    speed = np.clip(10 + np.cumsum(rng.choice([-1.0, 0.0, 1.0], size=T)), 0, 40).astype(np.float32)
    frames = rng.integers(20, 40, size=(T, size, size, 3), dtype=np.uint8)
    x = np.clip(size // 2 + np.cumsum(2 * steer).astype(int), 4, size - 4)
    for t in range(T):
        frames[t, :, x[t] - 2 : x[t] + 2, 0] = 230
    term = np.zeros(T, bool)
    term[-1] = terminated
    return {"frames": frames, "last_frame": frames[-1], "steering": steer, "speed_mps": speed,
            "target_speed_mps": np.clip(speed + 2, 0, 100).astype(np.float32), "raw_action": np.zeros((T, 3), np.float32),
            "reward": (speed / 20 - 0.1).astype(np.float32), "terminated": term,
            "truncated": ~term & (np.arange(T) == T - 1)}


def write_synthetic_dataset(root: Path, train=(40,) * 4, val=(40,) * 2, seed: int = 0) -> Path:
    """A dataset directory with the given episode lengths per split (episode i terminates when i is even)."""
    rng = np.random.default_rng(seed)
    (root / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": 12.5, "frame_size": FRAME})
    for i, (T, split) in enumerate([(t, "train") for t in train] + [(t, "val") for t in val]):
        meta = {"source": "synthetic", "seed": i, "split": split, "fps": 12.5}
        m["episodes"].append(fmt.write_episode(root / fmt.EPISODES / fmt.episode_filename(i),
                                               synthetic_episode(rng, T, i % 2 == 0), meta))
    fmt.write_manifest(root, m)
    return root


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset (4 train and 2 val episodes of 40 steps)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds")
