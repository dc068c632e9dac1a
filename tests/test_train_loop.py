"""gaia_gym.train.loop: loss goes down, resume continues, budgets stop, interrupts checkpoint, DDP agrees."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gaia_gym import checkpoint as ck
from gaia_gym.train.loop import TB_DIR, TRAIN_STATE, TrainConfig, lr_at, train
from gaia_gym.errors import ResumeError, TrainingError

# The tiny model lives in a string so the DDP smoke test's script can define the very same thing.
TINY_MODEL_SRC = textwrap.dedent('''
    from dataclasses import dataclass

    import torch
    from torch import nn


    @dataclass(frozen=True)
    class TinyConfig:
        channels: int = 8


    class TinyAE(nn.Module):
        """A conv autoencoder on 16x16 RGB images."""

        def __init__(self, cfg: TinyConfig):
            super().__init__()
            self.cfg = cfg
            c = cfg.channels
            self.enc = nn.Sequential(nn.Conv2d(3, c, 4, 2, 1), nn.GroupNorm(1, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1))
            self.dec = nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(c, 3, 4, 2, 1))

        def forward(self, x):
            return self.dec(self.enc(x))

        def compute_loss(self, batch):
            x = batch["x"]
            loss = (self(x).float() - x).pow(2).mean()
            return loss, {"mse": float(loss.detach())}


    def make_batches(batch_size=16):
        """Batch factory: images mixing 4 fixed smooth patterns (learnable), seeded per rank."""
        def factory(rank, world_size, seed):
            g = torch.Generator().manual_seed(seed * 100 + rank)
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
            basis = torch.stack([xx, yy, xx * yy, (xx ** 2 + yy ** 2) - 0.5])  # (4, 16, 16)
            mix = torch.tensor([[1.0, 0.2, -0.5], [0.3, 1.0, 0.1], [-0.4, 0.2, 1.0], [0.5, -0.5, 0.5]])
            while True:
                coef = torch.randn(batch_size, 4, generator=g)
                img = torch.einsum("bk,kc,khw->bchw", coef, mix, basis)
                yield {"x": img.contiguous()}
        return factory
''')
exec(TINY_MODEL_SRC)  # defines TinyConfig, TinyAE, make_batches  # noqa: S102

BASE = TrainConfig(steps=20, batch_size=16, lr=3e-3, warmup_steps=3, grad_clip=1.0, checkpoint_minutes=60,
                   log_every=5, image_every=0, bf16=False, seed=0, threads=1)


def fresh(seed=0, channels=8):
    torch.manual_seed(seed)
    return TinyAE(TinyConfig(channels=channels))  # noqa: F821 - from TINY_MODEL_SRC


def eval_loss(model, n=4):
    it = make_batches(32)(0, 1, 999)  # noqa: F821
    device = next(model.parameters()).device  # train() moves the model to CUDA where there is one
    with torch.no_grad():
        return sum(float(model.compute_loss({"x": next(it)["x"].to(device)})[0]) for _ in range(n)) / n


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1) == lr_at(500, cfg)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)


def test_training_lowers_loss_and_logs(tmp_path: Path):
    model = fresh()
    before = eval_loss(model)
    images, ckpts = [], []

    def log_images(m, writer, step):
        assert not m.training and not torch.is_grad_enabled()
        x = torch.zeros(1, 3, 16, 16, device=next(m.parameters()).device)
        writer.add_image("recon", m(x)[0].clamp(0, 1).float().cpu(), step)
        images.append(step)

    cfg = replace(BASE, steps=60, image_every=25, bf16=True, channels_last=True)
    out = train(model, "tokenizer", model.cfg, make_batches(), cfg, tmp_path,  # noqa: F821
                log_images=log_images, on_checkpoint=lambda m, s: ckpts.append(s), progress=False)
    assert out["step"] == 60 and out["stopped"] == "steps"
    assert {"loss", "mse", "grad_norm"} <= set(out["metrics"])
    after = eval_loss(model.to(memory_format=torch.contiguous_format))
    assert after < 0.5 * before, (before, after)
    assert images == [25, 50, 60] and ckpts == [60]
    assert list((tmp_path / TB_DIR).glob("events.out.tfevents.*"))
    loaded, config, meta = ck.load_model(tmp_path, "tokenizer", lambda d: TinyAE(TinyConfig(**d)))  # noqa: F821
    assert config == {"channels": 8} and meta["step"] == 60 and meta["samples"] == 60 * 16
    assert meta["train"]["steps"] == 60 and "mse" in meta["metrics"]
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k]), k


def test_resume_continues_from_checkpoint(tmp_path: Path):
    model = fresh()
    out1 = train(model, "tokenizer", model.cfg, make_batches(), BASE, tmp_path, progress=False)  # noqa: F821
    assert out1["step"] == 20
    state = torch.load(tmp_path / TRAIN_STATE, map_location="cpu", weights_only=True)
    assert state["step"] == 20 and len(state["rng"]) == 1
    assert int(state["optimizer"]["state"][0]["step"]) == 20
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    # a differently initialised model: the weights must come from model.safetensors
    model2 = fresh(seed=123)
    seen = {}

    def batches(rank, world, seed):
        seen["seed"] = seed
        seen["weights_equal"] = all(torch.equal(v, saved[k]) for k, v in model2.state_dict().items())
        return make_batches()(rank, world, seed)  # noqa: F821

    steps_done = []
    out2 = train(model2, "tokenizer", model2.cfg, batches, replace(BASE, steps=40), tmp_path, progress=False,
                 on_checkpoint=lambda m, s: steps_done.append(s))
    assert seen["weights_equal"] and seen["seed"] != BASE.seed  # resumed weights, fresh data stream
    assert out2["step"] == 40 and steps_done == [40]
    state = torch.load(tmp_path / TRAIN_STATE, map_location="cpu", weights_only=True)
    assert state["step"] == 40
    assert int(state["optimizer"]["state"][0]["step"]) == 40  # the optimizer state was loaded, not fresh
    assert out2["minutes"] >= out1["minutes"]
    assert ck.read_model_info(tmp_path)["meta"]["samples"] == 40 * 16

    # nothing left to do: no steps, files untouched
    mtime = (tmp_path / ck.WEIGHTS).stat().st_mtime_ns
    out3 = train(fresh(), "tokenizer", TinyConfig(), make_batches(), replace(BASE, steps=40), tmp_path,  # noqa: F821
                 progress=False)
    assert out3["step"] == 40 and (tmp_path / ck.WEIGHTS).stat().st_mtime_ns == mtime


def test_resume_refuses_other_model(tmp_path: Path):
    model = fresh()
    train(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=2), tmp_path, progress=False)  # noqa: F821
    other = fresh(channels=4)
    with pytest.raises(ResumeError, match="channels: 8 -> 4"):
        train(other, "tokenizer", other.cfg, make_batches(), BASE, tmp_path, progress=False)  # noqa: F821
    with pytest.raises(ResumeError, match="holds a tokenizer checkpoint, this run trains a world_model"):
        train(fresh(), "world_model", model.cfg, make_batches(), BASE, tmp_path, progress=False)  # noqa: F821


def test_max_minutes_is_a_total_budget(tmp_path: Path):
    model = fresh()
    cfg = replace(BASE, steps=1_000_000, max_minutes=0.004)  # 0.24 s
    out = train(model, "tokenizer", model.cfg, make_batches(), cfg, tmp_path, progress=False)  # noqa: F821
    assert out["stopped"] == "time" and 0 < out["step"] < 1_000_000
    assert out["minutes"] >= 0.004
    meta = ck.read_model_info(tmp_path)["meta"]
    assert meta["step"] == out["step"]
    again = train(fresh(), "tokenizer", model.cfg, make_batches(), cfg, tmp_path, progress=False)  # noqa: F821
    assert again["step"] == out["step"] and again["stopped"] == "time"


def test_periodic_checkpoints(tmp_path: Path):
    model = fresh()
    ckpts = []
    cfg = replace(BASE, steps=6, checkpoint_minutes=1e-6)
    train(model, "tokenizer", model.cfg, make_batches(), cfg, tmp_path, progress=False,  # noqa: F821
          on_checkpoint=lambda m, s: ckpts.append(s))
    assert ckpts == [1, 2, 3, 4, 5, 6]


def test_sigint_checkpoints_at_step_boundary(tmp_path: Path):
    model = fresh()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell

    def batches(rank, world, seed):
        for i, b in enumerate(make_batches()(rank, world, seed)):  # noqa: F821
            if i == 4:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while fetching step 5's batch
            yield b

    with pytest.raises(KeyboardInterrupt):
        train(model, "tokenizer", model.cfg, batches, BASE, tmp_path, progress=False)
    assert ck.read_model_info(tmp_path)["meta"]["step"] == 5
    assert torch.load(tmp_path / TRAIN_STATE, weights_only=True)["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_keyboard_interrupt_from_data_checkpoints(tmp_path: Path):
    model = fresh()

    def batches(rank, world, seed):
        for i, b in enumerate(make_batches()(rank, world, seed)):  # noqa: F821
            if i == 3:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        train(model, "tokenizer", model.cfg, batches, BASE, tmp_path, progress=False)
    assert ck.read_model_info(tmp_path)["meta"]["step"] == 3
    out = train(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=5), tmp_path,  # noqa: F821
                progress=False)
    assert out["step"] == 5


def test_non_finite_loss_keeps_last_checkpoint(tmp_path: Path):
    model = fresh()
    train(model, "tokenizer", model.cfg, make_batches(), replace(BASE, steps=2), tmp_path, progress=False)  # noqa: F821
    sha = ck.read_model_info(tmp_path)["weights"]["sha256"]

    def batches(rank, world, seed):
        for i, b in enumerate(make_batches()(rank, world, seed)):  # noqa: F821
            yield {"x": b["x"] * float("nan")} if i == 1 else b

    with pytest.raises(TrainingError, match="loss became non-finite at step 4 .*last good checkpoint "
                                            r"\(step 2\) .* is kept") as e:
        train(model, "tokenizer", model.cfg, batches, BASE, tmp_path, progress=False)
    assert "\n" not in str(e.value)
    assert ck.read_model_info(tmp_path)["weights"]["sha256"] == sha


DDP_SCRIPT = '''
import hashlib, os, sys
import torch
from gaia_gym.train.loop import TrainConfig, train

out = sys.argv[1]
torch.manual_seed(int(os.environ["RANK"]))  # different init per rank: DDP must broadcast rank 0's
model = TinyAE(TinyConfig())
cfg = TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2, log_every=5, image_every=0, bf16=False,
                  checkpoint_minutes=60, threads=1)
res = train(model, "tokenizer", model.cfg, make_batches(8), cfg, out, progress=False)
h = hashlib.sha256()
for p in model.parameters():
    h.update(p.detach().contiguous().numpy().tobytes())
with open(os.path.join(out, f"rank{os.environ['RANK']}.txt"), "w") as f:
    f.write(f"{res['step']} {h.hexdigest()}")
'''


def test_ddp_two_process_smoke(tmp_path: Path):
    script = tmp_path / "ddp_train.py"
    script.write_text(TINY_MODEL_SRC + DDP_SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU + gloo even on a GPU machine
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(out)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (out / "rank0.txt").read_text().split(), (out / "rank1.txt").read_text().split()
    assert r0[0] == r1[0] == "10"
    assert r0[1] == r1[1]  # identical parameters on both ranks
    info = ck.read_model_info(out)
    assert info["meta"]["step"] == 10 and info["meta"]["world_size"] == 2
    assert info["meta"]["samples"] == 10 * 8 * 2
    state = torch.load(out / TRAIN_STATE, weights_only=True)
    assert len(state["rng"]) == 2
    h = hashlib.sha256()
    model, _, _ = ck.load_model(out, "tokenizer", lambda d: TinyAE(TinyConfig(**d)))  # noqa: F821
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    assert h.hexdigest() == r0[1]  # the checkpoint is what the ranks ended with
