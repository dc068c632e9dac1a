"""Atomic file writes and JSON merging: the one place that writes files other jobs may be reading.

A reader (or a resumed job) sees either the old file or the complete new one, never a partial one:
`atomic_write_bytes` writes a temp file beside the target, fsyncs it and renames it over the target.
`atomic_replace_dir` does the same for a whole directory (a checkpoint: weights + config together).
`merge_json` puts a record under a (dotted) key of a JSON object file, keeping the other keys.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | Path, write_fn: Callable) -> None:
    """Write through `write_fn(fileobj)` into a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON at `path`, atomically (the parent directory must exist)."""
    data = json.dumps(obj, indent=1, sort_keys=False).encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def write_json(path: str | Path, obj: Any) -> Path:
    """`atomic_write_json`, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)
    return path


def clean_temp_files(directory: str | Path) -> int:
    """Remove leftovers of interrupted atomic writes in `directory`; returns how many were removed."""
    n = 0
    for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def atomic_replace_dir(target: str | Path, fill: Callable[[Path], Any]) -> Any:
    """Build a directory with `fill(tmp_dir)` beside `target`, then swap it in as `target`.

    At every instant `target` is either the previous complete directory or the new complete one: the
    old one is first renamed aside (`.NAME.old`), the new one renamed in, then the old one removed. A
    kill between the two renames leaves no `target` but a complete `.NAME.old`, which
    `recover_dir(target)` (called by every reader) renames back. Returns what `fill` returned."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    old = target.with_name(f".{target.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        out = fill(tmp)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out


def recover_dir(target: str | Path) -> bool:
    """Undo a directory swap interrupted between its two renames (see `atomic_replace_dir`): if `target`
    is missing and its `.NAME.old` exists, rename it back. Returns whether anything was recovered."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)
        return True
    return False


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON at `path` (`default` when the file does not exist); a corrupt file raises ValueError
    naming it."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def merge_json(path: str | Path, key: str, record: dict, update: bool = False) -> Path:
    """Put `record` under `key` in the JSON object at `path` (other keys kept), atomically.

    A dotted key ("baselines.random") nests; the key "." merges `record`'s fields into the top level.
    With `update`, `record`'s fields are merged into what `key` already holds instead of replacing it
    (so the fields' own names may contain dots: policy paths)."""
    path = Path(path)
    old = read_json(path, {})
    if not isinstance(old, dict):
        raise ValueError(f"{path}: holds a JSON {type(old).__name__}, not an object; cannot merge into it")
    if key == ".":
        old.update(record)
    else:
        *parents, last = key.split(".")
        node = old
        for k in parents:
            node = node.setdefault(k, {})
        if update:
            node.setdefault(last, {}).update(record)
        else:
            node[last] = record
    return write_json(path, old)


__all__ = ["TMP_SUFFIX", "atomic_replace_dir", "atomic_write_bytes", "atomic_write_json", "clean_temp_files",
           "merge_json", "read_json", "recover_dir", "write_json"]
