"""Atomic file writes and JSON merging: the one place that writes files other jobs may be reading.

A reader (or a resumed job) sees either the old file or the complete new one, never a partial one:
`atomic_write_bytes` writes a temp file beside the target, fsyncs it and renames it over the target.
`atomic_replace_dir` does the same for a whole directory (swapped in by renames; `recover_dir` undoes a
swap interrupted between them). `atomic_write_files` does it for a *set* of files that live beside
other things in one directory (a checkpoint: weights + config + training state, next to tb/ and
sources.json), as a journaled transaction::

    DIR/.pending.PID.tmp/   # 1. every new file written + fsynced here (a kill: garbage, the old set stands)
    DIR/.pending/           # 2. one rename commits the whole new set (plus a `.order` manifest)
    DIR/NAME...             # 3. each file renamed from .pending/ into DIR (in the given order), then
                            #    .pending/ removed

From the commit on, the new set is ``.pending/ ∪ DIR``: a file is read from ``.pending/`` while it is
still there, else from DIR (`current_path`, `read_current`), so readers see the old set or the new one
whole, without writing anything. Writers roll an interrupted publish forward (`recover_files`) before
the next transaction. One writer per directory.
`merge_json` puts a record under a (dotted) key of a JSON object file, keeping the other keys.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from gaia_gym.errors import ConfigError, MissingFileError

TMP_SUFFIX = ".tmp"
PENDING = ".pending"  # DIR/.pending/: a committed `atomic_write_files` set not yet (fully) published into DIR
ORDER = ".order"  # DIR/.pending/.order: the publish order (one name a line)


def _fsync_dir(directory: str | Path) -> None:
    """Make renames/creations in `directory` durable (best effort: not every OS opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directories themselves (deepest first)."""
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


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

    At every instant `target` is either the previous complete directory or the new complete one,
    except between the two renames: the old one is first renamed aside (`.NAME.old`), the new one
    (fsynced) renamed in, then the old one removed. A kill between the two renames leaves no `target`
    but a complete `.NAME.old`, which `recover_dir(target)` renames back (readers call it, or look at
    `.NAME.old` themselves). A kill while `fill` runs leaves a `.NAME.PID.tmp` that the next swap
    removes. One writer per target. Returns what `fill` returned."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    old = target.with_name(f".{target.name}.old")
    for stale in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):  # earlier, killed swaps (one writer)
        if stale.is_dir() and stale.name[len(target.name) + 2:-len(TMP_SUFFIX)].isdigit():
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        out = fill(tmp)
        _fsync_tree(tmp)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
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


# ----------------------------------------------------------------------------------------------
# a set of files in one directory, complete or absent (journaled; see the module docstring)
# ----------------------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if (not name or name != os.path.basename(name) or name in (".", "..") or name.startswith(PENDING)
            or name.endswith(TMP_SUFFIX)):
        raise ConfigError(f"atomic_write_files: {name!r} is not a plain file name this can publish")


def atomic_write_files(directory: str | Path, files: dict[str, Callable]) -> None:
    """Write `files` ({name: write_fn(fileobj)}) into `directory` as one transaction: a reader (and a
    rerun after a kill at any point) sees all the old files or all the new ones, never a mix.

    The files are published in `files`' order (put the one that describes the others last). Files of
    `directory` not named in `files` are left alone. One writer per directory."""
    directory = Path(directory)
    if not files:
        return
    for name in files:
        _check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    recover_files(directory)
    for stale in directory.glob(f"{PENDING}.*{TMP_SUFFIX}"):  # leftovers of killed writers (one writer)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = directory / f"{PENDING}.{os.getpid()}{TMP_SUFFIX}"
    tmp.mkdir()
    pending = directory / PENDING
    try:
        for name, write_fn in files.items():
            with open(tmp / name, "wb") as f:
                write_fn(f)
                f.flush()
                os.fsync(f.fileno())
        with open(tmp / ORDER, "w") as f:
            f.write("".join(f"{n}\n" for n in files))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, pending)  # the commit: from here on the new set is .pending/ + directory
        _fsync_dir(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    recover_files(directory)


def recover_files(directory: str | Path) -> bool:
    """Finish publishing a committed `atomic_write_files` set (`DIR/.pending/`) that a kill interrupted:
    move its remaining files into DIR and remove it. Idempotent; only writers call it. Returns whether
    there was anything to finish."""
    directory = Path(directory)
    pending = directory / PENDING
    if not pending.is_dir():
        return False
    try:
        order = [n for n in (pending / ORDER).read_text().splitlines() if n]
    except (OSError, UnicodeDecodeError):
        order = []
    try:
        present = sorted(p.name for p in pending.iterdir() if p.name != ORDER)
    except FileNotFoundError:
        return False
    for name in [n for n in order if n in present] + [n for n in present if n not in order]:
        try:
            os.replace(pending / name, directory / name)
        except FileNotFoundError:  # moved meanwhile
            continue
    _fsync_dir(directory)
    (pending / ORDER).unlink(missing_ok=True)
    try:
        os.rmdir(pending)
    except OSError:  # not empty: a newer set committed meanwhile; its writer publishes it
        pass
    return True


def current_path(directory: str | Path, name: str) -> Path:
    """Where the current version of file `name` of `directory` is: ``DIR/.pending/NAME`` while a
    committed `atomic_write_files` set is being (or was interrupted while being) published, else DIR/NAME."""
    directory = Path(directory)
    staged = directory / PENDING / name
    return staged if staged.is_file() else directory / name


def exists_current(directory: str | Path, name: str) -> bool:
    """Whether `directory` has a current version of file `name` (see `current_path`), race-free against
    a publish that moves it meanwhile (the staged copy is looked at first)."""
    directory = Path(directory)
    return (directory / PENDING / name).is_file() or (directory / name).is_file()


def read_current(directory: str | Path, name: str) -> bytes:
    """The bytes of the current version of `name` (see `current_path`), tolerating a publish that moves
    it meanwhile. FileNotFoundError (naming DIR/NAME) when there is none."""
    directory = Path(directory)
    for _ in range(3):
        path = current_path(directory, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if path.parent == directory and not (directory / PENDING / name).is_file():
                break
    raise MissingFileError(2, "No such file or directory", str(directory / name))


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON at `path` (`default` when the file does not exist); a corrupt file raises ValueError
    naming it."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def merge_json(path: str | Path, key: str, record: dict, update: bool = False) -> Path:
    """Put `record` under `key` in the JSON object at `path` (other keys kept), atomically.

    A dotted key ("baselines.random") nests; the key "." merges `record`'s fields into the top level.
    With `update`, `record`'s fields are merged into what `key` already holds instead of replacing it
    (so the fields' own names may contain dots: policy paths)."""
    path = Path(path)
    old = read_json(path, {})
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: holds a JSON {type(old).__name__}, not an object; cannot merge into it")
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


__all__ = ["PENDING", "TMP_SUFFIX", "atomic_replace_dir", "atomic_write_bytes", "atomic_write_files",
           "atomic_write_json", "clean_temp_files", "current_path", "exists_current", "merge_json",
           "read_current", "read_json", "recover_dir", "recover_files", "write_json"]
