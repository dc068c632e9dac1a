"""The image tokenizer: quantizers, shapes, training, evaluation, model files, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import fit
from gaia_gym.checkpoint import load_model, save_model

from gaia_gym.errors import ModelFileError
from gaia_gym.cli import main
from gaia_gym.data import format as fmt
from gaia_gym.metrics import code_stats, psnr_uint8, ssim_uint8
from gaia_gym.models.quantizers import FSQ, L2VQ
from gaia_gym.models.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig, build_tokenizer
from gaia_gym.evaluation.tokenizer import evaluate_tokenizer
from gaia_gym.bundle import load_tokenizer
from gaia_gym.train.tokenizer import tokenizer_config, train_tokenizer
from gaia_gym.train.loop import TrainConfig

TINY = tokenizer_config("tiny")


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    """Structured synthetic 64x64 frames: a grey band (road) on green, shifted per frame."""
    g = np.random.default_rng(seed)
    f = np.zeros((n, 64, 64, 3), np.uint8)
    f[..., 1] = 170
    for i in range(n):
        x = int(g.integers(8, 40))
        f[i, :, x : x + 16] = 105
    return torch.from_numpy(f)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ds")
    m = fmt.new_manifest({"source": "synthetic", "fps": 12.5, "frame_size": 64})
    for i, split in enumerate(["train", "train", "train", "val"]):
        T = 24
        fr = _frames(T + 1, seed=i).numpy()
        arrays = dict(frames=fr[:T], last_frame=fr[T], steering=np.zeros(T), speed_mps=np.zeros(T),
                      target_speed_mps=np.zeros(T), raw_action=np.zeros((T, 3)), reward=np.zeros(T),
                      terminated=np.zeros(T, bool), truncated=np.r_[np.zeros(T - 1, bool), True])
        p = d / fmt.EPISODES / fmt.episode_filename(i)
        p.parent.mkdir(exist_ok=True)
        m["episodes"].append(fmt.write_episode(p, arrays, {"split": split, "seed": i}))
    fmt.write_manifest(d, m)
    return d


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (4, 4), (8, 8, 8, 5, 5, 5)])
def test_fsq_tokens_round_trip(levels):
    q = FSQ(levels)
    z = torch.randn(3, len(levels), 4, 4) * 3
    zq, tokens, aux = q(z)
    assert tokens.shape == (3, 4, 4) and tokens.min() >= 0 and tokens.max() < q.vocab_size
    torch.testing.assert_close(q.embed(tokens), zq)  # tokens carry everything the decoder sees
    assert float(aux) == 0.0
    every = torch.arange(q.vocab_size).view(1, 1, -1)  # every id decodes and re-encodes to itself
    assert torch.equal(q._to_index(torch.round(q.embed(every).permute(0, 2, 3, 1) * q._half_width)), every)


def test_l2vq_codes_are_normalised_and_losses_positive():
    q = L2VQ(32, 8)
    zq, tokens, loss = q(torch.randn(2, 8, 4, 4))
    torch.testing.assert_close(zq.norm(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(q.embed(tokens), zq)
    assert loss > 0


def test_shapes_and_compression_accounting():
    t = Tokenizer(TINY)
    f = _frames(5)
    tokens = t.encode(f)
    assert tokens.shape == (5, TINY.grid, TINY.grid) and tokens.dtype == torch.int64
    out = t.decode(tokens)
    assert out.shape == f.shape and out.dtype == torch.uint8
    d = TokenizerConfig()
    assert d.tokens_per_frame == 64 and d.vocab_size == 1000
    assert d.compression_ratio == pytest.approx(64 * 64 * 3 * 8 / (64 * np.log2(1000)))
    with pytest.raises(ValueError, match="uint8"):
        t.encode(f.float())
    with pytest.raises(ValueError, match="token ids"):
        t.decode(torch.full_like(tokens, TINY.vocab_size))


def test_every_preset_builds_and_round_trips_shapes():
    for name, kw in TOKENIZER_PRESETS.items():
        cfg = TokenizerConfig(**kw)
        t = Tokenizer(cfg).eval()
        tok = t.encode(_frames(2))
        assert tok.shape == (2, cfg.grid, cfg.grid), name
        assert t.decode(tok).shape == (2, 64, 64, 3), name


def test_code_stats_accounting():
    s = code_stats(torch.tensor([4, 0, 4, 0]))
    assert s["codebook_usage"] == 0.5 and s["codes_used"] == 2
    assert s["code_perplexity"] == pytest.approx(2.0)
    assert code_stats(torch.ones(16))["code_perplexity"] == pytest.approx(16.0)


def test_metrics_identity_and_ordering():
    a = _frames(4)
    assert torch.all(psnr_uint8(a, a) >= 99) and torch.allclose(ssim_uint8(a, a), torch.ones(4))
    noisy = (a.float() + torch.randn(a.shape) * 8).clamp(0, 255).to(torch.uint8)
    noisier = (a.float() + torch.randn(a.shape) * 32).clamp(0, 255).to(torch.uint8)
    assert torch.all(psnr_uint8(a, noisy) > psnr_uint8(a, noisier))
    assert torch.all(ssim_uint8(a, noisy) > ssim_uint8(a, noisier))


def test_save_load_round_trip_and_bad_files(tmp_path):
    t = Tokenizer(TINY).eval()
    save_model(tmp_path / "tok", t, "tokenizer", TINY, meta={"note": "test"})
    t2 = load_tokenizer(tmp_path / "tok")
    for (k, v), (k2, v2) in zip(t.state_dict().items(), t2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    f = _frames(3)
    assert torch.equal(t.encode(f), t2.encode(f))
    with pytest.raises(ModelFileError, match="expected a world_model"):
        load_model(tmp_path / "tok", "world_model", build_tokenizer)
    with pytest.raises(ModelFileError, match="nothere"):
        load_tokenizer(tmp_path / "nothere")
    w = tmp_path / "tok" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="model.safetensors|tok"):
        load_tokenizer(tmp_path / "tok")
    # the CLI turns it into one line and exit code 2
    assert main(["eval", "tokenizer", "--data", str(tmp_path), "--model", str(tmp_path / "tok"), "--quiet"]) == 2


class _Teacher(nn.Module):
    """A small frozen 'feature extractor' standing in for DINO."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 12, 4, stride=4), nn.ReLU(), nn.Conv2d(12, 12, 2, stride=2))

    def forward(self, x):
        return self.net(x)


def test_distillation_term_trains_towards_teacher():
    torch.manual_seed(0)
    cfg = tokenizer_config("tiny", distill_weight=1.0, distill_dim=12)
    t = Tokenizer(cfg, teacher=_Teacher())
    first, m = fit(t, {"frames": _frames(16)}, steps=40, lr=3e-3)
    assert m["distill"] < first["distill"]
    assert not any(p.requires_grad for p in t.teacher.parameters())
    with pytest.raises(ValueError, match="distill"):
        Tokenizer(tokenizer_config("tiny"), teacher=_Teacher())


def test_tiny_training_lowers_loss_resumes_and_evaluates(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    tc = TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=2, log_every=5, image_every=15,
                     channels_last=True, checkpoint_minutes=10)
    r = train_tokenizer(tiny_dataset, out, preset="tiny", train_cfg=tc, progress=False)
    assert r["step"] == 30
    r2 = train_tokenizer(tiny_dataset, out, preset="tiny", train_cfg=TrainConfig(**{**tc.__dict__, "steps": 40}),
                         progress=False)
    assert r2["step"] == 40  # continued, not restarted
    model = load_tokenizer(out)
    untrained = Tokenizer(TINY).eval()
    ev = evaluate_tokenizer(model, tiny_dataset, split="val", progress=False)
    ev0 = evaluate_tokenizer(untrained, tiny_dataset, split="val", progress=False)
    assert ev["frames"] == 24 and ev["psnr_db"] > ev0["psnr_db"] + 3
    for k in ("psnr_db", "ssim", "codebook_usage", "code_perplexity", "bits_per_frame", "compression_ratio",
              "encode_frames_per_s", "decode_frames_per_s"):
        assert k in ev
    assert main(["eval", "tokenizer", "--data", str(tiny_dataset), "--model", str(out), "--split", "all",
                 "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["frames"] == 4 * 24


def test_ddp_two_process_training(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "gaia_gym.cli", "train", "tokenizer", "--data", str(tiny_dataset), "--out", str(out),
           "--preset", "tiny", "--steps", "6", "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "config.json").read_text())
    assert info["kind"] == "tokenizer" and info["meta"]["step"] == 6
    load_tokenizer(out)


def test_default_tokenizer_ships_and_loads():
    from gaia_gym.bundle import DEFAULT_TOKENIZER

    if not (DEFAULT_TOKENIZER / "config.json").exists():
        pytest.skip("no default tokenizer in this checkout")
    t = load_tokenizer()  # no path: the shipped weights
    assert t.cfg == TokenizerConfig() and t.cfg.compression_ratio >= 150
    from gaia_gym.sims.carracing import CarRacingDrive

    drive = CarRacingDrive()
    frames = [drive.reset(seed=2_000_001)]
    for _ in range(3):
        frames.append(drive.step(0.1, 40.0).frame)
    drive.close()
    f = torch.from_numpy(np.stack(frames))  # real CarRacing frames from a track nobody collected
    tokens = t.encode(f)
    assert tokens.shape == (4, 8, 8)
    assert psnr_uint8(t.decode(tokens), f).mean() > 30


def test_saliency_weight_counts_coloured_pixels_more():
    """The highway preset's per-pixel weight: the same error costs more on a coloured pixel (a vehicle)
    than on the grey road, and a weight of 0 is plain L1/L2."""
    import torch

    from gaia_gym.models.tokenizer import Tokenizer, TokenizerConfig, TOKENIZER_PRESETS

    assert TOKENIZER_PRESETS["highway"]["saliency_weight"] > 0
    frames = torch.full((2, 64, 64, 3), 100, dtype=torch.uint8)
    frames[:, 10:13, 20:28] = torch.tensor([100, 200, 255], dtype=torch.uint8)  # a blue car

    def loss(weight, where):
        tok = Tokenizer(TokenizerConfig(enc_channels=(8, 8, 8), dec_channels=(8, 8, 8), fsq_levels=(4, 4),
                                        saliency_weight=weight))
        x = tok.to_input(frames)
        target = x.clone()
        err = torch.zeros_like(x)
        err[:, :, where[0], where[1]] = 0.5  # the same error on 24 pixels
        tok.forward = lambda inp: type("O", (), {"recon": target + err, "quant_loss": torch.zeros(()),
                                                 "tokens": torch.zeros(1, dtype=torch.long), "z_q": None})()
        return tok.compute_loss({"frames": frames})[1]["l1"]

    car, road = (slice(10, 13), slice(20, 28)), (slice(40, 43), slice(20, 28))
    assert loss(30.0, car) > 5 * loss(30.0, road)
    assert loss(0.0, car) == pytest.approx(loss(0.0, road))
