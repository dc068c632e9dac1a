"""`gaia-gym import`: a user's own logged drive (a video plus a CSV log) as one dataset episode.

Inputs
------
- **VIDEO**, any file OpenCV can read. Its frames are taken to be evenly spaced: frame ``j`` is at
  ``j / video_fps`` seconds, with ``video_fps`` the container's frame rate (``CAP_PROP_FPS``) unless
  overridden. Variable-frame-rate videos must be converted to a constant rate first.
- **LOG**, a CSV file with a header row and (at least) a time column, a speed column and a steering
  column (names set by the caller). The time column is in seconds **on the video's clock** (0 = the first
  video frame) and must increase strictly, row by row. ``speed_mps = value * speed_scale`` and
  ``steering = value * steering_scale``. Header names and cells are stripped of surrounding spaces;
  blank lines are skipped.

Resampling
----------
The episode is sampled at the dataset rate ``fps`` (12.5 Hz by default; with ``like="carracing"`` the
CarRacing collector's rate, 50 Hz / frame_skip 4). Output time ``t_k = trim_start_s + k / fps`` is kept
when it lies within the video, i.e. between its first and its last frame's timestamps. For each kept
``t_k``:

- the frame is the video frame **nearest** to ``t_k`` (index ``round(t_k * video_fps)``, halves round up),
  read sequentially; only the sampled frames, already reduced to the dataset frame, are held in memory;
- speed and steering are **linearly interpolated** from the log at ``t_k``.

With ``T + 1`` kept samples the episode has ``T`` steps; sample ``T`` gives ``last_frame`` only.
The log must cover the samples' time span ``[t_0, t_T]`` (up to half a video frame period at either end,
within which the end value is held); anything else is an error that names both spans.

Fields
------
- ``frames[k]``, ``last_frame``: the frame convention of `gaia_gym.data.frames` — ``carracing_frame``
  with ``like="carracing"`` (HUD cropped, exactly as the collector records), else ``resize_square``.
  Video frames are converted from OpenCV's BGR to RGB first.
- ``steering[k]``, ``speed_mps[k]``: the log at ``t_k``, scaled.
- ``target_speed_mps[k]`` = ``speed_mps`` at ``t_{k+1}``: an imported drive has no commanded speed, and the
  speed the driver actually reached at the next step is the speed they chose for this one.
- ``raw_action[k]`` = ``[steering, speed]`` at ``t_k`` in the **log's own units** (before scaling).
- ``reward`` = 0 (unknown; ``meta["reward_known"] = False``), ``terminated`` all False,
  ``truncated[-1]`` = True (the log ends; the drive does not).

Steering range rule: after scaling, every steering value in the log column must lie within
``[-1, 1]`` up to ``STEERING_TOLERANCE`` (0.02). Values within the tolerance are clipped to [-1, 1];
a column outside it is refused with an error naming the column and the range found, because it almost
always means the wrong unit (degrees, radians) or a missing ``--steering-scale``.

Recording CarRacing-v3 yourself: the simulator's first 50 frames (1 s at 50 Hz) are a zoom-in that the
collector never records. A recording that includes them lines up with collected data with
``trim_start_s=1.0``; one that starts after them (like ``CarRacingDrive.reset``) needs no trim.

The episode is appended to ``out_dir`` as the next free ``episodes/ep_{i:06d}.npz`` (one writer at a time).
A new directory becomes a dataset of source ``"import"``; a directory holding another source's data, or
imports with another fps, frame size or frame convention, is refused.

Importing the same drive twice is refused (unless ``allow_duplicate=True``): each episode's meta keeps
``input_sha256``, a hash of the video's bytes, the log's bytes and every option that shapes the episode
(``like``, ``fps``, ``frame_size``, column names, scales, ``video_fps``, ``trim_start_s``; not the split,
since the same drive in train and val would leak validation data into training).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from gaia_gym.data import format as fmt
from gaia_gym.data.frames import carracing_frame, resize_square

SOURCE = "import"
DEFAULT_FPS = 12.5
STEERING_TOLERANCE = 0.02  # |steering| up to 1 + this is clipped to 1; beyond it is an error
LIKE_CHOICES = ("carracing",)
_EPS = 1e-6  # in video frames: absorbs float error in t * video_fps


class DriveImportError(fmt.DatasetError):
    """A logged drive cannot be imported; the message names the problem in one line."""


# ----------------------------------------------------------------------------------------------
# the log
# ----------------------------------------------------------------------------------------------
def read_log(path: Path, columns: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Read the named numeric columns of CSV `path` -> ({name: float64 array}, file line of each data row).

    Raises DriveImportError for a missing file, an empty log, a missing column (listing those present)
    or a value that is not a finite number (naming its data row and file line).
    """
    path = Path(path)
    if not path.is_file():
        raise DriveImportError(f"log {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            while header is not None and not any(c.strip() for c in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                raise DriveImportError(f"log {path} is empty (no header, no rows)")
            header = [c.strip() for c in header]
            missing = [c for c in columns if c not in header]
            if missing:
                present = ", ".join(repr(c) for c in header if c) or "none"
                raise DriveImportError(
                    f"log {path} has no column {', '.join(repr(c) for c in missing)} (columns present: {present})"
                )
            pos = {c: header.index(c) for c in columns}
            values: dict[str, list[float]] = {c: [] for c in columns}
            lines: list[int] = []
            row = 0
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                row += 1
                lines.append(reader.line_num)
                for c in columns:
                    i = pos[c]
                    cell = cells[i].strip() if i < len(cells) else ""
                    try:
                        v = float(cell)
                    except ValueError:
                        v = math.nan
                    if not math.isfinite(v):
                        raise DriveImportError(
                            f"log {path} row {row} (line {reader.line_num}): column {c!r} value {cell!r} "
                            f"is not a finite number"
                        )
                    values[c].append(v)
    except UnicodeDecodeError as e:
        raise DriveImportError(f"log {path} is not a UTF-8 text CSV file ({e.reason})") from None
    if row == 0:
        raise DriveImportError(f"log {path} is empty (a header but no data rows)")
    return {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}, lines


def check_time(path: Path, t: np.ndarray, time_col: str, lines: list[int]) -> None:
    """The time column must increase strictly; the error names the first offending data row."""
    bad = np.flatnonzero(np.diff(t) <= 0)
    if len(bad):
        r = int(bad[0]) + 2  # data rows count from 1; diff index i compares rows i+1 and i+2
        raise DriveImportError(
            f"log {path} row {r} (line {lines[r - 1]}): time column {time_col!r} is not strictly increasing "
            f"({t[r - 2]:g} s at row {r - 1}, then {t[r - 1]:g} s)"
        )


# ----------------------------------------------------------------------------------------------
# the video
# ----------------------------------------------------------------------------------------------
def _nearest_index(t: float, video_fps: float) -> int:
    return int(math.floor(t * video_fps + 0.5 + _EPS))


def sample_video(
    video: Path,
    times_fn,
    frame_fn,
    video_fps: float | None,
    progress: bool,
) -> tuple[list[np.ndarray], float, int]:
    """Read `video` sequentially, keeping `frame_fn(rgb)` of the frame nearest each time `times_fn(k)`.

    Returns (kept frames in order, video fps used, number of frames in the video). Only the frames at or
    before the video's last frame time are kept (the caller trims by time).
    """
    video = Path(video)
    if not video.is_file():
        raise DriveImportError(f"video {video} does not exist")
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise DriveImportError(f"cannot open video {video} with OpenCV (not a video, or an unsupported codec)")
        if video_fps is None:
            vf = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not (math.isfinite(vf) and vf > 0):
                raise DriveImportError(f"video {video} does not declare its frame rate; pass video_fps (--video-fps)")
            video_fps = vf
        elif not (math.isfinite(video_fps) and video_fps > 0):
            raise DriveImportError(f"video_fps must be a positive number, got {video_fps}")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        kept: list[np.ndarray] = []
        k = 0
        want = _nearest_index(times_fn(0), video_fps)
        j = 0
        bar = tqdm(total=total if total > 0 else None, unit="frame", disable=not progress, desc=f"import {video.name}")
        try:
            while cap.grab():
                if want == j:
                    ok, bgr = cap.retrieve()
                    if not ok or bgr is None:
                        raise DriveImportError(f"video {video}: frame {j} cannot be decoded")
                    if bgr.ndim == 2:
                        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                    frame = frame_fn(cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB))
                    while want == j:  # several samples can share a frame when fps > video fps
                        kept.append(frame)
                        k += 1
                        want = _nearest_index(times_fn(k), video_fps)
                j += 1
                bar.update(1)
        finally:
            bar.close()
    finally:
        cap.release()
    if j == 0:
        raise DriveImportError(f"video {video} has no readable frames")
    return kept, float(video_fps), j


# ----------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------
def _next_index(out_dir: Path, manifest: dict) -> int:
    used = [-1]
    names = [Path(e["file"]).name for e in manifest["episodes"]]
    names += [p.name for p in (out_dir / fmt.EPISODES).glob("ep_*.npz")]
    for n in names:
        stem = n[len("ep_"):-len(".npz")]
        if stem.isdigit():
            used.append(int(stem))
    return max(used) + 1


def input_sha256(video: Path, log: Path, options: dict) -> str:
    """Hash of what determines an imported episode: the video's and the log's bytes and the options."""
    h = hashlib.sha256(b"gaia_gym.import/1\0")
    for path in (video, log):
        h.update(fmt.file_sha256(path).encode() + b"\0")
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


def _refuse_duplicate(out_dir: Path, manifest: dict, digest: str) -> None:
    for e in manifest["episodes"]:
        if e.get("meta", {}).get("input_sha256") == digest:
            raise DriveImportError(
                f"{out_dir} already holds this drive as {e['file']} (same video, log and import options; "
                f"input sha256 {digest[:12]}); refusing to add it twice (allow_duplicate=True, "
                f"--allow-duplicate, imports it again)"
            )


# ----------------------------------------------------------------------------------------------
# the import
# ----------------------------------------------------------------------------------------------
def import_drive(
    video,
    log,
    out_dir,
    *,
    like: str | None = None,
    fps: float | None = None,
    frame_size: int = 64,
    time_col: str = "time_s",
    speed_col: str = "speed_mps",
    steering_col: str = "steering",
    speed_scale: float = 1.0,
    steering_scale: float = 1.0,
    video_fps: float | None = None,
    trim_start_s: float = 0.0,
    split: str = "train",
    allow_duplicate: bool = False,
    progress: bool = True,
    return_col: str | None = None,
) -> dict:
    """Import one logged drive (VIDEO + CSV LOG) as the next episode of the dataset at `out_dir`.

    See the module docstring for the resampling rules and the meaning of every field. A drive already
    in the dataset (same video, log and options, whatever the split) is refused unless
    `allow_duplicate`. `return_col`: a log column holding the return accumulated so far (a simulator's
    drive); each step's reward is then its increase over the step, and `meta["reward_known"]` is True.
    Returns the dataset manifest after appending; raises DriveImportError (a DatasetError) with a
    one-line message for any input it cannot use.
    """
    video, log, out_dir = Path(video), Path(log), Path(out_dir)

    # --- arguments --------------------------------------------------------------------------
    if like is not None and like not in LIKE_CHOICES:
        raise DriveImportError(f"like must be one of {', '.join(LIKE_CHOICES)} or None, got {like!r}")
    if like == "carracing":
        from gaia_gym.config import CarRacingCollectConfig
        from gaia_gym.data.frames import SIM_FPS

        default_fps = SIM_FPS / CarRacingCollectConfig().frame_skip
        frame_fn = lambda rgb: carracing_frame(rgb, frame_size)  # noqa: E731
    else:
        default_fps = DEFAULT_FPS
        frame_fn = lambda rgb: resize_square(rgb, frame_size)  # noqa: E731
    fps = float(default_fps if fps is None else fps)
    if not (math.isfinite(fps) and fps > 0):
        raise DriveImportError(f"fps must be a positive number, got {fps}")
    if int(frame_size) != frame_size or frame_size < 1:
        raise DriveImportError(f"frame_size must be a positive integer, got {frame_size}")
    frame_size = int(frame_size)
    for name, v in (("speed_scale", speed_scale), ("steering_scale", steering_scale)):
        if not (math.isfinite(v) and v != 0):
            raise DriveImportError(f"{name} must be a finite non-zero number, got {v}")
    if not (math.isfinite(trim_start_s) and trim_start_s >= 0):
        raise DriveImportError(f"trim_start_s must be >= 0 seconds, got {trim_start_s}")
    if split not in ("train", "val"):
        raise DriveImportError(f"split must be 'train' or 'val', got {split!r}")

    # --- the log (fast checks before the video is decoded) ----------------------------------
    cols = list(dict.fromkeys([time_col, speed_col, steering_col] + ([return_col] if return_col else [])))
    data, lines = read_log(log, cols)
    t_log = data[time_col]
    check_time(log, t_log, time_col, lines)
    speed_raw, steer_raw = data[speed_col], data[steering_col]
    steer_all = steer_raw * steering_scale
    lo, hi = float(steer_all.min()), float(steer_all.max())
    if lo < -1 - STEERING_TOLERANCE or hi > 1 + STEERING_TOLERANCE:
        raise DriveImportError(
            f"log {log}: steering column {steering_col!r} scaled by {steering_scale:g} spans [{lo:g}, {hi:g}], outside "
            f"[-1, 1]; set the steering scale (e.g. --steering-scale {1 / 540:.6g} for degrees of a 540-degree wheel)"
        )

    # --- the same drive already imported? (before the slow video decode) ---------------------
    if not video.is_file():
        raise DriveImportError(f"video {video} does not exist")
    options = {"like": like, "fps": fps, "frame_size": frame_size, "time_col": time_col, "speed_col": speed_col,
               "steering_col": steering_col, "speed_scale": float(speed_scale),
               "steering_scale": float(steering_scale), "video_fps": None if video_fps is None else float(video_fps),
               "trim_start_s": float(trim_start_s), **({"return_col": return_col} if return_col else {})}
    digest = input_sha256(video, log, options)
    if not allow_duplicate and (out_dir / fmt.MANIFEST).exists():
        _refuse_duplicate(out_dir, fmt.read_manifest(out_dir), digest)

    # --- the video --------------------------------------------------------------------------
    times_fn = lambda k: trim_start_s + k / fps  # noqa: E731
    frames, vfps, n_video = sample_video(video, times_fn, frame_fn, video_fps, progress)
    video_end = (n_video - 1) / vfps
    times = np.array([times_fn(k) for k in range(len(frames))], dtype=np.float64)
    inside = times * vfps <= (n_video - 1) + _EPS  # within the first..last frame timestamps
    frames = [f for f, ok in zip(frames, inside) if ok]
    times = times[inside]
    if len(frames) < 2:
        raise DriveImportError(
            f"video {video} spans 0-{video_end:.3f} s ({n_video} frames at {vfps:g} fps); from "
            f"trim start {trim_start_s:g} s at {fps:g} fps that gives {len(frames)} output frame(s), need at least 2"
        )
    tol = 0.5 / vfps
    if times[0] < t_log[0] - tol or times[-1] > t_log[-1] + tol:
        raise DriveImportError(
            f"log {log} covers {t_log[0]:.3f}-{t_log[-1]:.3f} s but the video samples span "
            f"{times[0]:.3f}-{times[-1]:.3f} s (video 0-{video_end:.3f} s); the log must cover them "
            f"(times are seconds on the video's clock; see trim_start_s)"
        )

    # --- the episode ------------------------------------------------------------------------
    T = len(frames) - 1
    speed_raw_t = np.interp(times, t_log, speed_raw)
    steer_raw_t = np.interp(times, t_log, steer_raw)
    speed = speed_raw_t * speed_scale
    steering = np.clip(steer_raw_t * steering_scale, -1.0, 1.0)
    truncated = np.zeros(T, dtype=bool)
    truncated[-1] = True
    arrays = {
        "frames": np.stack(frames[:T]),
        "last_frame": frames[T],
        "steering": steering[:T],
        "speed_mps": speed[:T],
        "target_speed_mps": speed[1:],
        "raw_action": np.stack([steer_raw_t[:T], speed_raw_t[:T]], axis=1),
        "reward": np.diff(np.interp(times, t_log, data[return_col])) if return_col else np.zeros(T),
        "terminated": np.zeros(T, dtype=bool),
        "truncated": truncated,
    }

    info = {"source": SOURCE, "fps": fps, "frame_size": frame_size, "like": like}
    manifest = fmt.open_for_writing(out_dir, info, match=("source", "fps", "frame_size", "like"),
                                    error=DriveImportError)
    if not allow_duplicate:
        _refuse_duplicate(out_dir, manifest, digest)
    index = _next_index(out_dir, manifest)
    meta = {
        "source": SOURCE,
        "index": index,
        "seed": None,
        "split": split,
        "video": video.name,
        "log": log.name,
        "like": like,
        "fps": fps,
        "frame_size": frame_size,
        "video_fps": vfps,
        "video_frames": n_video,
        "trim_start_s": float(trim_start_s),
        "start_s": float(times[0]),
        "columns": {"time": time_col, "speed": speed_col, "steering": steering_col,
                    **({"return": return_col} if return_col else {})},
        "scales": {"speed": float(speed_scale), "steering": float(steering_scale)},
        "raw_action_fields": [f"{steering_col} (unscaled)", f"{speed_col} (unscaled)"],
        "reward_known": bool(return_col),
        "input_sha256": digest,
    }
    path = out_dir / fmt.EPISODES / fmt.episode_filename(index)
    entry = fmt.write_episode(path, arrays, meta)
    manifest["episodes"].append(entry)
    fmt.write_manifest(out_dir, manifest)
    return fmt.read_manifest(out_dir)


__all__ = ["DriveImportError", "import_drive", "input_sha256", "read_log", "STEERING_TOLERANCE", "DEFAULT_FPS"]
