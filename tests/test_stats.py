"""dataset_stats / format_stats / verify_dataset and the `gaia-gym data` verbs on synthetic shards."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaia_gym.cli import main
from gaia_gym.data import format as fmt
from gaia_gym.data import stats as stats_mod
from gaia_gym.data.stats import dataset_stats, format_stats, sheet_layout, verify_dataset

S = 16
FPS = 12.5
MODES = {"0": "expert", "1": "noisy", "2": "brake"}


def make_dataset(root: Path, n_train: int = 7, n_val: int = 3, T: int = 20, behaviour: bool = True,
                 compress: bool = True) -> tuple[Path, dict]:
    """Episodes with known values; returns (dir, the concatenated ground truth)."""
    (root / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": FPS, "frame_size": S})
    rng = np.random.default_rng(0)
    truth = {"steering": [], "speed_mps": [], "target_speed_mps": [], "returns": [], "behaviour": []}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        Ti = T + i  # different lengths
        t = np.arange(Ti)
        frames = np.zeros((Ti, S, S, 3), np.uint8)
        frames[..., 1] = 80 + 10 * i  # a green-ish tint per episode
        frames[:, 4:12, 6:10, 0] = (t[:, None, None] * 9) % 256
        steering = np.clip(rng.normal(0.1, 0.3, Ti), -1, 1).astype(np.float32)
        speed = (i + t * 0.5).astype(np.float32)
        term = np.zeros(Ti, bool)
        trunc = np.zeros(Ti, bool)
        (term if i % 2 == 0 else trunc)[-1] = True  # even episodes terminate, odd ones truncate
        arrays = {
            "frames": frames,
            "last_frame": frames[-1],
            "steering": steering,
            "speed_mps": speed,
            "target_speed_mps": speed + 1.0,
            "raw_action": np.zeros((Ti, 3), np.float32),
            "reward": np.full(Ti, 0.5 * (i - 4), np.float32),
            "terminated": term,
            "truncated": trunc,
        }
        meta = {"source": "synthetic", "seed": 100 + i, "split": split, "fps": FPS,
                "scenario": "loop" if i % 3 else "straight"}
        if behaviour:
            b = (t % 4 == 0).astype(np.uint8) + (t % 10 == 9).astype(np.uint8) * 2
            arrays["behaviour"] = b
            meta["behaviour_modes"] = MODES
            truth["behaviour"].append(b)
        for k in ("steering", "speed_mps", "target_speed_mps"):
            truth[k].append(arrays[k])
        truth["returns"].append(float(arrays["reward"].sum()))
        path = root / fmt.EPISODES / fmt.episode_filename(i)
        m["episodes"].append(fmt.write_episode(path, arrays, meta, compress=compress))
    fmt.write_manifest(root, m)
    for k in ("steering", "speed_mps", "target_speed_mps", "behaviour"):
        truth[k] = np.concatenate(truth[k]) if truth[k] else None
    return root, truth


@pytest.fixture
def synth(tmp_path):
    return make_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------
def test_stats_numbers(synth, tmp_path):
    d, truth = synth
    s = dataset_stats(d, json_path=tmp_path / "out" / "stats.json")
    n_steps = sum(20 + i for i in range(10))
    assert s["episodes"] == 10 and s["steps"] == n_steps
    assert s["splits"]["train"] == {"episodes": 7, "steps": sum(20 + i for i in range(7)),
                                    "driving_time_s": sum(20 + i for i in range(7)) / FPS}
    assert s["splits"]["val"]["episodes"] == 3
    assert s["driving_time_s"] == pytest.approx(n_steps / FPS)
    assert s["fps"] == FPS and s["source"] == "synthetic" and s["frame_size"] == S
    assert s["by_source"]["synthetic"]["episodes"] == 10
    assert s["by_scenario"]["straight"]["episodes"] == 4 and s["by_scenario"]["loop"]["episodes"] == 6
    assert s["episode_steps"] == {"mean": 24.5, "min": 20, "max": 29}

    st = s["steering"]
    assert st["mean"] == pytest.approx(truth["steering"].mean(), abs=1e-6)
    assert st["mean"] == pytest.approx(0.1, abs=0.05)  # drawn from N(0.1, 0.3)
    assert st["std"] == pytest.approx(truth["steering"].std(), abs=1e-6)
    assert st["percentiles"]["p50"] == pytest.approx(np.percentile(truth["steering"], 50), abs=1e-6)
    assert st["histogram"]["edges"][0] == -1.0 and st["histogram"]["edges"][-1] == 1.0
    assert len(st["histogram"]["counts"]) == 10 and sum(st["histogram"]["counts"]) == n_steps
    sp = s["speed_mps"]
    assert sp["min"] == 0.0 and sp["max"] == pytest.approx(9 + 28 * 0.5)
    assert sp["mean"] == pytest.approx(truth["speed_mps"].mean(), rel=1e-6)
    assert s["target_speed_mps"]["mean"] == pytest.approx(sp["mean"] + 1.0, rel=1e-6)
    assert sum(sp["histogram"]["counts"]) == n_steps

    r = s["reward"]
    rets = np.array(truth["returns"])
    assert r["return_mean"] == pytest.approx(rets.mean()) and r["sum"] == pytest.approx(rets.sum())
    assert r["return_min"] == pytest.approx(rets.min()) and r["return_max"] == pytest.approx(rets.max())
    assert s["terminated_episodes"] == 5 and s["truncated_episodes"] == 5 and s["open_episodes"] == 0
    assert s["terminated_steps"] == 5 and s["truncated_steps"] == 5

    b = truth["behaviour"]
    fr = s["behaviour"]["fractions"]
    assert fr["noisy"] == pytest.approx(np.mean(b == 1)) and fr["brake"] == pytest.approx(np.mean(b == 2))
    assert sum(fr.values()) == pytest.approx(1.0)

    assert json.loads((tmp_path / "out" / "stats.json").read_text())["steps"] == n_steps


def test_stats_without_behaviour(tmp_path):
    d, _ = make_dataset(tmp_path / "nb", n_train=3, n_val=0, behaviour=False)
    s = dataset_stats(d)
    assert s["behaviour"] is None and list(s["splits"]) == ["train"]
    assert "behaviour modes" not in format_stats(s)
    img = cv2.imread(s["files"]["contact_sheet"])
    assert img.shape[:2] == (sheet_layout((S, S), 3)["height"], sheet_layout((S, S), 3)["width"])


def test_pngs_written(synth, tmp_path):
    d, _ = synth
    sheet = tmp_path / "sheets" / "cs.png"
    s = dataset_stats(d, sheet=sheet)
    assert s["files"]["contact_sheet"] == str(sheet)
    img = cv2.imread(str(sheet))
    rows = len(stats_mod.sheet_episodes(fmt.read_manifest(d)["episodes"]))
    assert rows == 8
    g = sheet_layout((S, S), rows)
    assert img.shape == (g["height"], g["width"], 3)
    assert g["scale"] == 8 and g["width"] == 2 * 10 + 8 * 128 + 7 * 2
    assert img.std() > 10  # not blank
    dist = cv2.imread(str(d / "distributions.png"))
    assert dist.shape[:2] == (round(stats_mod.DIST_FIGSIZE[1] * stats_mod.DIST_DPI),
                              round(stats_mod.DIST_FIGSIZE[0] * stats_mod.DIST_DPI))


def test_sheet_rows_spread_over_splits(synth):
    d, _ = synth
    picked = stats_mod.sheet_episodes(fmt.read_manifest(d)["episodes"])
    splits = [e["split"] for e in picked]
    assert splits.count("val") == 2 and splits.count("train") == 6
    assert picked[0]["file"].endswith("ep_000000.npz") and picked[5]["file"].endswith("ep_000006.npz")


def test_stats_reads_frames_only_for_the_sheet(synth, monkeypatch):
    d, _ = synth
    calls = []
    real = stats_mod.load_episode

    def spy(path, fields=None):
        calls.append(tuple(fields) if fields is not None else None)
        return real(path, fields)

    monkeypatch.setattr(stats_mod, "load_episode", spy)
    dataset_stats(d)
    assert None not in calls  # never "load everything"
    assert sum("frames" in c for c in calls) == 8  # only the contact sheet's rows
    assert len(calls) == 10 + 8


def test_format_stats(synth):
    d, _ = synth
    text = format_stats(dataset_stats(d))
    assert "10 episodes, 245 steps" in text
    assert "steering" in text and "speed_mps" in text and "█" in text
    assert "noisy" in text and "contact sheet:" in text
    assert len(text.splitlines()) > 20


def test_cli_stats(synth, tmp_path, capsys):
    d, _ = synth
    assert main(["data", "stats", str(d), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "10 episodes" in out
    assert (d / "contact_sheet.png").exists() and (tmp_path / "s.json").exists()


# ---------------------------------------------------------------------------------------------
# verification and corrupt shards
# ---------------------------------------------------------------------------------------------
def test_verify_intact(synth):
    d, _ = synth
    assert verify_dataset(d, progress=False) == 10


def test_truncated_shard(synth, capsys):
    d, _ = synth
    bad = d / fmt.EPISODES / "ep_000004.npz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.CorruptShardError, match="ep_000004.npz"):
        fmt.load_episode(bad)
    with pytest.raises(fmt.CorruptShardError, match="ep_000004.npz"):
        verify_dataset(d, progress=False)
    assert main(["data", "verify", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ep_000004.npz" in err and err.startswith("gaia-gym: error:")


def flip_middle(path: Path, n: int = 16) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    for i in range(mid, mid + n):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("compress", [True, False])
def test_flipped_bytes_verify(tmp_path, capsys, compress):
    d, _ = make_dataset(tmp_path / "ds", n_train=3, n_val=1, compress=compress)
    flip_middle(d / fmt.EPISODES / "ep_000002.npz")
    with pytest.raises(fmt.CorruptShardError, match="ep_000002.npz"):
        verify_dataset(d, progress=False)
    assert main(["data", "verify", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ep_000002.npz" in err


@pytest.mark.parametrize("compress", [True, False])
def test_flipped_bytes_load_episode(tmp_path, compress):
    """load_episode must turn any decoding failure into CorruptShardError naming the file.

    Flips 8 bytes at 60 places spread over the shard; each load either raises CorruptShardError or
    (a flip in bytes nothing checks, e.g. a zip timestamp) returns. Nothing else may escape: a flip
    inside a deflate stream raises zlib.error, an odd header NotImplementedError, and so on.
    """
    d, _ = make_dataset(tmp_path / "ds", n_train=1, n_val=0, compress=compress)
    good = (d / fmt.EPISODES / "ep_000000.npz").read_bytes()
    bad = tmp_path / "ep_000099.npz"
    escaped = []
    for pos in np.linspace(0, len(good) - 8, 60).astype(int):
        b = bytearray(good)
        for i in range(pos, pos + 8):
            b[i] ^= 0xFF
        bad.write_bytes(bytes(b))
        try:
            fmt.load_episode(bad)
        except fmt.CorruptShardError as e:
            assert "ep_000099.npz" in str(e)
        except Exception as e:  # noqa: BLE001 - that is the point
            escaped.append(f"byte {pos}: {type(e).__module__}.{type(e).__name__}: {e}")
    assert not escaped, "load_episode let these through:\n" + "\n".join(escaped)


def test_verify_reports_the_first_bad_file(synth):
    d, _ = synth
    for name in ("ep_000007.npz", "ep_000003.npz"):
        p = d / fmt.EPISODES / name
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(fmt.CorruptShardError, match="ep_000003.npz"):
        verify_dataset(d, progress=False)


def test_verify_missing_shard_and_manifest_mismatch(synth):
    d, _ = synth
    m = fmt.read_manifest(d)
    m["episodes"][1]["steps"] += 1
    fmt.write_manifest(d, m)
    with pytest.raises(fmt.DatasetError, match="ep_000001.npz"):
        verify_dataset(d, progress=False)
    m["episodes"][1]["steps"] -= 1
    fmt.write_manifest(d, m)
    (d / fmt.EPISODES / "ep_000005.npz").unlink()
    with pytest.raises(fmt.CorruptShardError, match="ep_000005.npz"):
        verify_dataset(d, progress=False)
