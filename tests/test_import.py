"""`gaia-gym import`: a logged drive (video + CSV) becomes a dataset episode.

The CarRacing tests record real CarRacing-v3 observations at 50 fps, write them as a video plus a CSV
log, import them with ``like="carracing"`` and compare with what the collector itself records.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaia_gym.cli import main
from gaia_gym.data import format as fmt
from gaia_gym.data.frames import carracing_frame
from gaia_gym.data.importer import DriveImportError, import_drive


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def write_video(path: Path, frames_rgb, fps: float, fourcc: str = "FFV1") -> Path:
    h, w = frames_rgb[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    assert vw.isOpened(), f"OpenCV cannot write {fourcc} here"
    for f in frames_rgb:
        vw.write(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def coded_frames(n: int, h: int = 48, w: int = 64):
    """Uniform frames whose red channel encodes the frame index (3*j) and green a constant."""
    return [np.full((h, w, 3), (3 * j, 100, 200), dtype=np.uint8) for j in range(n)]


def episode(out: Path, i: int = 0) -> dict:
    return fmt.load_episode(out / fmt.EPISODES / fmt.episode_filename(i))


@pytest.fixture
def synth(tmp_path):
    """A 2 s, 30 fps lossless video of coded frames and a matching 100 Hz log."""
    video = write_video(tmp_path / "drive.avi", coded_frames(60), 30.0)
    t = np.arange(0, 2.0, 0.01)
    rows = [[f"{x:.2f}", f"{10 + 5 * x:.6f}", f"{0.4 * np.sin(x):.6f}"] for x in t]
    log = write_csv(tmp_path / "drive.csv", ["time_s", "speed_mps", "steering"], rows)
    return video, log, tmp_path / "ds"


# ----------------------------------------------------------------------------------------------
# CarRacing: an imported recording is the collected episode
# ----------------------------------------------------------------------------------------------
SEED, STEPS = 7, 37  # 37 collector steps = 148 simulator frames after the zoom-in (~3 s at 50 fps)


@pytest.fixture(scope="module")
def carracing_recording(tmp_path_factory):
    """Real CarRacing-v3 drive recorded at 50 fps, and the same drive through the 12.5 Hz collector."""
    pytest.importorskip("Box2D")
    from gaia_gym.sims.carracing import ZOOM_FRAMES, CarRacingDrive

    acts = [(0.4 * np.sin(k / 5), 20.0 + 10.0 * np.cos(k / 7)) for k in range(STEPS)]

    # 50 fps recording: every simulator frame rendered, including the reset frame and the zoom-in
    d1 = CarRacingDrive(frame_skip=1, render_skipped=True)
    zoom: list[np.ndarray] = []
    env_reset, sim_step = d1.env.reset, d1._sim_step

    def reset_rec(**kw):
        obs, info = env_reset(**kw)
        zoom.append(obs.copy())
        return obs, info

    def step_rec(action, render):
        out = sim_step(action, True)
        zoom.append(out[0].copy())
        return out

    d1.env.reset, d1._sim_step = reset_rec, step_rec
    d1.reset(SEED)
    d1._sim_step = sim_step
    assert len(zoom) == ZOOM_FRAMES + 1 and np.array_equal(zoom[-1], d1.last_obs)
    obs, speed, steer, ret = [d1.last_obs.copy()], [d1.speed_mps], [], [0.0]
    for s, v in acts:
        for _ in range(4):
            ret.append(ret[-1] + d1.step(s, v).reward)
            obs.append(d1.last_obs.copy())
            speed.append(d1.speed_mps)
            steer.append(s)
    steer.append(steer[-1])
    d1.close()

    # the collector's own drive (frame_skip 4) with the same actions
    d4 = CarRacingDrive(frame_skip=4)
    col_frames, col_speed, col_reward = [d4.reset(SEED)], [d4.speed_mps], []
    for s, v in acts:
        st = d4.step(s, v)
        col_frames.append(st.frame)
        col_speed.append(st.speed_mps)
        col_reward.append(st.reward)
    d4.close()

    root = tmp_path_factory.mktemp("carracing")
    log = write_csv(root / "log.csv", ["time_s", "speed_mps", "steering"],
                    [[j / 50, speed[j], steer[j]] for j in range(len(obs))])
    # the same drive recorded from env.reset(): the reset frame + 50 zoom-in frames come first
    pre = zoom[:-1]
    log_zoom = write_csv(root / "log_zoom.csv", ["time_s", "speed_mps", "steering"],
                         [[j / 50, 0.0, 0.0] for j in range(len(pre))]
                         + [[(len(pre) + j) / 50, speed[j], steer[j]] for j in range(len(obs))])
    log_ret = write_csv(root / "log_ret.csv", ["time_s", "speed_mps", "steering", "return"],
                        [[j / 50, speed[j], steer[j], ret[j]] for j in range(len(obs))])
    return {
        "root": root, "obs": obs, "log_ret": log_ret, "col_reward": np.array(col_reward), "speed": np.array(speed), "steer": np.array(steer),
        "col_frames": np.stack(col_frames), "col_speed": np.array(col_speed, dtype=np.float32),
        "log": log, "log_zoom": log_zoom, "pre": pre,
    }


def test_carracing_recording_lines_up_with_collector(carracing_recording, tmp_path):
    r = carracing_recording
    video = write_video(tmp_path / "rec.avi", r["obs"], 50.0, "FFV1")  # lossless
    m = import_drive(video, r["log"], tmp_path / "ds", like="carracing", progress=False)
    ep = episode(tmp_path / "ds")
    got = np.concatenate([ep["frames"], ep["last_frame"][None]])
    assert got.shape == (STEPS + 1, 64, 64, 3)

    # the frames are the collector's frames, pixel for pixel (mean absolute error 0.0) ...
    assert np.array_equal(got, r["col_frames"])
    want = np.stack([carracing_frame(r["obs"][4 * k]) for k in range(STEPS + 1)])
    assert np.abs(got.astype(float) - want).mean() == 0.0
    # ... and the test would notice a one-simulator-frame misalignment
    shifted = np.stack([carracing_frame(r["obs"][4 * k + 1]) for k in range(STEPS)])
    assert np.abs(ep["frames"].astype(float) - shifted).mean() > 0.1

    # speeds are the collector's measured speeds; the target is the speed reached next
    np.testing.assert_allclose(ep["speed_mps"], r["col_speed"][:STEPS], atol=1e-4)
    np.testing.assert_allclose(ep["target_speed_mps"], r["col_speed"][1:], atol=1e-4)
    np.testing.assert_allclose(ep["steering"], r["steer"][0 : 4 * STEPS : 4], atol=1e-6)
    np.testing.assert_allclose(ep["raw_action"], np.stack([ep["steering"], ep["speed_mps"]], 1), atol=1e-6)
    assert not ep["reward"].any() and not ep["terminated"].any()
    assert ep["truncated"][-1] and not ep["truncated"][:-1].any()

    meta = ep["meta"]
    assert meta["source"] == "import" and meta["like"] == "carracing" and meta["fps"] == 12.5
    assert meta["reward_known"] is False and meta["seed"] is None and meta["video"] == "rec.avi"
    assert m["source"] == "import" and m["num_episodes"] == 1 and m["num_steps"] == STEPS
    assert m["episodes"][0]["file"] == "episodes/ep_000000.npz"


def test_carracing_recording_with_its_return_knows_the_collector_rewards(carracing_recording, tmp_path):
    r = carracing_recording
    video = write_video(tmp_path / "rec.avi", r["obs"], 50.0, "FFV1")
    import_drive(video, r["log_ret"], tmp_path / "ds", like="carracing", progress=False, return_col="return")
    ep = episode(tmp_path / "ds")
    np.testing.assert_allclose(ep["reward"], r["col_reward"][:STEPS], atol=1e-3)
    assert np.abs(ep["reward"]).sum() > 1.0  # tiles were visited: a reward the test would notice missing
    assert ep["meta"]["reward_known"] is True and ep["meta"]["columns"]["return"] == "return"


def test_carracing_recording_in_mp4(carracing_recording, tmp_path):
    """MPEG-4 Part 2 (OpenCV's 'mp4v' MP4 writer, lossy): measured mean absolute error ~2.7 / 255."""
    r = carracing_recording
    video = write_video(tmp_path / "rec.mp4", r["obs"], 50.0, "mp4v")
    import_drive(video, r["log"], tmp_path / "ds", like="carracing", progress=False)
    ep = episode(tmp_path / "ds")
    got = np.concatenate([ep["frames"], ep["last_frame"][None]]).astype(float)
    mae = np.abs(got - r["col_frames"]).mean()
    assert got.shape[0] == STEPS + 1
    assert mae < 4.0, mae


def test_carracing_recording_with_zoom_in_trimmed(carracing_recording, tmp_path):
    """A recording from env.reset() (reset frame + 50 zoom-in frames first) lines up with trim 1 s."""
    r = carracing_recording
    video = write_video(tmp_path / "full.avi", r["pre"] + r["obs"], 50.0, "FFV1")
    import_drive(video, r["log_zoom"], tmp_path / "ds", like="carracing", trim_start_s=1.0, progress=False)
    ep = episode(tmp_path / "ds")
    assert np.array_equal(np.concatenate([ep["frames"], ep["last_frame"][None]]), r["col_frames"])
    np.testing.assert_allclose(ep["speed_mps"], r["col_speed"][:STEPS], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# resampling, units, appending
# ----------------------------------------------------------------------------------------------
def test_nearest_frame_and_interpolated_log(synth):
    video, log, out = synth
    import_drive(video, log, out, frame_size=16, progress=False)
    ep = episode(out)
    # 30 fps video spans 0..59/30 s; 12.5 Hz samples t_k = 0.08 k up to 1.92 s -> 25 samples, 24 steps
    T = 24
    assert ep["frames"].shape == (T, 16, 16, 3) and ep["last_frame"].shape == (16, 16, 3)
    t = np.arange(T + 1) * 0.08
    idx = np.floor(t * 30 + 0.5 + 1e-6).astype(int)  # nearest video frame
    red = np.concatenate([ep["frames"][:, 8, 8, 0], ep["last_frame"][None, 8, 8, 0]])
    assert np.array_equal(red, 3 * idx)  # RGB order kept (OpenCV's BGR converted back)
    assert (ep["frames"][..., 1] == 100).all() and (ep["frames"][..., 2] == 200).all()
    np.testing.assert_allclose(ep["speed_mps"], 10 + 5 * t[:T], atol=1e-5)
    np.testing.assert_allclose(ep["target_speed_mps"], 10 + 5 * t[1:], atol=1e-5)
    np.testing.assert_allclose(ep["steering"], 0.4 * np.sin(t[:T]), atol=2e-5)
    assert ep["raw_action"].shape == (T, 2)
    assert ep["meta"]["like"] is None and ep["meta"]["video_fps"] == 30.0


def test_video_fps_override_and_trim(synth):
    video, log, out = synth
    # read the 60 frames as 60 fps (0..0.983 s), start at 0.2 s, 10 Hz: t = 0.2 .. 0.9 -> 8 samples
    import_drive(video, log, out, fps=10, video_fps=60, trim_start_s=0.2, frame_size=8, progress=False)
    ep = episode(out)
    assert ep["frames"].shape[0] == 7
    assert list(ep["frames"][:, 0, 0, 0]) == [3 * j for j in range(12, 54, 6)]
    assert ep["last_frame"][0, 0, 0] == 3 * 54
    assert ep["meta"]["start_s"] == pytest.approx(0.2)


def test_degrees_column_with_scale(tmp_path):
    video = write_video(tmp_path / "v.avi", coded_frames(30), 25.0)
    t = np.arange(0, 1.3, 0.05)
    deg = 270 * np.sin(3 * t)  # a 540-degree wheel turned up to half its travel
    rows = [[f"{x:.2f}", f"{36 + 18 * x:.4f}", f"{d:.4f}"] for x, d in zip(t, deg)]
    log = write_csv(tmp_path / "can.csv", ["t", "speed_kmh", "wheel_deg"], rows)
    kw = dict(time_col="t", speed_col="speed_kmh", steering_col="wheel_deg", frame_size=8, progress=False)

    with pytest.raises(DriveImportError, match=r"steering column 'wheel_deg' scaled by 1 spans \[-15\d.*, 26\d\.\d+\], outside \[-1, 1\]"):
        import_drive(video, log, tmp_path / "ds", **kw)
    assert not (tmp_path / "ds" / fmt.MANIFEST).exists()

    m = import_drive(video, log, tmp_path / "ds", speed_scale=1 / 3.6, steering_scale=1 / 540, **kw)
    ep = episode(tmp_path / "ds")
    ts = np.arange(ep["frames"].shape[0]) * 0.08
    np.testing.assert_allclose(ep["speed_mps"], (36 + 18 * ts) / 3.6, atol=1e-4)
    np.testing.assert_allclose(ep["steering"], np.interp(ts, t, deg) / 540, atol=1e-5)
    assert np.abs(ep["steering"]).max() <= 0.5
    np.testing.assert_allclose(ep["raw_action"][:, 0], np.interp(ts, t, deg), atol=1e-3)  # log units
    np.testing.assert_allclose(ep["raw_action"][:, 1], 36 + 18 * ts, atol=1e-3)
    meta = ep["meta"]
    assert meta["columns"] == {"time": "t", "speed": "speed_kmh", "steering": "wheel_deg"}
    assert meta["scales"]["steering"] == pytest.approx(1 / 540)
    assert m["num_episodes"] == 1


def test_steering_within_tolerance_is_clipped(tmp_path):
    video = write_video(tmp_path / "v.avi", coded_frames(20), 25.0)
    log = write_csv(tmp_path / "l.csv", ["time_s", "speed_mps", "steering"],
                    [[0, 5, 1.01], [1, 5, -1.01]])
    import_drive(video, log, tmp_path / "ds", frame_size=8, progress=False)
    st = episode(tmp_path / "ds")["steering"]
    assert st.max() <= 1.0 and st.min() >= -1.0 and st[0] == 1.0


def test_appends_and_refuses_other_datasets(synth, tmp_path):
    video, log, out = synth
    import_drive(video, log, out, frame_size=16, progress=False)
    # the same drive again (even into the other split) is refused; allow_duplicate imports it anyway
    with pytest.raises(DriveImportError, match="already holds this drive as episodes/ep_000000.npz"):
        import_drive(video, log, out, frame_size=16, split="val", progress=False)
    m = import_drive(video, log, out, frame_size=16, split="val", allow_duplicate=True, progress=False)
    assert [e["file"] for e in m["episodes"]] == ["episodes/ep_000000.npz", "episodes/ep_000001.npz"]
    assert [e["split"] for e in m["episodes"]] == ["train", "val"]
    assert m["num_steps"] == 48

    with pytest.raises(DriveImportError, match="frame_size"):
        import_drive(video, log, out, frame_size=32, progress=False)

    other = tmp_path / "collected"
    (other / fmt.EPISODES).mkdir(parents=True)
    fmt.write_manifest(other, fmt.new_manifest({"source": "carracing", "fps": 12.5, "frame_size": 64}))
    with pytest.raises(DriveImportError, match="'carracing' dataset"):
        import_drive(video, log, other, progress=False)
    assert not list((other / fmt.EPISODES).iterdir())


def test_same_drive_twice_is_refused(synth, tmp_path, monkeypatch, capsys):
    video, log, out = synth
    m = import_drive(video, log, out, frame_size=16, progress=False)
    digest = m["episodes"][0]["meta"]["input_sha256"]
    assert len(digest) == 64
    before = (out / fmt.MANIFEST).read_bytes()

    import gaia_gym.data.importer as importer

    real_sample = importer.sample_video

    def no_decode(*a, **k):
        raise AssertionError("a duplicate must be refused before the video is decoded")

    monkeypatch.setattr(importer, "sample_video", no_decode)
    for split in ("train", "val"):  # the same drive in the other split would leak it into validation
        with pytest.raises(DriveImportError) as ei:
            import_drive(video, log, out, frame_size=16, split=split, progress=False)
        msg = str(ei.value)
        assert "\n" not in msg and str(out) in msg and "episodes/ep_000000.npz" in msg and "allow_duplicate" in msg
    # a copy of the same files under other names is the same drive
    (tmp_path / "copy").mkdir()
    v2, l2 = tmp_path / "copy" / "v.avi", tmp_path / "copy" / "l.csv"
    v2.write_bytes(video.read_bytes())
    l2.write_bytes(log.read_bytes())
    with pytest.raises(DriveImportError, match="already holds this drive"):
        import_drive(v2, l2, out, frame_size=16, progress=False)
    assert (out / fmt.MANIFEST).read_bytes() == before
    assert main(["import", str(video), "--log", str(log), "--out", str(out), "--frame-size", "16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gaia-gym: error:") and "\n" not in err and "ep_000000.npz" in err

    monkeypatch.setattr(importer, "sample_video", real_sample)
    # other options or another log make another episode
    m = import_drive(video, log, out, frame_size=16, trim_start_s=0.1, progress=False)
    assert m["num_episodes"] == 2
    l2.write_text(log.read_text() + "\n")  # same rows, one more (skipped) blank line: other bytes
    m = import_drive(video, l2, out, frame_size=16, progress=False)
    assert m["num_episodes"] == 3
    # and the explicit flag imports a duplicate anyway
    m = import_drive(video, log, out, frame_size=16, allow_duplicate=True, progress=False)
    assert m["num_episodes"] == 4
    assert m["episodes"][3]["meta"]["input_sha256"] == digest


# ----------------------------------------------------------------------------------------------
# errors: one clear line each
# ----------------------------------------------------------------------------------------------
def test_error_missing_column(synth, tmp_path):
    video, _, out = synth
    log = write_csv(tmp_path / "l.csv", ["time_s", "velocity", "steering"], [[0, 1, 0], [2, 1, 0]])
    with pytest.raises(DriveImportError, match=r"no column 'speed_mps' \(columns present: 'time_s', 'velocity', 'steering'\)"):
        import_drive(video, log, out, progress=False)


def test_error_missing_or_unreadable_video(synth, tmp_path):
    _, log, out = synth
    with pytest.raises(DriveImportError, match="video .*nope.mp4 does not exist"):
        import_drive(tmp_path / "nope.mp4", log, out, progress=False)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DriveImportError, match="(cannot open video|no readable frames)"):
        import_drive(junk, log, out, progress=False)
    assert not (out / fmt.MANIFEST).exists()


def test_error_empty_log(synth, tmp_path):
    video, _, out = synth
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DriveImportError, match="empty"):
        import_drive(video, tmp_path / "empty.csv", out, progress=False)
    (tmp_path / "header.csv").write_text("time_s,speed_mps,steering\n\n")
    with pytest.raises(DriveImportError, match="empty .*no data rows"):
        import_drive(video, tmp_path / "header.csv", out, progress=False)
    with pytest.raises(DriveImportError, match="log .*missing.csv does not exist"):
        import_drive(video, tmp_path / "missing.csv", out, progress=False)


def test_error_non_numeric_value(synth, tmp_path):
    video, _, out = synth
    log = write_csv(tmp_path / "l.csv", ["time_s", "speed_mps", "steering"],
                    [[0, 1, 0], [1, "fast", 0], [2, 1, 0]])
    with pytest.raises(DriveImportError, match=r"row 2 \(line 3\): column 'speed_mps' value 'fast' is not a finite number"):
        import_drive(video, log, out, progress=False)
    log = write_csv(tmp_path / "l2.csv", ["time_s", "speed_mps", "steering"], [[0, 1, 0], [1, 1, ""]])
    with pytest.raises(DriveImportError, match=r"row 2 .*'steering' value ''"):
        import_drive(video, log, out, progress=False)


def test_error_non_monotonic_time(synth, tmp_path):
    video, _, out = synth
    log = write_csv(tmp_path / "l.csv", ["time_s", "speed_mps", "steering"],
                    [[0, 1, 0], [1, 1, 0], [0.5, 1, 0], [2, 1, 0]])
    with pytest.raises(DriveImportError, match=r"row 3 \(line 4\): time column 'time_s' is not strictly increasing"):
        import_drive(video, log, out, progress=False)


def test_error_log_does_not_cover_video(synth, tmp_path):
    video, _, out = synth
    log = write_csv(tmp_path / "l.csv", ["time_s", "speed_mps", "steering"], [[0.5, 1, 0], [1.0, 1, 0]])
    with pytest.raises(DriveImportError, match=r"covers 0\.500-1\.000 s but the video samples span 0\.000-1\.920 s"):
        import_drive(video, log, out, progress=False)


def test_error_too_few_output_frames(synth, tmp_path):
    video, log, out = synth
    with pytest.raises(DriveImportError, match=r"gives 1 output frame\(s\), need at least 2"):
        import_drive(video, log, out, trim_start_s=1.9, progress=False)
    one = write_video(tmp_path / "one.avi", coded_frames(1), 30.0)
    with pytest.raises(DriveImportError, match=r"gives 1 output frame\(s\), need at least 2"):
        import_drive(one, log, out, progress=False)
    assert not (out / fmt.MANIFEST).exists()


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------
def test_cli_import(synth, capsys):
    video, log, out = synth
    assert main(["import", str(video), "--log", str(log), "--out", str(out), "--frame-size", "16", "--quiet"]) == 0
    assert "imported 24 steps" in capsys.readouterr().out
    m = json.loads((out / fmt.MANIFEST).read_text())
    assert m["source"] == "import" and m["num_episodes"] == 1
    assert main(["import", str(video), "--log", str(log), "--out", str(out), "--speed-col", "v", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gaia-gym: error:") and "no column 'v'" in err and "\n" not in err


def test_error_unknown_video_fps(synth, monkeypatch):
    video, log, out = synth
    real = cv2.VideoCapture

    class NoFps:
        def __init__(self, path):
            self.cap = real(path)

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr("gaia_gym.data.importer.cv2.VideoCapture", NoFps)
    with pytest.raises(DriveImportError, match=r"does not declare its frame rate; pass video_fps \(--video-fps\)"):
        import_drive(video, log, out, progress=False)
    m = import_drive(video, log, out, video_fps=30.0, frame_size=16, progress=False)
    assert m["num_steps"] == 24
