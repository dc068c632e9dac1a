"""The imagination engine, the model bundle and the verbs built on them (demo, imagine, play, bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gaia_gym.bundle import PROMPTS, PromptBank, load_bundle, save_bundle
from gaia_gym.errors import ModelFileError
from gaia_gym.cli import main
from gaia_gym.imagination import Imagination
from gaia_gym.errors import ImaginationError


def drive(eng: Imagination, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    outs = []
    for _ in range(steps):
        o = eng.step(torch.rand(eng.n, 2, generator=g) * 2 - 1)
        outs.append((o.latents.clone(), o.reward.clone(), o.features.clone()))
    return outs


def same(a, b) -> bool:
    return all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_reset_and_step_shapes(bundle):
    eng = Imagination(bundle, n=3, seed=0)
    tok, feat = eng.reset()
    assert tok.shape == (3, 4, 4) and tok.dtype == torch.long and feat.shape == (3, eng.feature_dim)
    o = eng.step(torch.zeros(3, 2))
    assert o.latents.shape == (3, 4, 4) and o.reward.shape == (3,) and o.terminated.dtype == torch.bool
    assert int(o.latents.max()) < 16 and eng.frames().shape == (3, 64, 64, 3) and eng.frames().dtype == torch.uint8


def test_seeded_rollouts_reproduce_and_seeds_differ(bundle):
    def run(seed):
        eng = Imagination(bundle, n=2, seed=seed)
        eng.reset()
        return drive(eng, 6)

    assert same(run(1), run(1))
    assert not same(run(1), run(2))


def test_state_restore_and_branch_leave_the_original_untouched(bundle):
    eng = Imagination(bundle, n=2, seed=0)
    eng.reset()
    drive(eng, 3)
    s = eng.state()
    first = drive(eng, 4, seed=5)
    eng.restore(s)
    assert same(first, drive(eng, 4, seed=5))
    # branching row 1 into 5 rows, driving them, then restoring: the original continues as before
    eng.restore(s)
    eng.branch(1, 5)
    assert eng.n == 5 and torch.equal(eng.latents[0], s.latents[1]) and torch.equal(eng.latents[4], s.latents[1])
    drive(eng, 3)
    eng.restore(s)
    assert eng.n == 2 and same(first, drive(eng, 4, seed=5))


def test_partial_reset_leaves_other_rows_unchanged(bundle):
    def run(reset_row: bool):
        eng = Imagination(bundle, n=3, temperature=0.0, seed=0)
        eng.reset(prompt=torch.tensor([0, 1, 2]))
        drive(eng, 5)
        if reset_row:
            eng.reset(rows=torch.tensor([1]), prompt=torch.tensor([3]))
            assert eng.steps.tolist() == [5, 0, 5]
        return drive(eng, 4, seed=3)

    a, b = run(False), run(True)
    for (ta, ra, fa), (tb, rb, fb) in zip(a, b):
        assert torch.equal(ta[[0, 2]], tb[[0, 2]])
        torch.testing.assert_close(fa[[0, 2]], fb[[0, 2]])


def test_partial_reset_equals_a_fresh_start_from_the_same_prompt(bundle):
    # fp32: RoPE is exactly relative only in exact arithmetic; bf16 rounds positions differently
    eng = Imagination(bundle, n=2, temperature=0.0, seed=0, bf16=False)
    eng.reset(prompt=torch.tensor([0, 0]))
    drive(eng, 7)
    eng.reset(rows=torch.tensor([1]), prompt=torch.tensor([4]))
    late = drive(eng, 3, seed=9)
    fresh = Imagination(bundle, n=2, temperature=0.0, seed=0, bf16=False)
    fresh.reset(prompt=torch.tensor([4, 4]))
    early = drive(fresh, 3, seed=9)
    # RoPE is relative: the same prompt at later block indices imagines the same tokens
    for (tl, _, fl), (te, _, fe) in zip(late, early):
        assert torch.equal(tl[1], te[1])
        torch.testing.assert_close(fl[1], fe[1], atol=1e-4, rtol=1e-3)


def test_horizon_truncates_and_long_rollouts_stay_finite_with_bounded_cache(bundle):
    eng = Imagination(bundle, n=2, horizon=3, seed=0)
    eng.reset()
    flags = [bool(eng.step(torch.zeros(2, 2)).truncated[0]) for _ in range(3)]
    assert flags == [False, False, True]
    eng = Imagination(bundle, n=2, seed=0)
    eng.reset()
    sizes = set()
    for _ in range(300):
        o = eng.step(torch.rand(2, 2) * 2 - 1)
        assert torch.isfinite(o.features).all() and torch.isfinite(o.reward).all()
        sizes.add(eng.memory.length)
        cap = eng.memory.k[0].shape[2]
    assert max(sizes) <= eng.backend.world_model.window * eng.backend.world_model.layout.block and cap <= 4 * eng.backend.world_model.window * eng.backend.world_model.layout.block


def test_bad_actions_and_misuse_raise_clear_errors(bundle):
    eng = Imagination(bundle, n=2, seed=0)
    with pytest.raises(ImaginationError, match="reset"):
        eng.step(torch.zeros(2, 2))
    eng.reset()
    with pytest.raises(ValueError, match="NaN"):  # anything but a float32 tensor is checked by the engine
        eng.step([[0.0, float("nan")], [0.0, 0.0]])
    with pytest.raises(ValueError, match="shape"):
        eng.step(torch.zeros(3, 2))
    s = eng.state()
    a = eng.step(torch.tensor([[5.0, -9.0], [1.0, 1.0]])).latents
    eng.restore(s)
    assert torch.equal(a, eng.step(torch.tensor([[1.0, -1.0], [1.0, 1.0]])).latents)  # clipped to [-1, 1]


def test_bundle_round_trip_and_errors(tmp_path, bundle, model_dir):
    b = load_bundle(model_dir)
    assert b.world_model.cfg == bundle.world_model.cfg and len(b.prompts) == len(bundle.prompts)
    assert b.prompts.continuation == bundle.prompts.continuation
    for k, v in bundle.world_model.state_dict().items():
        torch.testing.assert_close(b.world_model.state_dict()[k], v)
    with pytest.raises(ModelFileError, match="no such world-model directory"):
        load_bundle(tmp_path / "nowhere")
    bad = save_bundle(bundle, tmp_path / "bad")
    (bad / PROMPTS).write_bytes(b"not a zip file")
    with pytest.raises(ModelFileError, match="prompt bank"):
        load_bundle(bad)


def test_prompt_bank_from_a_token_file(tmp_path):
    starts = np.array([0, 40, 45, 100])  # the middle episode is too short
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    np.savez(path, tokens=rng.integers(0, 16, (100, 4, 4)).astype(np.uint16),
             actions=rng.uniform(-1, 1, (100, 2)).astype(np.float32), episode_starts=starts)
    bank = PromptBank.from_token_file(path, context=6, n=5, continuation=4)
    assert bank.tokens.shape == (5, 6, 4, 4) and bank.next_tokens.shape == (5, 4, 4, 4)
    with np.load(path) as z:
        toks = z["tokens"]
    # every clip is a real, contiguous stretch of one episode
    flat = [toks[s : s + 10] for s in range(0, 91)]
    for i in range(5):
        clip = torch.cat([bank.tokens[i], bank.next_tokens[i]]).numpy()
        assert any(np.array_equal(clip, f) for f in flat)


def test_demo_play_and_bench_commands(tmp_path, model_dir, capsys):
    gif = tmp_path / "demo.gif"
    assert main(["demo", "--model", str(model_dir), "--out", str(gif), "--steps", "3"]) == 0
    assert gif.stat().st_size > 0 and gif.with_suffix(".png").exists()
    import imageio.v3 as iio

    frames = iio.imread(gif)
    assert frames.shape[0] == 4 + 3  # context frames, then imagined steps
    assert main(["play", "--model", str(model_dir), "--keys", "LR.UD", "--out", str(tmp_path / "p.gif")]) == 0
    assert "drove 5 imagined steps" in capsys.readouterr().out
    assert main(["play", "--model", str(model_dir), "--keys", "LX"]) == 2
    assert main(["demo", "--model", str(tmp_path / "missing"), "--out", str(gif)]) == 2
    assert "missing" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model_dir), "--batch-sizes", "2", "--seconds", "0.2", "--real-seconds", "1",
                 "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["tokens_b2_vs_real"] > 0 and r["frames_b2_vs_real"] > 0 and r["real_driving_s_per_s"] > 0
