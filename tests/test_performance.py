"""The engine's speed options and the faster-model pieces (docs/performance.md): int8 Linear layers
(opt-in, both backends), a narrower decoder trained for an existing tokenizer, and the bench's record."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gaia_gym.bundle import load_bundle, load_tokenizer, make_backend, save_bundle
from gaia_gym.testing import tiny_bundle, tiny_flow_bundle
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination
from gaia_gym.models.tokenizer import build_tokenizer
from gaia_gym.precision import int8_linears
from gaia_gym.train.loop import TrainConfig
from gaia_gym.train.tokenizer import decoder_student, tokenizer_config, train_decoder

from conftest import make_dataset


def _rollout(backend, prompts, steps: int = 6, seed: int = 0):
    eng = Imagination(backend, n=4, seed=seed, prompts=prompts)
    eng.reset()
    g = torch.Generator().manual_seed(1)
    lat, rew = [], []
    for _ in range(steps):
        out = eng.step(torch.rand(4, 2, generator=g) * 2 - 1)
        lat.append(out.latents.clone())
        rew.append(out.reward.clone())
    return torch.stack(lat), torch.stack(rew)


@pytest.mark.parametrize("make", [tiny_bundle, tiny_flow_bundle])
def test_int8_backend_is_a_quantized_copy_that_repeats_itself(make):
    b = make()
    before = {k: v.clone() for k, v in b.world_model.state_dict().items()}
    q = make_backend(b.world_model, b.tokenizer, int8=True)
    assert q.int8 and not make_backend(b.world_model, b.tokenizer).int8
    # every Linear of the backend's copy is a dynamically quantized one; the original is untouched
    assert not any(type(m) is nn.Linear for m in q.world_model.modules())
    assert any(type(m) is nn.Linear for m in b.world_model.modules())
    assert all(torch.equal(v, b.world_model.state_dict()[k]) for k, v in before.items())
    l1, r1 = _rollout(q, b.prompts)
    l2, r2 = _rollout(q, b.prompts)
    assert torch.equal(l1, l2) and torch.equal(r1, r2)  # int8 is deterministic too


def test_int8_world_model_stays_close_to_fp32():
    """Quantization error, not a different model: the image logits of one forward agree closely."""
    torch.manual_seed(0)
    wm = tiny_bundle().world_model
    for p in wm.parameters():  # weights of a trained scale, not the 0.02 init (so logits are not ~0)
        p.data.normal_(0, 0.2)
    q = int8_linears(wm)
    tok = torch.randint(0, 16, (2, 4, 4, 4))
    act = torch.rand(2, 4, 2) * 2 - 1
    a, b = wm(tok, act).image_logits.flatten(), q(tok, act).image_logits.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98
    assert not torch.equal(a, b)  # it did quantize


def test_bundle_with_backend_and_env_int8(model_dir):
    b = load_bundle(model_dir)
    q = b.with_backend(int8=True)
    assert q.backend.int8 and not b.backend.int8 and q.world_model is b.world_model
    import gymnasium as gym

    import gaia_gym  # noqa: F401  (registers the envs)

    env = gym.make("GaiaDrive-v0", model=str(model_dir), int8=True, obs_mode="tokens")
    obs, _ = env.reset(seed=0)
    obs2, *_ = env.step(env.action_space.sample())
    assert obs2.shape == obs.shape  # a single key: the bare tokens
    assert env.unwrapped.core.engine.backend.int8
    env.close()


def test_decoder_student_keeps_the_codes_and_trains_only_its_decoder(tmp_path):
    data = make_dataset(tmp_path / "data", train=(40,) * 4, val=(40,) * 2)
    teacher = build_tokenizer(tokenizer_config("tiny")).eval()
    tdir = tmp_path / "teacher"
    from gaia_gym.checkpoint import save_model

    save_model(tdir, teacher, "tokenizer", teacher.cfg)
    with pytest.raises(ConfigError, match="positive widths"):
        decoder_student(teacher, (8, 8))
    out = tmp_path / "student"
    tc = TrainConfig(steps=6, batch_size=8, warmup_steps=1, log_every=2, image_every=0, checkpoint_minutes=5)
    r = train_decoder(data, tdir, out, (8, 8, 4), train_cfg=tc, progress=False)
    assert r["step"] == 6
    student = load_tokenizer(out)
    assert student.cfg.dec_channels == (8, 8, 4) and student.cfg.enc_channels == teacher.cfg.enc_channels
    enc_t, enc_s = teacher.encoder.state_dict(), student.encoder.state_dict()
    assert all(torch.equal(enc_t[k], enc_s[k]) for k in enc_t)  # frozen through training
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(teacher.encode(frames), student.encode(frames))  # same tokens: a drop-in decoder
    assert student.decode(teacher.encode(frames)).shape == (5, 64, 64, 3)


def test_bench_records_the_engine_options(tmp_path, bundle):
    from gaia_gym.verbs.bench import run_bench

    d = save_bundle(bundle, tmp_path / "wm")
    r = run_bench(load_bundle(d).with_backend(int8=True), batch_sizes=(2,), seconds=0.05, real_seconds=0.5,
                  real_processes=1, progress=False)
    assert r["int8"] is True and r["tokens_per_step"] == bundle.world_model.layout.block
    assert r["decoder"] == list(bundle.tokenizer.cfg.dec_channels)
    assert r["batches"]["2"]["tokens_steps_per_s"] > 0
    json.dumps(r)


def test_digit_embedding_is_the_sum_of_per_digit_vectors_and_trains():
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModel, WorldModelConfig

    with pytest.raises(ConfigError, match="needs code_levels"):
        WorldModelConfig(**WORLD_MODEL_PRESETS["tiny"], embedding="digits")
    with pytest.raises(ConfigError, match="embedding must be"):
        WorldModelConfig(**WORLD_MODEL_PRESETS["tiny"], embedding="bytes")
    cfg = WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "code_levels": (4, 4), "embedding": "digits"})
    wm = WorldModel(cfg)
    assert wm.tok_emb.weight.shape[0] == wm.S * 8  # 4 sub-positions x (4 + 4) digit values, not 4 x 16 codes
    ids = torch.randint(0, 16, (3, wm.S))
    w = wm.tok_emb.weight
    want = torch.stack([sum(w[s * 8 + int(c) % 4] + w[s * 8 + 4 + int(c) // 4] for s, c in enumerate(row))
                        for row in ids])
    assert torch.allclose(wm.embed_image(ids), want, atol=1e-6)
    # codes sharing a digit share that digit's vector: only the differing digit's vectors get gradient
    wm.embed_image(torch.tensor([[0, 0, 0, 0]])).sum().backward()
    assert int((w.grad.abs().sum(1) > 0).sum()) == wm.S * 2


def test_export_swaps_in_a_decoder_that_reads_the_same_codes(tmp_path, model_dir, capsys):
    from gaia_gym.checkpoint import ModelFileError, save_model
    from gaia_gym.cli import main

    b = load_bundle(model_dir)
    student = decoder_student(b.tokenizer, (4, 4, 4, 4))
    save_model(tmp_path / "dec", student, "tokenizer", student.cfg)
    other = build_tokenizer(b.tokenizer.cfg)  # fresh weights: another encoder
    save_model(tmp_path / "other", other, "tokenizer", other.cfg)
    assert main(["export", "--model", str(model_dir), "--decoder", str(tmp_path / "dec"), "--out",
                 str(tmp_path / "fast")]) == 0
    fast = load_bundle(tmp_path / "fast")
    assert fast.tokenizer.cfg.dec_channels == (4, 4, 4, 4)
    assert torch.equal(fast.prompts.tokens, b.prompts.tokens)
    assert all(torch.equal(v, b.world_model.state_dict()[k]) for k, v in fast.world_model.state_dict().items())
    with pytest.raises(ModelFileError, match="does not encode frames as this model's does"):
        b.with_decoder(other)
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "fast")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_shipped_fast_model_loads_imagines_and_passes_the_env_checkers():
    import warnings

    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from gaia_gym.bundle import DEFAULT_TOKENIZER, FAST_WORLD_MODEL

    b = load_bundle(FAST_WORLD_MODEL)
    assert b.world_model.layout.block == 6 and b.world_model.cfg.embedding == "digits"
    assert b.tokenizer.cfg.dec_channels == (64, 32, 16)
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(b.tokenizer.encode(frames), load_tokenizer(DEFAULT_TOKENIZER).encode(frames))
    for q in (False, True):
        eng = Imagination(b.with_backend(int8=q), n=8, seed=0, temperature=0.0)
        eng.reset(prompt=torch.arange(8))
        out = eng.step(b.prompts.actions[:8, -1])  # the real action after the context
        # a trained model: its next frame is closer to the real continuation than the last real frame is
        real = eng.frames(b.prompts.next_tokens[:8, 0]).float()
        last = eng.frames(b.prompts.tokens[:8, -1]).float()
        assert float((eng.frames(out.latents).float() - real).pow(2).mean()) < float((last - real).pow(2).mean())
    env = gym.make("GaiaDrive-v0", model=str(FAST_WORLD_MODEL), int8=True, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|-infinity).*")
        check_env(env.unwrapped)
    env.close()


def test_rope_tables_give_the_same_floats_and_int8_refuses_a_non_cpu_model():
    from gaia_gym.models.world_model import rope, rope_tables

    x = torch.randn(2, 4, 12, 16)
    pos = torch.arange(3, 15)
    assert torch.equal(rope(x, pos), rope(x, rope_tables(pos, 16)))
    with pytest.raises(ConfigError, match="CPU only"):
        int8_linears(nn.Linear(4, 4, device="meta"))
