"""Coverage statistics: off-road read from pixels, speed x steering x off-road cells, covered shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gaia_gym.cli import main
from gaia_gym.data import format as fmt
from gaia_gym.data.coverage import cell_counts, coverage, driving_samples
from gaia_gym.data.frames import carracing_grass_fraction
from gaia_gym.errors import ConfigError

ROAD, GRASS = (105, 105, 105), (102, 204, 102)


def frames_of(offroad: np.ndarray) -> np.ndarray:
    """64x64 frames: grass everywhere but a road under the car, or grass under it too."""
    f = np.zeros((len(offroad), 64, 64, 3), np.uint8)
    f[:] = GRASS
    f[~offroad, 40:64, 24:40] = ROAD
    f[:, 51:58, 31:33] = (204, 0, 0)  # the car
    return f


def write_dataset(root: Path, speeds: list[np.ndarray], steers: list[np.ndarray], offs: list[np.ndarray]) -> Path:
    (root / fmt.EPISODES).mkdir(parents=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": 12.5, "frame_size": 64})
    for i, (sp, st, off) in enumerate(zip(speeds, steers, offs)):
        T = len(sp)
        frames = frames_of(off)
        arrays = {"frames": frames, "last_frame": frames[-1], "steering": st.astype(np.float32),
                  "speed_mps": sp.astype(np.float32), "target_speed_mps": sp.astype(np.float32),
                  "raw_action": np.zeros((T, 3), np.float32), "reward": np.zeros(T, np.float32),
                  "terminated": np.zeros(T, bool), "truncated": np.eye(T, dtype=bool)[-1]}
        meta = {"source": "synthetic", "split": "train", "fps": 12.5}
        m["episodes"].append(fmt.write_episode(root / fmt.EPISODES / fmt.episode_filename(i), arrays, meta))
    fmt.write_manifest(root, m)
    return root


def test_grass_fraction_separates_road_from_grass():
    g = carracing_grass_fraction(frames_of(np.array([False, True])))
    assert g[0] < 0.1 and g[1] > 0.6
    with pytest.raises(ConfigError, match="64, 64, 3"):
        carracing_grass_fraction(np.zeros((2, 32, 32, 3), np.uint8))


def test_cells_and_covered_share(tmp_path):
    # reference: 40 steps at 20-30 m/s straight on the road, 40 at 50-60 m/s steering hard right off the road
    ref = write_dataset(tmp_path / "ref", [np.full(40, 25.0), np.full(40, 55.0)], [np.zeros(40), np.full(40, 0.9)],
                        [np.zeros(40, bool), np.ones(40, bool)])
    # other: 10 steps like the first (covered), 10 at 95 m/s (not), 10 at 55 m/s right but ON the road (not)
    other = write_dataset(tmp_path / "other", [np.full(10, 25.0), np.full(10, 95.0), np.full(10, 55.0)],
                          [np.zeros(10), np.zeros(10), np.full(10, 0.9)],
                          [np.zeros(10, bool), np.zeros(10, bool), np.zeros(10, bool)])
    s = driving_samples(ref)
    assert s["offroad"].sum() == 40
    c = cell_counts(s)
    assert c.sum() == 80 and c[2, 4, 0] == 40 and c[5, 7, 1] == 40
    r = coverage(ref, [other], split="train", min_count=20, progress=False)
    o = r["against"][str(other)]
    assert o["covered_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert o["covered_share_by_speed"] == {"20-30": 1.0, "50-60": 0.0, "90-100": 0.0}
    assert r["reference"]["share_offroad"] == 0.5 and o["share_offroad"] == 0.0
    # the CLI prints, writes the record and the picture
    out = tmp_path / "cov.json"
    assert main(["data", "coverage", str(ref), "--against", str(other), "--json", str(out),
                 "--plot", str(tmp_path / "cov.png"), "--quiet"]) == 0
    assert json.loads(out.read_text())["against"][str(other)]["covered_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert (tmp_path / "cov.png").stat().st_size > 1000
