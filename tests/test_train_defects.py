"""gaia_gym.train.loop defects: a checkpoint is complete or absent (a kill at any point of a save), a
non-finite loss stops with a one-line TrainingError keeping the last good checkpoint, garbage files give
one-line errors naming the file, and `Trainer` is what `train` runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gaia_gym import checkpoint as ck
from gaia_gym.errors import GaiaGymError, ModelFileError, ResumeError, TrainingError
from gaia_gym.fileio import PENDING, read_current
from gaia_gym.train import Trainer
from gaia_gym.train.loop import TB_DIR, TRAIN_STATE, train

from test_train_loop import BASE, TinyAE, TinyConfig, fresh, make_batches  # noqa: F401


def _build(d):
    return TinyAE(TinyConfig(**d))


def _run(out, steps, model=None, **kw):
    model = model or fresh()
    return train(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=steps, **kw), out, progress=False)


def _side_files(run: Path) -> None:
    """What other code keeps beside a checkpoint: a checkpoint swap must never touch it."""
    (run / "sources.json").write_text('{"tokenizer_sha256": "abc"}')
    (run / "tokens").mkdir(parents=True, exist_ok=True)
    (run / "tokens" / "train.npz").write_bytes(b"tokens")
    (run / "prompts.npz").write_bytes(b"prompts")


def _assert_side_files(run: Path) -> None:
    assert (run / "sources.json").read_text() == '{"tokenizer_sha256": "abc"}'
    assert (run / "tokens" / "train.npz").read_bytes() == b"tokens"
    assert (run / "prompts.npz").read_bytes() == b"prompts"


def _checkpoint_step(run: Path) -> int | None:
    """The step of `run`'s checkpoint as every reader sees it, checking it is complete: config.json,
    weights of the recorded sha256 and a training state of the same weights and step (None: none)."""
    try:
        _model, _cfg, meta = ck.load_model(run, "tokenizer", _build)
    except ModelFileError as e:
        assert "no config.json" in str(e), e
        return None
    info = ck.read_model_info(run)
    state = torch.load(io.BytesIO(read_current(run, TRAIN_STATE)), weights_only=True)
    assert state["weights_sha256"] == info["weights"]["sha256"]
    assert state["step"] == meta["step"]
    return meta["step"]


def _snapshot_every_file_operation(monkeypatch, run: Path, snaps: Path) -> list[Path]:
    """Copy `run` before every rename, fsync and rmdir: each copy is the directory as a kill there leaves it."""
    taken: list[Path] = []

    def wrap(name):
        real = getattr(os, name)

        def fn(*a, **k):
            dst = snaps / f"{len(taken):03d}-{name}"
            shutil.copytree(run, dst)
            taken.append(dst)
            return real(*a, **k)

        monkeypatch.setattr(os, name, fn)

    for name in ("replace", "fsync", "rmdir"):
        wrap(name)
    return taken


def test_kill_at_every_point_of_a_save_leaves_a_complete_checkpoint(tmp_path: Path, monkeypatch):
    run, snaps = tmp_path / "run", tmp_path / "snaps"
    run.mkdir()
    _side_files(run)
    with monkeypatch.context() as m:  # the first checkpoint (step 2) and a later one (step 4)
        first = _snapshot_every_file_operation(m, run, snaps / "first")
        _run(run, 2)
        n_first = len(first)
        _run(run, 4)
        second = first[n_first:]
        first = first[:n_first]
    assert len(first) >= 8 and len(second) >= 8  # every rename/fsync of a save was a kill point
    assert _checkpoint_step(run) == 4

    seen = set()
    for snap, allowed in [(s, {None, 2}) for s in first] + [(s, {2, 4}) for s in second]:
        step = _checkpoint_step(snap)  # readers: old or new, complete, whatever the kill point
        assert step in allowed, (snap.name, step)
        seen.add((allowed == {2, 4}, step))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = _run(snap, 6, model=fresh(seed=7))  # the rerun resumes (no sha error, no lost optimizer)
        assert out["step"] == 6, snap.name
        msgs = [str(x.message) for x in w]
        assert not [x for x in msgs if "fresh optimizer" in x or "no model" in x], (snap.name, msgs)
        assert _checkpoint_step(snap) == 6
        assert not (snap / PENDING).exists() and not list(snap.glob(".*.tmp")), sorted(os.listdir(snap))
        _assert_side_files(snap)
        assert list((snap / TB_DIR).glob("events.out.tfevents.*"))
    assert seen == {(False, None), (False, 2), (True, 2), (True, 4)}  # kills before and after each commit


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_save_failing_at_each_rename_keeps_a_complete_checkpoint(tmp_path: Path, monkeypatch, fail_at):
    _side_files(tmp_path)
    _run(tmp_path, 2)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", flaky)
        with pytest.raises(OSError, match="simulated"):
            _run(tmp_path, 4)
    # the renames of one save: commit .pending, then weights, training state, config.json
    assert calls[:fail_at] == [PENDING, ck.WEIGHTS, TRAIN_STATE, ck.CONFIG][:fail_at]
    assert _checkpoint_step(tmp_path) == (2 if fail_at == 1 else 4)
    out = _run(tmp_path, 6, model=fresh(seed=3))
    assert out["step"] == 6 and _checkpoint_step(tmp_path) == 6
    assert not (tmp_path / PENDING).exists()
    _assert_side_files(tmp_path)


def test_resave_by_a_caller_keeps_training_state(tmp_path: Path):
    """probe.py re-saves the trained weights with more meta: the run stays resumable with its optimizer."""
    model = fresh()
    _run(tmp_path, 3, model=model)
    info = ck.read_model_info(tmp_path)
    ck.save_model(tmp_path, model, "tokenizer", model.cfg, meta={**info["meta"], "val": {"acc": 1.0}})
    assert ck.read_model_info(tmp_path)["weights"]["sha256"] == info["weights"]["sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _run(tmp_path, 5)
    assert out["step"] == 5


# ----------------------------------------------------------------------------------------------
# non-finite loss
# ----------------------------------------------------------------------------------------------
def _files(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in (ck.WEIGHTS, ck.CONFIG, TRAIN_STATE)}


def test_huge_lr_stops_with_one_line_error_and_keeps_checkpoint(tmp_path: Path):
    _run(tmp_path, 3)
    before = _files(tmp_path)
    with pytest.raises(TrainingError) as e:
        _run(tmp_path, 50, lr=1e9, warmup_steps=0)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, GaiaGymError)
    assert "became non-finite at step 5" in msg, msg  # step 4 blows the weights up, step 5's loss is inf
    assert "last good checkpoint (step 3)" in msg and str(tmp_path) in msg
    assert _files(tmp_path) == before  # nothing written over the good checkpoint
    out = _run(tmp_path, 6)  # and the run resumes from it with a sane lr
    assert out["step"] == 6


def test_huge_lr_on_a_fresh_run_saves_nothing(tmp_path: Path):
    with pytest.raises(TrainingError, match="non-finite at step 2 .*nothing was saved"):
        _run(tmp_path, 50, lr=1e9, warmup_steps=0)
    assert not (tmp_path / ck.CONFIG).exists() and not (tmp_path / ck.WEIGHTS).exists()
    assert not (tmp_path / PENDING).exists()


class NaNAt(TinyAE):
    """Its loss is NaN from optimizer step `at` (1-based) on: a model whose loss becomes NaN."""

    def __init__(self, cfg, at):
        super().__init__(cfg)
        self.at, self.calls = at, 0

    def compute_loss(self, batch):
        self.calls += 1
        loss, metrics = super().compute_loss(batch)
        return (loss * float("nan") if self.calls >= self.at else loss), metrics


def test_nan_loss_names_the_step_even_between_logs(tmp_path: Path):
    torch.manual_seed(0)
    model = NaNAt(TinyConfig(), at=7)
    ckpts = []
    with pytest.raises(TrainingError, match=r"the loss became non-finite at step 7 \(loss nan") as e:
        train(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=20, log_every=10,
              checkpoint_minutes=1e-6), tmp_path, progress=False, on_checkpoint=lambda m, s: ckpts.append(s))
    assert "last good checkpoint (step 6)" in str(e.value)
    assert ckpts == [1, 2, 3, 4, 5, 6]  # no checkpoint at or after the bad step
    assert _checkpoint_step(tmp_path) == 6


def test_checkpoint_refuses_non_finite_weights(tmp_path: Path):
    _run(tmp_path, 2)
    before = _files(tmp_path)
    model = fresh()
    t = Trainer(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=4), tmp_path, progress=False)
    try:
        t.setup()
        assert t.step == 2 and t.saved_step == 2
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))
        with pytest.raises(TrainingError, match="weights became non-finite .*last good checkpoint \\(step 2\\)"):
            t.checkpoint(collective=False)
    finally:
        t.close()
    assert _files(tmp_path) == before


def test_trainer_run_is_train(tmp_path: Path):
    a, b = fresh(), fresh()
    ra = train(a, "tokenizer", a.cfg, make_batches(), replace(BASE, steps=5), tmp_path / "a", progress=False)
    rb = Trainer(b, "tokenizer", b.cfg, make_batches(), replace(BASE, steps=5), tmp_path / "b", progress=False).run()
    assert ra["step"] == rb["step"] == 5 and ra["stopped"] == rb["stopped"] == "steps"
    assert ra["metrics"] == pytest.approx(rb["metrics"])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(TypeError, match="compute_loss"):
        Trainer(torch.nn.Linear(2, 2), "x", {}, make_batches(), BASE, tmp_path / "c")


# ----------------------------------------------------------------------------------------------
# garbage files: one line, naming the file
# ----------------------------------------------------------------------------------------------
def _one_line_error(exc_type, path: Path, out: Path, match: str | None = None) -> str:
    with pytest.raises(exc_type) as e:
        _run(out, 4)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    if match:
        assert match in msg, msg
    return msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("garbage", [b"", b"not a torch file", b"\x80\x04K\x01.", b"PK\x03\x04broken zip"])
def test_garbage_training_state(tmp_path: Path, garbage):
    _run(tmp_path, 2)
    ts = tmp_path / TRAIN_STATE
    ts.write_bytes(garbage)
    _one_line_error(ResumeError, ts, tmp_path, match="cannot read training state")


def test_malformed_training_state(tmp_path: Path):
    _run(tmp_path, 2)
    ts = tmp_path / TRAIN_STATE
    good = torch.load(ts, weights_only=True)
    for bad in ([1, 2], {"version": 99}, {**good, "step": "x"}, {**good, "optimizer": None},
                {**good, "rng": [{"torch": 1}]}, {**good, "optimizer": {"state": {}, "param_groups": []}}):
        torch.save(bad, ts)
        _one_line_error(ResumeError, ts, tmp_path)


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"format": "gaia_gym.model"}',
                                  b"[" * 100_000])
def test_garbage_config(tmp_path: Path, text):
    _run(tmp_path, 2)
    cfg = tmp_path / ck.CONFIG
    cfg.write_bytes(text)
    _one_line_error(ModelFileError, cfg, tmp_path)


def test_garbage_meta_in_config(tmp_path: Path):
    _run(tmp_path, 2)
    cfg = tmp_path / ck.CONFIG
    info = json.loads(cfg.read_text())
    for meta in ({"step": "two"}, {"step": 2, "minutes": None}, {"step": -1}):
        cfg.write_text(json.dumps(dict(info, meta=meta)))
        _one_line_error(ResumeError, cfg, tmp_path, match="meta")


def test_garbage_weights(tmp_path: Path):
    _run(tmp_path, 2)
    w = tmp_path / ck.WEIGHTS
    w.write_bytes(b"garbage")
    _one_line_error(ModelFileError, w, tmp_path)



def test_ddp_checkpoint_on_the_last_step_does_not_hang(tmp_path: Path):
    """A periodic checkpoint that falls on the final step: every rank must then skip the final save
    (rank 1 used to enter the final collective save alone and wait forever)."""
    import subprocess
    import sys

    from test_train_loop import DDP_SCRIPT, TINY_MODEL_SRC

    script = tmp_path / "ddp_train.py"
    script.write_text(TINY_MODEL_SRC + DDP_SCRIPT.replace("checkpoint_minutes=60", "checkpoint_minutes=1e-6"))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (out / "rank0.txt").read_text().split(), (out / "rank1.txt").read_text().split()
    assert r0 == r1 and r0[0] == "10"
    assert _checkpoint_step(out) == 10 and not (out / PENDING).exists()


def test_train_world_model_killed_after_its_first_checkpoint_resumes_from_it(tmp_path: Path, monkeypatch, capsys):
    """`gaia-gym train world-model --checkpoint-minutes M`: a SIGKILL after the first checkpoint loses at most
    M minutes; the same command resumes from that checkpoint (and trains only the steps left)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import make_dataset
    from gaia_gym.cli import main
    from gaia_gym.fileio import recover_files

    data = make_dataset(tmp_path / "data", train=(40,) * 2, val=(40,))
    tok, out = tmp_path / "tok", tmp_path / "wm"
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(tok), "--preset", "tiny", "--steps", "2",
                 "--quiet"]) == 0
    argv = ["train", "world-model", "--data", str(data), "--tokenizer", str(tok), "--out", str(out), "--preset", "tiny",
            "--quiet"]
    assert main([*argv, "--checkpoint-minutes", "0"]) == 2
    assert "checkpoint_minutes must be > 0" in capsys.readouterr().err

    proc = subprocess.Popen([sys.executable, "-m", "gaia_gym.cli", *argv, "--steps", "1000000",
                             "--checkpoint-minutes", "0.002"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (out / TRAIN_STATE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    recover_files(out)  # the kill may have cut a later save short: its checkpoint or the one before stands
    saved = ck.read_model_info(out)["meta"]["step"]
    assert saved >= 1

    steps = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: (steps.append(self.step), step(self, batch))[1])
    assert main([*argv, "--steps", str(saved + 3)]) == 0
    assert steps == [saved, saved + 1, saved + 2]  # resumed at the checkpoint's step, not from 0
    assert ck.read_model_info(out)["meta"]["step"] == saved + 3


@pytest.mark.parametrize("stage", ["tokenizer", "vae", "world-model", "flow-world-model"])
def test_tiny_preset_is_a_seconds_long_run(stage):
    """`--preset tiny` means a smoke run: a few small steps (about 0.015 s each for the tiny world model on a
    laptop CPU), whatever the stage's full-size defaults."""
    from gaia_gym.cli import build_parser
    from gaia_gym.cli.train import _train_config

    extra = {"world-model": ["--tokenizer", "T"], "flow-world-model": ["--vae", "V"]}.get(stage, [])
    a = build_parser().parse_args(["train", stage, "--data", "D", "--out", "O", "--preset", "tiny", *extra])
    tc = _train_config(a, steps=4000, batch_size=64, lr=1e-3)
    assert tc.steps <= 20 and tc.batch_size <= 8 and tc.warmup_steps <= 2
