"""`gaia-gym collect highway`: real highway-env episodes in the dataset format (tiny, fast runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highway_env")

from gaia_gym import cli  # noqa: E402
from gaia_gym.config import HighwayCollectConfig, preset  # noqa: E402
from gaia_gym.data import format as fmt  # noqa: E402
from gaia_gym.data.collect import EpisodeSpec  # noqa: E402
from gaia_gym.sims.highway import (  # noqa: E402
    MODES,
    OTHERS_COUNT,
    OTHERS_FEATURES,
    collect_highway,
    record_highway_episode,
)

SCENARIOS = HighwayCollectConfig().scenarios  # highway-fast-v0, merge-v0, roundabout-v0, intersection-v0


def _collect(out: Path, *extra: str) -> None:
    rc = cli.main(["collect", "highway", "--preset", "tiny", "--out", str(out), "--quiet", *extra])
    assert rc == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("highway") / "ds"
    _collect(out)
    return out


def _episodes(out: Path) -> list[dict]:
    return [fmt.load_episode(p) for p in sorted((out / fmt.EPISODES).glob("ep_*.npz"))]


def test_tiny_collection_covers_all_scenarios(tiny):
    m = fmt.read_manifest(tiny)
    cfg = preset(HighwayCollectConfig, "tiny")
    assert m["source"] == "highway" and m["fps"] == cfg.policy_frequency and m["frame_size"] == 64
    assert m["num_episodes"] == cfg.episodes == len(SCENARIOS)
    eps = _episodes(tiny)
    assert sorted(e["meta"]["scenario"] for e in eps) == sorted(SCENARIOS)  # every scenario once
    for e in eps:
        meta = e["meta"]
        assert meta["source"] == "highway"
        assert meta["lanes"] >= 1 and meta["policy_frequency"] == meta["fps"] == cfg.policy_frequency
        assert meta["others_features"] == list(OTHERS_FEATURES)
        assert meta["behaviour_modes"] == {str(k): v for k, v in MODES.items()}
        assert 1 <= meta["steps"] <= cfg.max_steps
    # highway-fast-v0: the lane count and density vary per episode (drawn from its seed)
    hw = eps[0]["meta"]
    assert hw["scene_overrides"]["lanes_count"] == hw["lanes"] in (2, 3, 4)
    assert hw["vehicles_density"] == hw["scene_overrides"]["vehicles_density"]
    assert all(e["meta"]["scene_overrides"] == {} for e in eps[1:])  # the others keep their own road
    for e in eps:  # every listed vehicle has a track number (which follows it over time)
        tr, o = e["others_track"], e["others"]
        assert tr.shape == o.shape[:2] and ((o[..., 0] > 0.5) <= (tr >= 0)).all()


def test_frames_are_drawn_and_move(tiny):
    for e in _episodes(tiny):
        frames = e["frames"]
        T = e["meta"]["steps"]
        assert frames.shape == (T, 64, 64, 3) and frames.dtype == np.uint8
        assert e["last_frame"].shape == (64, 64, 3)
        # a blank viewer (e.g. SDL_VIDEODRIVER=dummy) gives one flat grey: std 0
        assert all(f.std() > 8.0 for f in frames), e["meta"]["scenario"]
        # the ego (drawn yellow for a continuous-action vehicle, red once crashed) is in the picture
        f0 = frames[0].astype(int)
        ego = (f0[..., 0] > 150) & (f0[..., 1] > 150) & (f0[..., 2] < 80)
        assert ego.sum() >= 4, e["meta"]["scenario"]
        seq = np.concatenate([frames, e["last_frame"][None]]).astype(np.int16)
        assert np.abs(np.diff(seq, axis=0)).mean(axis=(1, 2, 3)).max() > 0.5  # the scene changes


def test_signals_in_range(tiny):
    for e in _episodes(tiny):
        T = e["meta"]["steps"]
        assert e["others"].shape == (T, OTHERS_COUNT, len(OTHERS_FEATURES)) and e["others"].dtype == np.float32
        pres = e["others"][..., 0]
        assert set(np.unique(pres)) <= {0.0, 1.0} and pres[0].sum() >= 1
        assert np.all(e["others"][pres == 0] == 0)  # absent vehicles are zero rows
        assert e["raw_action"].shape == (T, 2) and np.all(np.abs(e["raw_action"]) <= 1.0)
        assert np.all(np.abs(e["steering"]) <= 1.0)
        np.testing.assert_array_equal(e["steering"], e["raw_action"][:, 1])
        assert np.all(e["speed_mps"] >= -1e-4) and np.all(e["speed_mps"] <= 40.0 + 1e-4)
        # the commanded speed is the speed reached at the next frame
        np.testing.assert_allclose(e["target_speed_mps"][:-1], e["speed_mps"][1:], atol=1e-5)
        assert e["behaviour"].dtype == np.uint8 and set(e["behaviour"].tolist()) <= set(MODES)
        assert e["terminated"][-1] or e["truncated"][-1]
        assert not (e["terminated"][:-1].any() or e["truncated"][:-1].any())


def test_rerun_does_not_rerecord_and_extends(tiny):
    shards = sorted((tiny / fmt.EPISODES).glob("ep_*.npz"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    _collect(tiny)
    assert {p.name: p.stat().st_mtime_ns for p in shards} == before
    assert fmt.read_manifest(tiny)["num_episodes"] == len(before)
    _collect(tiny, "--episodes", str(len(before) + 1))  # a longer plan records only the new episode
    m = fmt.read_manifest(tiny)
    assert m["num_episodes"] == len(before) + 1
    assert {p.name: p.stat().st_mtime_ns for p in shards} == before
    from gaia_gym.sims.highway import scenario_of

    assert m["episodes"][-1]["meta"]["scenario"] == scenario_of(len(before), SCENARIOS, preset(HighwayCollectConfig, "tiny"))


def test_both_splits_hold_every_scenario():
    from gaia_gym.sims.highway import scenario_of

    cfg = HighwayCollectConfig()
    val = [scenario_of(i, SCENARIOS, cfg) for i in range(cfg.episodes) if i % cfg.val_every == cfg.val_every - 1]
    train = [scenario_of(i, SCENARIOS, cfg) for i in range(cfg.episodes) if i % cfg.val_every != cfg.val_every - 1]
    for split in (val, train):
        counts = [split.count(s) for s in SCENARIOS]
        assert min(counts) >= 0.9 * max(counts), counts
    old = HighwayCollectConfig(scenario_order="round_robin")
    assert len({scenario_of(i, SCENARIOS, old) for i in range(9, 1000, 10)}) == 2  # what round-robin did


def test_validation_split_by_seed(tmp_path):
    cfg = preset(HighwayCollectConfig, "tiny", episodes=4, max_steps=2, val_every=2, seed=100)
    m = collect_highway(cfg, tmp_path / "ds", progress=False)
    by_index = {e["meta"]["index"]: e for e in m["episodes"]}
    for i, e in by_index.items():
        assert e["split"] == ("val" if i % 2 == 1 else "train")
        assert e["seed"] == 100 + i
    assert {e["seed"] for e in m["episodes"] if e["split"] == "val"} == {101, 103}


def test_recorder_is_reproducible():
    cfg = preset(HighwayCollectConfig, "tiny", max_steps=4)
    spec = EpisodeSpec(0, 7, "train", ("roundabout-v0",))
    a1, m1 = record_highway_episode(spec, cfg)
    a2, m2 = record_highway_episode(spec, cfg)
    assert m1 == m2 and a1.keys() == a2.keys()
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)


def test_unknown_scenario_is_a_clean_error(tmp_path, capsys):
    rc = cli.main(["collect", "highway", "--preset", "tiny", "--out", str(tmp_path / "x"), "--quiet",
                   "--scenarios", "no-such-road-v0"])
    assert rc == 2 and "no-such-road-v0" in capsys.readouterr().err


def test_dummy_video_driver_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # highway-env would record flat grey frames
    rc = cli.main(["collect", "highway", "--preset", "tiny", "--out", str(tmp_path / "x"), "--quiet"])
    assert rc == 2 and "SDL_VIDEODRIVER" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_rerun_with_another_spec_is_refused(tiny, capsys):
    from dataclasses import replace

    from gaia_gym.errors import DatasetError

    before = (tiny / fmt.MANIFEST).read_bytes()
    shards = sorted(p.name for p in (tiny / fmt.EPISODES).glob("ep_*.npz"))
    for extra, field in ((["--frame-size", "32"], "frame_size=64 (this run: 32)"),
                         (["--max-steps", "9"], "config.max_steps=6 (this run: 9)"),
                         (["--scenarios", "merge-v0"], "config.scenarios")):
        rc = cli.main(["collect", "highway", "--preset", "tiny", "--out", str(tiny), "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("gaia-gym: error:") and "\n" not in err, err
        assert str(tiny) in err and field in err, err
    cfg = replace(preset(HighwayCollectConfig, "tiny"), policy_frequency=10)
    with pytest.raises(DatasetError, match=r"fps=5 \(this run: 10\).*config\.policy_frequency"):
        collect_highway(cfg, tiny, progress=False)
    assert (tiny / fmt.MANIFEST).read_bytes() == before  # nothing added, the header not rewritten
    assert sorted(p.name for p in (tiny / fmt.EPISODES).glob("ep_*.npz")) == shards


def test_expert_labels_change_nothing_and_follow_the_controller(monkeypatch):
    """The labels are the clean cruise controller's command at every step, and computing them draws none
    of the behaviour's random numbers: the same seed records the same episode with or without them."""
    from gaia_gym.sims import highway as hw

    cfg = preset(HighwayCollectConfig, "tiny", max_steps=25)
    spec = EpisodeSpec(0, 11, "train", ("intersection-v0",))
    labelled, _ = record_highway_episode(spec, cfg)
    monkeypatch.setattr(hw.BehaviourPolicy, "expert", lambda self, others: (0.0, 0.0))
    plain, _ = record_highway_episode(spec, cfg)
    for k in ("frames", "raw_action", "speed_mps", "reward", "behaviour", "others"):
        np.testing.assert_array_equal(labelled[k], plain[k], err_msg=k)
    steer, speed = labelled["expert_steering"], labelled["expert_speed_mps"]
    assert steer.shape == speed.shape == (len(labelled["frames"]),) and steer.dtype == np.float32
    assert np.all(np.abs(steer) <= 1.0) and np.all(speed >= 0.0)
    # in cruise segments (the same steering law with light noise) the behaviour's steering is the label's
    cruise = labelled["behaviour"] == 0
    if cruise.any():
        assert np.abs(labelled["steering"][cruise] - steer[cruise]).mean() < 0.1
    assert not np.allclose(steer, 0.0) or not np.allclose(speed, 0.0)


def test_an_episode_does_not_depend_on_the_episodes_before_it():
    """highway-env's intersection-v0 changes its traffic model class-wide; every env starts from the defaults
    again, so a highway episode records the same after an intersection episode as on its own."""
    from highway_env.vehicle.behavior import IDMVehicle

    cfg = preset(HighwayCollectConfig, "tiny", max_steps=15)
    spec = EpisodeSpec(0, 5, "train", ("highway-fast-v0",))
    alone, _ = record_highway_episode(spec, cfg)
    record_highway_episode(EpisodeSpec(1, 6, "train", ("intersection-v0",)), cfg)
    assert IDMVehicle.DISTANCE_WANTED == 7  # what intersection-v0 leaves behind
    after, _ = record_highway_episode(spec, cfg)
    assert IDMVehicle.DISTANCE_WANTED == 10 and IDMVehicle.COMFORT_ACC_MIN == -5  # highway-env's own defaults again
    for k in ("frames", "others", "reward"):
        np.testing.assert_array_equal(alone[k], after[k], err_msg=k)
