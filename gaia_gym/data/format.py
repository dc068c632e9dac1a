"""The dataset format: one place that reads and writes it.

A dataset is a directory::

    DIR/
      manifest.json          # index of complete episodes + dataset-level facts (source, fps, frame size)
      episodes/
        ep_000000.npz        # one episode per shard, written atomically (tmp file + rename)
        ep_000001.npz
        ...

Each shard is an ``.npz`` holding one episode of T agent steps (step t = observation t, the action taken
from it, and what that action led to)::

    frames            (T, S, S, 3) uint8   observation at step t (dataset frame convention)
    last_frame        (S, S, 3)    uint8   observation after the final step
    steering          (T,)  float32        steering command in [-1, 1] (-1 = full left), held for step t
    speed_mps         (T,)  float32        measured ego speed at frame t, m/s
    target_speed_mps  (T,)  float32        commanded speed for step t, m/s (imported drives: the speed
                                           measured at the next frame, i.e. the speed the driver chose)
    raw_action        (T, A) float32       the simulator's own action (CarRacing: [steer, gas, brake] mean
                                           over the skipped frames; highway-env: [accel, steer])
    reward            (T,)  float32        summed over the step's simulator frames
    terminated        (T,)  bool           true MDP end after step t (off the playfield, crash, lap done)
    truncated         (T,)  bool           time limit / end of log after step t
    meta              ()    str            JSON: source, seed, split, scenario, fps, ...

plus source-specific optional arrays (e.g. ``behaviour``, ``others``). The manifest is a cache of the
shards' ``meta``: shards are the truth, so a manifest can always be rebuilt (`rebuild_manifest`).
A shard that fails to open, misses a field or has inconsistent lengths raises `CorruptShardError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gaia_gym.errors import CorruptShardError, DatasetError
from gaia_gym.fileio import TMP_SUFFIX, atomic_write_bytes, atomic_write_json, clean_temp_files

FORMAT_NAME = "gaia_gym.dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EPISODES = "episodes"

REQUIRED_FIELDS = (
    "frames",
    "last_frame",
    "steering",
    "speed_mps",
    "target_speed_mps",
    "raw_action",
    "reward",
    "terminated",
    "truncated",
)
PER_STEP_FIELDS = tuple(f for f in REQUIRED_FIELDS if f != "last_frame")
FIELD_DTYPES = {
    "frames": np.uint8,
    "last_frame": np.uint8,
    "steering": np.float32,
    "speed_mps": np.float32,
    "target_speed_mps": np.float32,
    "raw_action": np.float32,
    "reward": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
}


# atomic writes live in gaia_gym.fileio; the dataset errors in gaia_gym.errors


# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------
def episode_filename(index: int) -> str:
    return f"ep_{index:06d}.npz"


def validate_episode(arrays: dict[str, np.ndarray], where: str = "episode") -> int:
    """Check required fields, dtypes and lengths; returns T. Raises ValueError naming the problem."""
    missing = [f for f in REQUIRED_FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    frames = arrays["frames"]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{where}: frames must be uint8 (T, S, S, 3), got {frames.dtype} {frames.shape}")
    T = frames.shape[0]
    if T < 1:
        raise ValueError(f"{where}: empty episode")
    for f in PER_STEP_FIELDS:
        if len(arrays[f]) != T:
            raise ValueError(f"{where}: field {f} has {len(arrays[f])} steps, frames have {T}")
    if arrays["last_frame"].shape != frames.shape[1:]:
        raise ValueError(f"{where}: last_frame shape {arrays['last_frame'].shape} != frame {frames.shape[1:]}")
    return T


def write_episode(path: Path, arrays: dict[str, np.ndarray], meta: dict, compress: bool = True) -> dict:
    """Validate and atomically write one episode shard. Returns its manifest entry."""
    path = Path(path)
    arrays = {k: np.asarray(v, dtype=FIELD_DTYPES.get(k)) if k in FIELD_DTYPES else np.asarray(v)
              for k, v in arrays.items()}
    T = validate_episode(arrays, where=str(path))
    meta = dict(meta, steps=T)
    payload = dict(arrays, meta=np.array(json.dumps(meta)))
    saver = np.savez_compressed if compress else np.savez
    atomic_write_bytes(path, lambda f: saver(f, **payload))
    return manifest_entry(path, meta, arrays)


def manifest_entry(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> dict:
    return {
        "file": f"{EPISODES}/{Path(path).name}",
        "steps": int(meta["steps"]),
        "split": meta.get("split", "train"),
        "seed": meta.get("seed"),
        "return": float(np.sum(arrays["reward"])),
        "terminated": bool(arrays["terminated"].any()),
        "bytes": Path(path).stat().st_size,
        "meta": meta,
    }


def load_episode(path: Path, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """Read a shard (all fields, or only `fields`) plus its `meta` dict.

    Raises CorruptShardError naming the file when it is truncated, corrupt or incomplete.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptShardError(f"shard {path} is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            want = list(fields) if fields is not None else [n for n in z.files if n != "meta"]
            lacking = [f for f in ["meta", *want] if f not in names]
            if lacking:
                raise CorruptShardError(f"shard {path} lacks field(s) {', '.join(lacking)}")
            out: dict[str, Any] = {f: z[f] for f in want}
            out["meta"] = json.loads(str(z["meta"]))
    except CorruptShardError:
        raise
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, EOFError, OSError, KeyError) as e:
        raise CorruptShardError(f"corrupt or truncated shard {path}: {type(e).__name__}: {e}") from None
    T = out["meta"].get("steps")
    for f in want:
        if f in PER_STEP_FIELDS and len(out[f]) != T:
            raise CorruptShardError(f"shard {path}: field {f} has {len(out[f])} steps, meta says {T}")
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------
def new_manifest(info: dict) -> dict:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **info, "episodes": []}


def read_manifest(directory: Path) -> dict:
    """Read DIR/manifest.json with clear errors for a missing or foreign directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"dataset directory {directory} does not exist")
    path = directory / MANIFEST
    if not path.exists():
        raise DatasetError(f"{directory} is not a gaia_gym dataset (no {MANIFEST})")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"corrupt manifest {path}: {e}") from None
    if m.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a gaia_gym dataset manifest (format={m.get('format')!r})")
    if m.get("version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {m['version']}, this gaia_gym reads <= {FORMAT_VERSION}")
    return m


def write_manifest(directory: Path, manifest: dict) -> None:
    """Sort, recount and atomically write `manifest` (updated in place) to DIR/manifest.json."""
    manifest["episodes"] = sorted(manifest["episodes"], key=lambda e: e["file"])
    manifest["num_episodes"] = len(manifest["episodes"])
    manifest["num_steps"] = int(sum(e["steps"] for e in manifest["episodes"]))
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def open_for_writing(directory: Path, info: dict, match: tuple[str, ...] = ("source",),
                     error: type[Exception] = DatasetError) -> dict:
    """Create DIR, or reopen it to add episodes; returns its manifest (not yet written).

    Removes leftovers of interrupted writes, refuses a dataset whose `match` keys differ from `info`
    (raising `error`), and indexes any complete shard the manifest missed (a job killed between writing
    a shard and updating the manifest loses nothing).
    """
    directory = Path(directory)
    (directory / EPISODES).mkdir(parents=True, exist_ok=True)
    clean_temp_files(directory / EPISODES)
    clean_temp_files(directory)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        for key in match:
            if key in manifest and manifest[key] != info.get(key):
                what = (f"a {manifest[key]!r} dataset" if key == "source"
                        else f"data with {key}={manifest[key]!r}, not {info.get(key)!r}")
                raise error(f"{directory} already holds {what}; refusing to add these episodes "
                            f"(write into another directory)")
        manifest.update(info)
    else:
        manifest = new_manifest(info)
    listed = {e["file"] for e in manifest["episodes"]}
    for p in sorted((directory / EPISODES).glob("ep_*.npz")):
        if f"{EPISODES}/{p.name}" not in listed:
            ep = load_episode(p, fields=["reward", "terminated"])
            manifest["episodes"].append(manifest_entry(p, ep["meta"], ep))
    return manifest


def rebuild_manifest(directory: Path, info: dict | None = None) -> dict:
    """Re-index every complete shard under DIR/episodes (shards are the truth)."""
    directory = Path(directory)
    old = read_manifest(directory) if (directory / MANIFEST).exists() else new_manifest(info or {})
    entries = []
    for p in sorted((directory / EPISODES).glob("ep_*.npz")):
        ep = load_episode(p, fields=["reward", "terminated"])
        entries.append(manifest_entry(p, ep["meta"], ep))
    m = dict(old, **(info or {}))
    m["episodes"] = entries
    write_manifest(directory, m)
    return m
