"""gaia_gym.fileio: a set of files complete or absent (atomic_write_files: a kill at every point), and a
directory swapped in whole (atomic_replace_dir / recover_dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gaia_gym.fileio import (PENDING, TMP_SUFFIX, atomic_replace_dir, atomic_write_files, current_path,
                             exists_current, read_current, recover_dir, recover_files)

NAMES = ("a.bin", "b.bin", "c.json")


def _write_set(d: Path, tag: str) -> None:
    atomic_write_files(d, {n: (lambda f, n=n: f.write(f"{tag}:{n}".encode())) for n in NAMES})


def _view(d: Path) -> set[str]:
    """The tags of the files a reader sees (through the pending journal): one tag = a consistent set."""
    return {read_current(d, n).decode().split(":")[0] for n in NAMES}


def _snapshots(monkeypatch, d: Path, snaps: Path) -> list[Path]:
    taken: list[Path] = []
    for name in ("replace", "fsync", "rmdir"):
        real = getattr(os, name)

        def fn(*a, _real=real, _name=name, **k):
            dst = snaps / f"{len(taken):03d}-{_name}"
            shutil.copytree(d, dst)
            taken.append(dst)
            return _real(*a, **k)

        monkeypatch.setattr(os, name, fn)
    return taken


def test_write_files_publishes_a_set_and_leaves_the_rest(tmp_path: Path):
    (tmp_path / "other.txt").write_text("keep")
    (tmp_path / "tb").mkdir()
    _write_set(tmp_path, "v1")
    assert _view(tmp_path) == {"v1"}
    assert sorted(os.listdir(tmp_path)) == sorted([*NAMES, "other.txt", "tb"])
    _write_set(tmp_path, "v2")
    assert {(tmp_path / n).read_text() for n in NAMES} == {f"v2:{n}" for n in NAMES}
    assert (tmp_path / "other.txt").read_text() == "keep" and (tmp_path / "tb").is_dir()
    assert not recover_files(tmp_path)  # nothing pending


def test_kill_at_every_point_leaves_old_or_new_set(tmp_path: Path, monkeypatch):
    d, snaps = tmp_path / "d", tmp_path / "snaps"
    _write_set(d, "v1")
    with monkeypatch.context() as m:
        taken = _snapshots(m, d, snaps)
        order = []
        m.setattr(os, "replace", lambda s, t, _r=os.replace: (order.append(Path(t).name), _r(s, t))[1])
        _write_set(d, "v2")
    assert order == [PENDING, *NAMES]  # commit, then publish in the given order
    assert len(taken) >= 10
    seen = set()
    for snap in taken:
        view = _view(snap)
        assert view in ({"v1"}, {"v2"}), (snap.name, view)  # never a mix, without any recovery
        seen.add(view.pop())
        recover_files(snap)  # the writer's roll-forward
        assert _view(snap) in ({"v1"}, {"v2"}) and not (snap / PENDING).exists()
        assert {(snap / n).read_text().split(":")[0] for n in NAMES} == _view(snap)  # top level consistent
        _write_set(snap, "v3")  # and the next transaction works
        assert _view(snap) == {"v3"} and not list(snap.glob(f".*{TMP_SUFFIX}"))
    assert seen == {"v1", "v2"}


def test_failed_write_keeps_old_set(tmp_path: Path):
    _write_set(tmp_path, "v1")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_files(tmp_path, {"a.bin": lambda f: f.write(b"new"), "b.bin": boom})
    assert _view(tmp_path) == {"v1"} and not list(tmp_path.glob(".*"))


def test_stale_temp_of_a_killed_writer_is_removed(tmp_path: Path):
    stale = tmp_path / f"{PENDING}.99999{TMP_SUFFIX}"
    stale.mkdir(parents=True)
    (stale / "a.bin").write_bytes(b"partial")
    _write_set(tmp_path, "v1")
    assert not stale.exists() and _view(tmp_path) == {"v1"}


def test_pending_view_and_roll_forward(tmp_path: Path):
    _write_set(tmp_path, "v1")
    pending = tmp_path / PENDING
    pending.mkdir()
    (pending / ".order").write_text("b.bin\na.bin\n")
    (pending / "b.bin").write_bytes(b"v2:b.bin")
    os.replace(tmp_path / "c.json", tmp_path / "c.json.keep")  # a file only the pending set has is found too
    (pending / "c.json").write_bytes(b"v2:c.json")
    (tmp_path / "a.bin").write_bytes(b"v2:a.bin")  # already published
    assert current_path(tmp_path, "b.bin") == pending / "b.bin"
    assert current_path(tmp_path, "a.bin") == tmp_path / "a.bin"
    assert exists_current(tmp_path, "c.json") and not exists_current(tmp_path, "nope")
    assert _view(tmp_path) == {"v2"}
    with pytest.raises(FileNotFoundError, match="nope"):
        read_current(tmp_path, "nope")
    assert recover_files(tmp_path) and not pending.exists()
    assert {(tmp_path / n).read_text() for n in NAMES} == {f"v2:{n}" for n in NAMES}
    assert not recover_files(tmp_path)


@pytest.mark.parametrize("name", ["", "x/y", "..", PENDING, f"{PENDING}.1.tmp", "a.tmp"])
def test_write_files_rejects_bad_names(tmp_path: Path, name):
    with pytest.raises(ValueError):
        atomic_write_files(tmp_path, {name: lambda f: f.write(b"x")})


# ----------------------------------------------------------------------------------------------
# atomic_replace_dir / recover_dir
# ----------------------------------------------------------------------------------------------
def _fill(tag):
    def fill(tmp: Path):
        (tmp / "config.json").write_text(tag)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_text(tag)
        return tag
    return fill


def _tag(d: Path) -> str:
    a, b = (d / "config.json").read_text(), (d / "sub" / "w.bin").read_text()
    assert a == b
    return a


def test_replace_dir_swaps_whole(tmp_path: Path):
    t = tmp_path / "tok"
    assert atomic_replace_dir(t, _fill("v1")) == "v1" and _tag(t) == "v1"
    atomic_replace_dir(t, _fill("v2"))
    assert _tag(t) == "v2" and sorted(os.listdir(tmp_path)) == ["tok"]


def test_replace_dir_failed_fill_keeps_old(tmp_path: Path):
    t = tmp_path / "tok"
    atomic_replace_dir(t, _fill("v1"))

    def bad(tmp):
        (tmp / "config.json").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_replace_dir(t, bad)
    assert _tag(t) == "v1" and sorted(os.listdir(tmp_path)) == ["tok"]


def test_replace_dir_kill_between_renames_is_recovered(tmp_path: Path, monkeypatch):
    t = tmp_path / "tok"
    atomic_replace_dir(t, _fill("v1"))
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="killed"):
        atomic_replace_dir(t, _fill("v2"))
    monkeypatch.undo()
    assert not t.exists() and (tmp_path / ".tok.old").is_dir()  # the window between the renames
    assert recover_dir(t) and _tag(t) == "v1"
    assert not recover_dir(t)
    atomic_replace_dir(t, _fill("v3"))
    assert _tag(t) == "v3" and sorted(os.listdir(tmp_path)) == ["tok"]


def test_replace_dir_removes_stale_temp_and_old(tmp_path: Path):
    t = tmp_path / "tok"
    atomic_replace_dir(t, _fill("v1"))
    (tmp_path / f".tok.12345{TMP_SUFFIX}").mkdir()  # a killed fill
    (tmp_path / ".tok.old").mkdir()  # a swap killed before removing the old copy
    (tmp_path / ".tokenizer.1.tmp").mkdir()  # someone else's: kept
    atomic_replace_dir(t, _fill("v2"))
    assert _tag(t) == "v2" and sorted(os.listdir(tmp_path)) == [".tokenizer.1.tmp", "tok"]


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe garbage", b"[" * 100_000])
def test_read_json_garbage_is_one_line_naming_the_file(tmp_path: Path, text):
    from gaia_gym.fileio import read_json

    p = tmp_path / "sources.json"
    p.write_bytes(text)
    with pytest.raises(ValueError) as e:
        read_json(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
