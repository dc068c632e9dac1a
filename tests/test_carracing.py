"""Real CarRacing-v3 collection: the adapter, the scripted driver, the recorder, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gaia_gym.cli import main
from gaia_gym.config import CarRacingCollectConfig, preset
from gaia_gym.data import format as fmt
from gaia_gym.data.collect import EpisodeSpec, plan_episodes
from gaia_gym.sims.carracing import CarRacingDrive, SpeedController, run_scripted_episode
from gaia_gym.sims.carracing_collect import MODES, MODES_V2, record_carracing_episode


def test_speed_controller_gas_brake_and_traction():
    c = SpeedController()
    gas, brake = c(30.0, 10.0)
    assert gas > 0 and brake == 0
    gas, brake = c(0.0, 40.0)
    assert gas == 0 and 0 < brake <= c.max_brake
    gas, _ = c(30.0, 10.0, wheel_speed=40.0)  # wheels spinning 30 m/s faster than the car
    assert gas == 0.0


def test_drive_step_shapes_and_frame_skip():
    d = CarRacingDrive(frame_skip=4, frame_size=64)
    f0 = d.reset(seed=3)
    assert f0.shape == (64, 64, 3) and f0.dtype == np.uint8
    n0 = d.frames_run
    s = d.step(0.0, 30.0)
    assert d.frames_run - n0 == 4 and s.sim_frames == 4
    assert s.frame.shape == (64, 64, 3)
    assert s.raw_action.shape == (3,) and s.raw_action[1] > 0  # gas towards 30 m/s
    for _ in range(10):
        s = d.step(0.0, 30.0)
    assert s.speed_mps > 5.0
    with pytest.raises(ValueError, match="finite"):
        d.step(float("nan"), 10.0)
    d.close()


def test_scripted_driver_finishes_a_lap():
    r = run_scripted_episode(1_000_000)
    assert r["lap_finished"] and r["return"] > 800, r


def test_recorder_is_deterministic_and_well_formed():
    cfg = preset(CarRacingCollectConfig, "tiny", max_steps=25)
    spec = EpisodeSpec(0, 11, "train")
    a1, m1 = record_carracing_episode(spec, cfg)
    a2, _ = record_carracing_episode(spec, cfg)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)
    T = fmt.validate_episode(a1)
    assert T == 25 and a1["truncated"][-1] and not a1["terminated"].any()
    assert a1["frames"].std() > 10  # a real image, not a blank one
    assert np.abs(np.diff(a1["frames"].astype(int), axis=0)).mean() > 1  # the car moves
    assert np.all(np.abs(a1["steering"]) <= 1) and np.all(a1["speed_mps"] >= 0)
    assert set(np.unique(a1["behaviour"])) <= set(MODES_V2)
    assert m1["source"] == "carracing" and m1["fps"] == 12.5


def test_v1_mix_covers_every_mode():
    cfg = CarRacingCollectConfig(max_steps=120, clean_fraction=0.0, mix="v1")
    seen = set()
    for seed in range(3):
        a, m = record_carracing_episode(EpisodeSpec(seed, seed, "train"), cfg)
        seen |= set(np.unique(a["behaviour"]).tolist())
        assert "driver_style" not in m
    assert seen == set(MODES), seen


def test_v2_mix_covers_every_mode_many_drivers_and_labels_every_step():
    cfg = CarRacingCollectConfig(max_steps=200, clean_fraction=0.0)
    assert cfg.mix == "v2"
    seen, styles, fast = set(), set(), 0.0
    for seed in range(4):
        a, m = record_carracing_episode(EpisodeSpec(seed, seed, "train"), cfg)
        seen |= set(np.unique(a["behaviour"]).tolist())
        styles.add(m["driver_style"]["lookahead_base"])
        assert m["behaviour_modes"] == {str(k): v for k, v in MODES_V2.items()}
        assert np.isfinite(a["expert_steering"]).all() and np.isfinite(a["expert_speed_mps"]).all()
        fast = max(fast, float(a["target_speed_mps"][a["behaviour"] == 7].max(initial=0.0)))
    assert seen == set(MODES_V2), seen
    assert len(styles) == 4  # one driver per episode
    assert fast >= 75.0  # the fast segments ask for the car's limit


def test_v2_recorder_is_deterministic():
    cfg = CarRacingCollectConfig(max_steps=40, clean_fraction=0.0)
    spec = EpisodeSpec(0, 23, "train")
    a1, m1 = record_carracing_episode(spec, cfg)
    a2, m2 = record_carracing_episode(spec, cfg)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)
    assert m1 == m2


def test_unknown_mix_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown CarRacing behaviour mix 'v9'"):
        record_carracing_episode(EpisodeSpec(0, 1, "train"), CarRacingCollectConfig(max_steps=3, mix="v9"))


def test_split_is_by_track_seed():
    specs = plan_episodes(20, seed=100, val_every=10)
    val = [s for s in specs if s.split == "val"]
    assert [s.seed for s in val] == [109, 119]
    assert len({s.seed for s in specs}) == 20  # one track per episode


def test_cli_tiny_collection(tmp_path):
    out = tmp_path / "ds"
    assert main(["collect", "carracing", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    m = fmt.read_manifest(out)
    assert m["num_episodes"] == 2 and m["num_steps"] == 24 and m["source"] == "carracing"
    for e in m["episodes"]:
        ep = fmt.load_episode(out / e["file"])
        assert ep["frames"].shape == (12, 64, 64, 3)
    # a different source into the same directory is refused with a clear error
    assert main(["collect", "highway", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2


def test_killed_collection_resumes_without_loss(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "gaia_gym.cli", "collect", "carracing", "--out", str(out), "--episodes", "5",
           "--workers", "1", "--max-steps", "40", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / fmt.EPISODES
    deadline = time.time() + 60
    while time.time() < deadline and len(list(shards.glob("ep_*.npz"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(shards.glob("ep_*.npz"))
    assert 2 <= len(done) < 5, "the kill should land mid-collection"
    for p in done:  # every shard visible after a kill is complete
        fmt.load_episode(p)
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    # an interrupted atomic write leaves only a hidden temp file, which the rerun removes
    (shards / ".ep_000004.npz.999.tmp").write_bytes(b"partial")

    assert subprocess.run(cmd).returncode == 0
    m = fmt.read_manifest(out)
    assert m["num_episodes"] == 5
    assert not list(shards.glob("*.tmp"))
    for p in done:  # nothing already written was recorded again
        assert p.stat().st_mtime_ns == mtimes[p.name]
    # and the resumed dataset equals a straight recording of the same plan
    cfg = CarRacingCollectConfig(episodes=5, workers=1, max_steps=40)
    spec = plan_episodes(5, cfg.seed, cfg.val_every)[4]
    ref, _ = record_carracing_episode(spec, cfg)
    got = fmt.load_episode(shards / "ep_000004.npz")
    np.testing.assert_array_equal(ref["frames"], got["frames"])
    np.testing.assert_array_equal(ref["steering"].astype(np.float32), got["steering"])


# ----------------------------------------------------------------------------------------------
# reruns: the same spec resumes, another spec is refused; Ctrl-C is quiet
# ----------------------------------------------------------------------------------------------
def _synthetic_carracing_dataset(out, cfg) -> None:
    """A dataset whose header is what `collect_carracing(cfg)` writes, with one synthetic episode 0."""
    from gaia_gym.sims.carracing_collect import carracing_info

    m = fmt.open_for_writing(out, carracing_info(cfg))
    T = 3
    arrays = {"frames": np.zeros((T, cfg.frame_size, cfg.frame_size, 3), np.uint8),
              "last_frame": np.zeros((cfg.frame_size, cfg.frame_size, 3), np.uint8),
              "steering": np.zeros(T), "speed_mps": np.zeros(T), "target_speed_mps": np.zeros(T),
              "raw_action": np.zeros((T, 3)), "reward": np.zeros(T), "terminated": np.zeros(T, bool),
              "truncated": np.ones(T, bool)}
    meta = {"source": "carracing", "index": 0, "seed": cfg.seed, "split": "train"}
    m["episodes"].append(fmt.write_episode(out / fmt.EPISODES / fmt.episode_filename(0), arrays, meta))
    fmt.write_manifest(out, m)


def test_rerun_with_another_spec_is_refused(tmp_path, capsys):
    from dataclasses import replace

    from gaia_gym.errors import DatasetError
    from gaia_gym.sims.carracing_collect import collect_carracing

    out = tmp_path / "ds"
    cfg = preset(CarRacingCollectConfig, "tiny", episodes=1, max_steps=3)
    _synthetic_carracing_dataset(out, cfg)
    before = (out / fmt.MANIFEST).read_bytes()
    for change, fields in [(dict(frame_skip=2), ("fps=12.5 (this run: 25.0)", "config.frame_skip=4 (this run: 2)")),
                           (dict(frame_size=32), ("frame_size=64 (this run: 32)", "config.frame_size")),
                           (dict(max_steps=5), ("config.max_steps=3 (this run: 5)",)),
                           (dict(seed=10, episodes=3), ("config.seed=0 (this run: 10)",))]:
        with pytest.raises(DatasetError) as ei:
            collect_carracing(replace(cfg, **change), out, progress=False)
        msg = str(ei.value)
        assert "\n" not in msg and str(out) in msg and all(f in msg for f in fields), msg
        assert "config.episodes" not in msg
    assert (out / fmt.MANIFEST).read_bytes() == before  # the header was not rewritten
    assert main(["collect", "carracing", "--preset", "tiny", "--out", str(out), "--frame-skip", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gaia-gym: error:") and "\n" not in err and "config.frame_skip" in err
    assert (out / fmt.MANIFEST).read_bytes() == before


def test_rerun_with_more_episodes_resumes(tmp_path):
    from dataclasses import replace

    from gaia_gym.sims.carracing_collect import collect_carracing

    out = tmp_path / "ds"
    cfg = preset(CarRacingCollectConfig, "tiny", episodes=1, max_steps=3)
    _synthetic_carracing_dataset(out, cfg)
    first = (out / fmt.EPISODES / "ep_000000.npz").stat().st_mtime_ns
    m = collect_carracing(replace(cfg, episodes=2, workers=2, compress=False), out, progress=False)
    assert m["num_episodes"] == 2 and m["config"]["episodes"] == 2
    assert (out / fmt.EPISODES / "ep_000000.npz").stat().st_mtime_ns == first  # not recorded again
    assert fmt.load_episode(out / fmt.EPISODES / "ep_000001.npz")["frames"].shape == (3, 64, 64, 3)


def test_ctrl_c_during_collection_is_one_line(tmp_path):
    """Ctrl-C reaches every process of the job; only the CLI's one line may come out."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "gaia_gym.cli", "collect", "carracing", "--out", str(out), "--episodes", "6",
           "--workers", "2", "--max-steps", "5", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((out / fmt.EPISODES).glob("ep_*.npz")):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # no worker's traceback
    assert err.strip().splitlines()[-1] == "gaia-gym: interrupted; rerun the same command to resume", err
    m = fmt.read_manifest(out)
    assert 1 <= m["num_episodes"] < 6
    assert {e["file"] for e in m["episodes"]} == {f"episodes/{p.name}" for p in (out / fmt.EPISODES).glob("ep_*.npz")}
