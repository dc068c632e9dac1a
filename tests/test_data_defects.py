"""Dataset defects: reruns with another spec, malformed or escaping manifests, corrupt shards behind a
DataLoader worker, quiet Ctrl-C during collection. Tiny synthetic datasets only (no simulator)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from gaia_gym.cli import main
from gaia_gym.data import format as fmt
from gaia_gym.data.collect import RERUN_FREE, plan_episodes, run_collection
from gaia_gym.data.loader import ClipDataset, EpisodeIndex, iter_frames
from gaia_gym.data.stats import dataset_stats, verify_dataset
from gaia_gym.errors import CorruptShardError, DatasetError

S = 8


def arrays_of(T: int, code: int = 0) -> dict:
    frames = np.full((T, S, S, 3), code, np.uint8)
    return {
        "frames": frames,
        "last_frame": frames[0],
        "steering": np.zeros(T, np.float32),
        "speed_mps": np.arange(T, dtype=np.float32),
        "target_speed_mps": np.arange(T, dtype=np.float32),
        "raw_action": np.zeros((T, 2), np.float32),
        "reward": np.ones(T, np.float32),
        "terminated": np.zeros(T, bool),
        "truncated": np.r_[np.zeros(T - 1, bool), True],
    }


def make_dataset(root: Path, n: int = 4, T: int = 12) -> Path:
    (root / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": 10.0, "frame_size": S})
    for i in range(n):
        meta = {"source": "synthetic", "seed": i, "split": "val" if i == n - 1 else "train", "fps": 10.0}
        m["episodes"].append(fmt.write_episode(root / fmt.EPISODES / fmt.episode_filename(i), arrays_of(T, i), meta))
    fmt.write_manifest(root, m)
    return root


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def fake_recorder(spec, cfg):
    """A top-level (picklable) recorder: `cfg` is the frame size."""
    return arrays_of(3 + spec.index % 2, spec.index), {"source": "fake", "frame_size": cfg}


def fake_info(frame_size: int = S, episodes: int = 2, workers: int = 1, **config) -> dict:
    return {"source": "fake", "fps": 10.0, "frame_size": frame_size,
            "config": {"episodes": episodes, "workers": workers, "compress": True, "seed": 0, "max_steps": 3,
                       **config}}


# ----------------------------------------------------------------------------------------------
# 1. a rerun must describe the same data
# ----------------------------------------------------------------------------------------------
def test_rerun_with_another_spec_is_refused(tmp_path):
    out = tmp_path / "ds"
    run_collection(fake_recorder, plan_episodes(2, 0, 0), S, out, fake_info(), progress=False)
    before = (out / fmt.MANIFEST).read_bytes()
    for info, fields in [
        (fake_info(frame_size=16), ["frame_size=8 (this run: 16)"]),
        (fake_info(max_steps=5), ["config.max_steps=3 (this run: 5)"]),
        (fake_info(seed=7, frame_skip=2), ["config.seed=0 (this run: 7)"]),
        (dict(fake_info(), fps=25.0), ["fps=10.0 (this run: 25.0)"]),
    ]:
        with pytest.raises(DatasetError) as ei:
            run_collection(fake_recorder, plan_episodes(3, 0, 0), S, out, info, progress=False)
        msg = one_line(ei.value)
        assert str(out) in msg and "other settings" in msg
        for f in fields:
            assert f in msg
    # nothing was added and the header was not rewritten
    assert (out / fmt.MANIFEST).read_bytes() == before
    assert len(list((out / fmt.EPISODES).glob("ep_*.npz"))) == 2


def test_rerun_with_the_same_spec_resumes_and_extends(tmp_path):
    out = tmp_path / "ds"
    run_collection(fake_recorder, plan_episodes(2, 0, 0), S, out, fake_info(episodes=2), progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / fmt.EPISODES).glob("ep_*.npz")}
    # more episodes, other workers / compression: the free fields
    m = run_collection(fake_recorder, plan_episodes(4, 0, 0), S, out, fake_info(episodes=4, workers=3),
                       progress=False, compress=False)
    assert m["num_episodes"] == 4 and m["config"]["episodes"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / fmt.EPISODES).glob("ep_*.npz")
            if p.name in mtimes} == mtimes
    assert set(RERUN_FREE) == {"config.episodes", "config.workers", "config.compress"}
    # a tuple in the config equals the list the manifest holds (a JSON round trip)
    out2 = tmp_path / "ds2"
    run_collection(fake_recorder, plan_episodes(1, 0, 0), S, out2, fake_info(scenarios=("a", "b")), progress=False)
    m = run_collection(fake_recorder, plan_episodes(2, 0, 0), S, out2, fake_info(scenarios=("a", "b"), episodes=3),
                       progress=False)
    assert m["num_episodes"] == 2
    with pytest.raises(DatasetError, match=r"config\.scenarios"):
        run_collection(fake_recorder, plan_episodes(2, 0, 0), S, out2, fake_info(scenarios=("a",)), progress=False)


def test_another_source_is_still_refused(tmp_path):
    out = make_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="already holds a 'synthetic' dataset"):
        run_collection(fake_recorder, plan_episodes(1, 0, 0), S, out, fake_info(), progress=False)


# ----------------------------------------------------------------------------------------------
# 2, 3. the manifest's structure is checked once, for every reader
# ----------------------------------------------------------------------------------------------
def _readers(d: Path):
    return {
        "EpisodeIndex": lambda: EpisodeIndex(d, "all"),
        "ClipDataset": lambda: ClipDataset(d, "train", clip_len=4),
        "iter_frames": lambda: next(iter_frames(d, "all")),
        "verify_dataset": lambda: verify_dataset(d, progress=False),
        "dataset_stats": lambda: dataset_stats(d),
        "open_for_writing": lambda: fmt.open_for_writing(d, {"source": "synthetic"}),
    }


def _entry0(d: Path) -> dict:
    return json.loads((d / fmt.MANIFEST).read_text())["episodes"][0]


BAD_MANIFESTS = {
    "a JSON array": (lambda m, e0: [], "holds a JSON array, not an object"),
    "episodes is a number": (lambda m, e0: dict(m, episodes=5), "'episodes' must be a list, got integer 5"),
    "no episodes": (lambda m, e0: {k: v for k, v in m.items() if k != "episodes"}, "no 'episodes' list"),
    "entry is a string": (lambda m, e0: dict(m, episodes=["ep_000000.npz"]), "episode entry 0 is a JSON string"),
    "entry without steps": (lambda m, e0: dict(m, episodes=[{k: v for k, v in e0.items() if k != "steps"}]),
                            "episode entry 0 (episodes/ep_000000.npz) has no 'steps'"),
    "steps is a string": (lambda m, e0: dict(m, episodes=[dict(e0, steps="12")]),
                          "'steps' must be a positive integer, got string '12'"),
    "steps is a bool": (lambda m, e0: dict(m, episodes=[dict(e0, steps=True)]), "'steps' must be a positive integer"),
    "entry without file": (lambda m, e0: dict(m, episodes=[{k: v for k, v in e0.items() if k != "file"}]),
                           "episode entry 0 has no 'file'"),
    "file is a number": (lambda m, e0: dict(m, episodes=[dict(e0, file=3)]), "'file' must be a non-empty string"),
    "split is a list": (lambda m, e0: dict(m, episodes=[dict(e0, split=["train"])]), "'split' must be a string"),
    "meta is a string": (lambda m, e0: dict(m, episodes=[dict(e0, meta="x")]), "'meta' must be an object"),
    "return is a string": (lambda m, e0: dict(m, episodes=[dict(e0, **{"return": "1"})]), "'return' must be a number"),
    "fps is a string": (lambda m, e0: dict(m, fps="fast"), "'fps' must be a positive number"),
    "num_steps is a string": (lambda m, e0: dict(m, num_steps="48"), "'num_steps' must be a non-negative integer"),
    "listed twice": (lambda m, e0: dict(m, episodes=[e0, e0]), "episodes/ep_000000.npz is listed twice"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_manifest_of_the_wrong_structure(tmp_path, case):
    d = make_dataset(tmp_path / "ds")
    m = json.loads((d / fmt.MANIFEST).read_text())
    make, expect = BAD_MANIFESTS[case]
    (d / fmt.MANIFEST).write_text(json.dumps(make(m, m["episodes"][0])))
    for name, read in _readers(d).items():
        with pytest.raises(DatasetError) as ei:
            read()
        msg = one_line(ei.value)
        assert str(d / fmt.MANIFEST) in msg and expect in msg, (name, msg)


@pytest.mark.parametrize("escape", ["../outside.npz", "episodes/../../outside.npz", "ABS", "./episodes/x.npz",
                                    "episodes//x.npz", "C:/outside.npz", "episodes\\..\\..\\outside.npz", ""])
def test_episode_path_outside_the_dataset_is_refused(tmp_path, escape):
    d = make_dataset(tmp_path / "ds")
    outside = tmp_path / "outside.npz"  # a perfectly readable shard: following the path would "work"
    outside.write_bytes((d / fmt.EPISODES / "ep_000000.npz").read_bytes())
    m = json.loads((d / fmt.MANIFEST).read_text())
    m["episodes"][1]["file"] = str(outside) if escape == "ABS" else escape
    (d / fmt.MANIFEST).write_text(json.dumps(m))
    for name, read in _readers(d).items():
        with pytest.raises(DatasetError) as ei:
            read()
        msg = one_line(ei.value)
        assert str(d / fmt.MANIFEST) in msg and "episode entry 1" in msg, (name, msg)
    # and the CLI prints that one line
    for verb in (["data", "verify", str(d), "--quiet"], ["data", "stats", str(d)]):
        assert main(verb) == 2


def test_cli_reports_a_malformed_manifest_in_one_line(tmp_path, capsys):
    d = make_dataset(tmp_path / "ds")
    (d / fmt.MANIFEST).write_text(json.dumps({"format": fmt.FORMAT_NAME, "version": 1, "episodes": 5}))
    for verb in (["data", "verify", str(d), "--quiet"], ["data", "stats", str(d)]):
        assert main(verb) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gaia-gym: error:") and "\n" not in err and str(d / fmt.MANIFEST) in err


def test_rebuild_manifest_repairs_a_malformed_episode_list(tmp_path):
    d = make_dataset(tmp_path / "ds")
    m = json.loads((d / fmt.MANIFEST).read_text())
    (d / fmt.MANIFEST).write_text(json.dumps(dict(m, episodes=[{"file": "../x"}])))
    fmt.rebuild_manifest(d)
    assert len(EpisodeIndex(d, "all")) == 4


# ----------------------------------------------------------------------------------------------
# 4. a corrupt shard read by a DataLoader worker: one line naming it, in the main process
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("shuffle", [True, False])
def test_corrupt_shard_behind_dataloader_workers(tmp_path, num_workers, shuffle, capfd):
    d = make_dataset(tmp_path / "ds", n=5)
    bad = d / fmt.EPISODES / "ep_000002.npz"
    bad.write_bytes(bad.read_bytes()[:200])
    ds = ClipDataset(d, "train", clip_len=4, fields=("frames",), buffer_episodes=2, shuffle=shuffle, epochs=1)
    kw = dict(persistent_workers=True, prefetch_factor=4) if num_workers else {}  # as the tokenizer stage
    loader = DataLoader(ds, batch_size=2, num_workers=num_workers, **kw)
    with pytest.raises(CorruptShardError) as ei:
        for _ in loader:
            pass
    msg = one_line(ei.value)
    assert str(bad) in msg and msg.startswith("corrupt or truncated shard")
    assert "Traceback" not in capfd.readouterr().err
    _release(ei)


def _release(ei) -> None:
    """Free the DataLoader iterator now: the traceback of torch's re-raise is a reference cycle, and a
    DataLoader collected by the cycle collector waits 5 s per worker before killing it."""
    ei.value.__traceback__ = None
    ei._excinfo = None


def test_shard_shorter_than_the_manifest_says_is_one_line(tmp_path):
    d = make_dataset(tmp_path / "ds", n=3, T=12)
    m = json.loads((d / fmt.MANIFEST).read_text())
    m["episodes"][0]["steps"] = 16
    (d / fmt.MANIFEST).write_text(json.dumps(m))
    ds = ClipDataset(d, "train", clip_len=4, shuffle=False)
    with pytest.raises(DatasetError) as ei:
        for _ in DataLoader(ds, batch_size=2, num_workers=1):
            pass
    msg = one_line(ei.value)
    assert "episodes/ep_000000.npz has 16 steps" in msg and "rebuild the manifest" in msg
    _release(ei)


# ----------------------------------------------------------------------------------------------
# 5. Ctrl-C / kill during a multi-process collection: no worker traceback, every finished episode kept
# ----------------------------------------------------------------------------------------------
RECORDER = '''
import time
import numpy as np

def record(spec, cfg):
    if spec.index >= 2:
        time.sleep(60)  # the later episodes are still running when the signal comes
    T = 3
    return ({"frames": np.zeros((T, 4, 4, 3), np.uint8), "last_frame": np.zeros((4, 4, 3), np.uint8),
             "steering": np.zeros(T), "speed_mps": np.zeros(T), "target_speed_mps": np.zeros(T),
             "raw_action": np.zeros((T, 2)), "reward": np.ones(T), "terminated": np.zeros(T, bool),
             "truncated": np.ones(T, bool)}, {"source": "slow"})
'''

DRIVER = '''
import sys
from pathlib import Path

import slowrec
from gaia_gym.data.collect import plan_episodes, run_collection


def main():
    try:
        run_collection(slowrec.record, plan_episodes(6, 0, 0), None, Path(sys.argv[1]), {"source": "slow"},
                       workers=2, progress=False)
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
'''


def default_sigint() -> None:
    """In the child before exec: SIGINT as in a terminal (a test runner started in the background has it
    ignored, which is inherited and would hide what Ctrl-C does)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_interrupted_collection_is_quiet_and_keeps_finished_episodes(tmp_path, how):
    (tmp_path / "slowrec.py").write_text(textwrap.dedent(RECORDER))
    (tmp_path / "drive.py").write_text(textwrap.dedent(DRIVER))
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path.cwd())]))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "drive.py"), str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and len(list((out / fmt.EPISODES).glob("ep_*.npz"))) < 2:
            time.sleep(0.05)
        time.sleep(0.3)  # the two workers are now inside the slow episodes
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group
        else:
            os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: the parent only
        t0 = time.time()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.time() - t0 < 10, "the collection must stop promptly"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; rerun to resume" in err
    m = fmt.read_manifest(out)
    assert [e["file"] for e in m["episodes"]] == ["episodes/ep_000000.npz", "episodes/ep_000001.npz"]
    assert not list((out / fmt.EPISODES).glob("*.tmp"))
