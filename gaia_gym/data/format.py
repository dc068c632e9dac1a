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

plus source-specific optional arrays (e.g. ``behaviour``; ``expert_steering`` and ``expert_speed_mps``,
the clean scripted driver's action at every step, noisy segments included (CarRacing's expert; highway-env's
cruise controller); highway's ``others``; a camera rig's ``views`` (T, V, S, S, 3)
and ``last_views`` (V, S, S, 3), with views[:, 0] == frames and the rig's poses under the manifest's
``cameras``: `gaia_gym.sims.rig`). The manifest is a cache of the
shards' ``meta``: shards are the truth, so a manifest can always be rebuilt (`rebuild_manifest`).
A shard that fails to open, misses a field or has inconsistent lengths raises `CorruptShardError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gaia_gym.errors import ConfigError, CorruptShardError, DatasetError
from gaia_gym.fileio import atomic_write_bytes, atomic_write_json, clean_temp_files

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
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    frames = arrays["frames"]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"{where}: frames must be uint8 (T, S, S, 3), got {frames.dtype} {frames.shape}")
    T = frames.shape[0]
    if T < 1:
        raise ConfigError(f"{where}: empty episode")
    for f in PER_STEP_FIELDS:
        if len(arrays[f]) != T:
            raise ConfigError(f"{where}: field {f} has {len(arrays[f])} steps, frames have {T}")
    if arrays["last_frame"].shape != frames.shape[1:]:
        raise ConfigError(f"{where}: last_frame shape {arrays['last_frame'].shape} != frame {frames.shape[1:]}")
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


_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _kind(x: Any) -> str:
    """The JSON name of a parsed value's type."""
    return "null" if x is None else _JSON_KINDS.get(type(x), type(x).__name__)


def _show(x: Any, limit: int = 60) -> str:
    """A short one-line repr of a (JSON) value for an error message."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_episode_file(name: Any) -> str | None:
    """Why an episode entry's ``file`` is unusable (None when it is fine).

    It must be a relative POSIX path inside the dataset directory: no absolute path, drive, backslash,
    ``..`` or empty part, so a manifest can never make a reader open a file outside the dataset.
    """
    if not isinstance(name, str) or not name:
        return f"'file' must be a non-empty string, got {_kind(name)} {_show(name)}"
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\x00" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        return f"'file' {_show(name)} is not a plain relative path inside the dataset directory; refusing to follow it"
    return None


def _check_entry(i: int, e: Any) -> str | None:
    """What is wrong with manifest episode entry `i` (None when it is well formed)."""
    if not isinstance(e, dict):
        return f"episode entry {i} is a JSON {_kind(e)}, not an object"
    what = f"episode entry {i}"
    if "file" not in e:
        return f"{what} has no 'file'"
    bad = check_episode_file(e["file"])
    if bad:
        return f"{what}: {bad}"
    what = f"episode entry {i} ({e['file']})"
    if "steps" not in e:
        return f"{what} has no 'steps'"
    if not _is_int(e["steps"]) or e["steps"] < 1:
        return f"{what}: 'steps' must be a positive integer, got {_kind(e['steps'])} {_show(e['steps'])}"
    if "split" in e and not isinstance(e["split"], str):
        return f"{what}: 'split' must be a string, got {_kind(e['split'])} {_show(e['split'])}"
    if "meta" in e and not isinstance(e["meta"], dict):
        return f"{what}: 'meta' must be an object, got {_kind(e['meta'])}"
    if "bytes" in e and not (_is_int(e["bytes"]) and e["bytes"] >= 0):
        return f"{what}: 'bytes' must be a non-negative integer, got {_kind(e['bytes'])} {_show(e['bytes'])}"
    if "return" in e and not _is_number(e["return"]):
        return f"{what}: 'return' must be a number, got {_kind(e['return'])} {_show(e['return'])}"
    if "terminated" in e and not isinstance(e["terminated"], bool):
        return f"{what}: 'terminated' must be true or false, got {_kind(e['terminated'])} {_show(e['terminated'])}"
    return None


def _check_header(m: dict) -> str | None:
    """What is wrong with the dataset-level fields readers use (None when they are well formed)."""
    if "version" in m and not _is_int(m["version"]):
        return f"'version' must be an integer, got {_kind(m['version'])} {_show(m['version'])}"
    for key in ("num_episodes", "num_steps"):
        if key in m and not (_is_int(m[key]) and m[key] >= 0):
            return f"{key!r} must be a non-negative integer, got {_kind(m[key])} {_show(m[key])}"
    if m.get("fps") is not None and not (_is_number(m["fps"]) and m["fps"] > 0):
        return f"'fps' must be a positive number or null, got {_kind(m['fps'])} {_show(m['fps'])}"
    fs = m.get("frame_size")
    if fs is not None and not ((_is_int(fs) and fs > 0) or (isinstance(fs, list) and len(fs) == 2
                                                            and all(_is_int(v) and v > 0 for v in fs))):
        return f"'frame_size' must be a positive integer (or [height, width]), got {_kind(fs)} {_show(fs)}"
    return None


def read_manifest(directory: Path, episodes: bool = True) -> dict:
    """Read DIR/manifest.json with clear errors for a missing or foreign directory.

    The one place a manifest is checked, so every reader (training loader, stats, verify, collectors)
    gets the same one-line `DatasetError` naming the file and what is wrong: valid JSON of the wrong
    structure, missing or mistyped fields, an episode ``file`` that leaves the dataset directory, an
    episode listed twice. With ``episodes=False`` only the header is checked (for `rebuild_manifest`,
    which replaces the episode list anyway).
    """
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
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"cannot read manifest {path}: {type(e).__name__}: {e}") from None
    if not isinstance(m, dict):
        raise DatasetError(f"manifest {path} holds a JSON {_kind(m)}, not an object; not a gaia_gym dataset manifest")
    if m.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a gaia_gym dataset manifest (format={_show(m.get('format'))})")
    bad = _check_header(m)
    if bad:
        raise DatasetError(f"manifest {path}: {bad}")
    if m.get("version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {m['version']}, this gaia_gym reads <= {FORMAT_VERSION}")
    if not episodes:
        return m
    if "episodes" not in m:
        raise DatasetError(f"manifest {path} has no 'episodes' list")
    if not isinstance(m["episodes"], list):
        raise DatasetError(f"manifest {path}: 'episodes' must be a list, got {_kind(m['episodes'])} "
                           f"{_show(m['episodes'])}")
    seen: set[str] = set()
    for i, e in enumerate(m["episodes"]):
        bad = _check_entry(i, e)
        if bad:
            raise DatasetError(f"manifest {path}: {bad}")
        if e["file"] in seen:
            raise DatasetError(f"manifest {path}: episode {e['file']} is listed twice")
        seen.add(e["file"])
    return m


def write_manifest(directory: Path, manifest: dict) -> None:
    """Sort, recount and atomically write `manifest` (updated in place) to DIR/manifest.json."""
    manifest["episodes"] = sorted(manifest["episodes"], key=lambda e: e["file"])
    manifest["num_episodes"] = len(manifest["episodes"])
    manifest["num_steps"] = int(sum(e["steps"] for e in manifest["episodes"]))
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def spec_differences(old: dict, new: dict, keys: Iterable[str] | None = None,
                     free: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """The fields of `new` whose values differ from those in `old`: [(dotted name, old, new)].

    Compares the top-level `keys` of `new` (default: all of them), recursing into objects (a
    ``config`` dict gives ``config.frame_skip``...), after a JSON round trip (so a tuple equals the
    list a manifest holds). Dotted names in `free` may differ. A field `old` lacks is not a difference
    (a dataset written before the field existed).
    """
    new = json.loads(json.dumps({k: new[k] for k in (new if keys is None else keys) if k in new}))
    free = set(free)
    out: list[tuple[str, Any, Any]] = []

    def walk(prefix: str, o: dict, n: dict) -> None:
        for k, nv in n.items():
            name = f"{prefix}{k}"
            if name in free or k not in o:
                continue
            ov = o[k]
            if isinstance(ov, dict) and isinstance(nv, dict):
                walk(f"{name}.", ov, nv)
            elif ov != nv:
                out.append((name, ov, nv))

    walk("", old, new)
    return out


def open_for_writing(directory: Path, info: dict, match: tuple[str, ...] | None = None,
                     error: type[Exception] = DatasetError, free: Iterable[str] = ()) -> dict:
    """Create DIR, or reopen it to add episodes; returns its manifest (not yet written).

    Removes leftovers of interrupted writes, refuses a dataset whose header differs from `info` in
    any `match` key (default: every key of `info`, recursing into dicts such as ``config``; dotted
    names in `free` may differ, e.g. ``config.episodes``), raising `error` with one line naming the
    directory and the differing fields, and indexes any complete shard the manifest missed (a job
    killed between writing a shard and updating the manifest loses nothing). The header is updated
    from `info` only when nothing but `free` fields differ.
    """
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        diffs = spec_differences(manifest, info, keys=match, free=free)
        if diffs:
            src = [d for d in diffs if d[0] == "source"]
            if src:
                raise error(f"{directory} already holds a {_show(src[0][1])} dataset; refusing to add these "
                            f"episodes (write into another directory)")
            what = ", ".join(f"{k}={_show(o, 40)} (this run: {_show(n, 40)})" for k, o, n in diffs)
            raise error(f"{directory} already holds data recorded with other settings: {what}; refusing to "
                        f"add these episodes (rerun with the dataset's settings, or write into another directory)")
        manifest.update(info)
    else:
        manifest = new_manifest(info)
    (directory / EPISODES).mkdir(parents=True, exist_ok=True)
    clean_temp_files(directory / EPISODES)
    clean_temp_files(directory)
    index_unlisted(directory, manifest)
    return manifest


def index_unlisted(directory: Path, manifest: dict) -> int:
    """Append to `manifest` (in place) an entry for every complete shard on disk it does not list;
    returns how many. Shards are renamed into place only once complete, so each one found is whole."""
    directory = Path(directory)
    listed = {e["file"] for e in manifest["episodes"]}
    n = 0
    for p in sorted((directory / EPISODES).glob("ep_*.npz")):
        if f"{EPISODES}/{p.name}" not in listed:
            ep = load_episode(p, fields=["reward", "terminated"])
            manifest["episodes"].append(manifest_entry(p, ep["meta"], ep))
            n += 1
    return n


def rebuild_manifest(directory: Path, info: dict | None = None) -> dict:
    """Re-index every complete shard under DIR/episodes (shards are the truth)."""
    directory = Path(directory)
    old = (read_manifest(directory, episodes=False) if (directory / MANIFEST).exists()
           else new_manifest(info or {}))
    entries = []
    for p in sorted((directory / EPISODES).glob("ep_*.npz")):
        ep = load_episode(p, fields=["reward", "terminated"])
        entries.append(manifest_entry(p, ep["meta"], ep))
    m = dict(old, **(info or {}))
    m["episodes"] = entries
    write_manifest(directory, m)
    return m
