"""The world model: layout and codec, KV-cache decoding, sampling, training, model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaia_gym.checkpoint import load_model, save_model
from gaia_gym.models.layout import ActionCodec, TokenLayout
from gaia_gym.models.world_model import (
    WORLD_MODEL_PRESETS,
    KVCache,
    WorldModel,
    WorldModelConfig,
    build_world_model,
    make_sampler,
    symexp,
    symlog,
    two_hot,
)


def tiny(**kw) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], **kw})).eval()


def clip(m: WorldModel, B: int = 3, T: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = m.cfg
    tok = torch.randint(0, c.vocab, (B, T, c.grid, c.grid), generator=g)
    act = torch.rand(B, T, c.action_dim, generator=g) * 2 - 1
    return tok, act


def test_layout_slices_partition_a_block():
    L = TokenLayout(image_tokens=16, action_tokens=2, meta_tokens=3)
    idx = list(range(L.block))
    assert idx[L.meta_slice] + idx[L.image_slice] + idx[L.action_slice] == idx
    assert L.memory_index == L.block - 1 and L.kind_ids().tolist().count(1) == 16


def test_action_codec_round_trip_and_clipping():
    c = ActionCodec(max_speed_mps=100.0)
    a = c.encode(np.array([-1.0, 0.25, 1.0]), np.array([0.0, 50.0, 100.0]))
    np.testing.assert_allclose(a, [[-1, -1], [0.25, 0], [1, 1]])
    s, v = c.decode(a)
    np.testing.assert_allclose(s, [-1, 0.25, 1])
    np.testing.assert_allclose(v, [0, 50, 100], atol=1e-4)
    np.testing.assert_allclose(c.encode(3.0, 250.0), [1, 1])  # out of range: clipped


def test_symlog_two_hot():
    x = torch.tensor([-100.0, -0.3, 0.0, 2.5, 140.0])
    torch.testing.assert_close(symexp(symlog(x)), x)
    bins = torch.linspace(-5, 5, 11)
    w = two_hot(symlog(x), bins)
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    torch.testing.assert_close((w * bins).sum(-1), symlog(x))


def test_patching_round_trip():
    m = tiny()
    tok, _ = clip(m)
    assert torch.equal(m.unpatchify(m.patchify(tok)), tok)
    assert m.patchify(tok).shape[2:] == (m.layout.image_tokens, m.cfg.patch**2)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_kv_cache_decoding_equals_full_recomputation(decoding):
    m = tiny(decoding=decoding, context=6)
    tok, act = clip(m, T=5)
    full = m(tok, act)
    tf = m.next_frame_logits(full)  # (B, T-1, P, S, V)
    # incremental whole blocks
    c = KVCache()
    mem = torch.cat([m(tok[:, t : t + 1], act[:, t : t + 1], cache=c, start_block=t).memory for t in range(5)], 1)
    torch.testing.assert_close(mem, full.memory, atol=1e-5, rtol=1e-4)
    # generation through step(): a "sampler" that records logits and returns the real next tokens
    c = KVCache()
    m.prefill(c, tok[:, :1], act[:, :1])
    for t in range(4):
        target = m.patchify(tok[:, t + 1 : t + 2])[:, 0]  # (B, P, S)
        seen = []

        def teacher(logits, target=target, seen=seen):
            seen.append(logits)
            return target if logits.dim() == 4 else target[:, len(seen) - 1]

        nxt, memory, reward, end = m.step(c, t, tok[:, t], act[:, t], teacher)
        logits = seen[0] if decoding == "parallel" else torch.stack(seen, dim=1)
        torch.testing.assert_close(logits, tf[:, t].float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(memory, full.memory[:, t], atol=1e-5, rtol=1e-4)
        assert torch.equal(nxt, tok[:, t + 1])


def test_sliding_window_keeps_cost_bounded():
    m = tiny(context=4)
    tok, act = clip(m, B=2, T=1)
    c = KVCache()
    samp = make_sampler(0.0)
    t0 = tok[:, 0]
    for t in range(30):
        t0, *_ = m.step(c, t, t0, act[:, 0], samp)
        assert c.length <= m.window * m.layout.block
    assert int(c.pos.min()) > 20  # old blocks were dropped


def test_seeded_sampling_is_reproducible():
    m = tiny()
    tok, act = clip(m, T=2)

    def roll(seed):
        c = KVCache()
        g = torch.Generator().manual_seed(seed)
        samp = make_sampler(1.0, top_k=5, generator=g)
        m.prefill(c, tok, act)
        t = tok[:, -1]
        out = []
        for i in range(4):
            t, *_ = m.step(c, 1 + i, t, act[:, -1], samp)
            out.append(t)
        return torch.stack(out)

    assert torch.equal(roll(1), roll(1))
    assert not torch.equal(roll(1), roll(2))


def test_guidance_changes_logits_only_when_not_one():
    m = tiny()
    with torch.no_grad():
        m.null_action.add_(1.0)  # make the unconditional branch differ
    tok, act = clip(m, T=2)
    outs = {}
    for g in (1.0, 3.0):
        c = KVCache()
        m.prefill(c, tok, act)
        seen = []
        m.step(c, 1, tok[:, 1], act[:, 1], lambda lg, seen=seen: seen.append(lg) or lg.argmax(-1), guidance=g)
        outs[g] = seen[0]
    assert not torch.allclose(outs[1.0], outs[3.0])


def test_tiny_training_lowers_loss():
    torch.manual_seed(0)
    m = WorldModel(WorldModelConfig(**WORLD_MODEL_PRESETS["tiny"])).train()
    # a learnable world: the next frame is the current one shifted by the sign of the steering
    B, T, g = 16, 4, m.cfg.grid
    first = torch.randint(0, m.cfg.vocab, (B, 1, g, g))
    act = torch.zeros(B, T, 2)
    act[..., 0] = torch.where(torch.rand(B, 1) < 0.5, -1.0, 1.0)
    frames = [first]
    for t in range(1, T):
        frames.append(torch.roll(frames[-1], shifts=1, dims=-1) if act[0, 0, 0] > 0 else torch.roll(frames[-1], -1, -1))
    shift = torch.where(act[:, 0, 0] > 0, 1, -1)
    tok = torch.stack([torch.stack([torch.roll(first[b, 0], int(shift[b]) * t, dims=-1) for t in range(T)])
                       for b in range(B)])
    batch = {"tokens": tok, "actions": act, "reward": torch.ones(B, T), "terminated": torch.zeros(B, T)}
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    losses = []
    for _ in range(60):
        loss, metrics = m.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["reward_mae"] < 0.5


def test_save_load_round_trip(tmp_path):
    m = tiny()
    save_model(tmp_path / "wm", m, "world_model", m.cfg)
    m2, cfg, _ = load_model(tmp_path / "wm", "world_model", build_world_model)
    tok, act = clip(m)
    torch.testing.assert_close(m(tok, act).image_logits, m2(tok, act).image_logits)
    assert WorldModelConfig(**cfg) == m.cfg


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="decoding"):
        WorldModel(WorldModelConfig(decoding="diffusion"))
    with pytest.raises(ValueError, match="patch"):
        WorldModel(WorldModelConfig(grid=8, patch=3))


# ---- the factorized ("digits") image head -------------------------------------------------------
def digits_model(**kw) -> WorldModel:
    return tiny(vocab=16, code_levels=(4, 4), **kw)


def test_digits_match_the_fsq_tokenizer_index_order():
    from gaia_gym.models.quantizers import FSQ

    m = tiny(vocab=1000, code_levels=(8, 5, 5, 5))
    q = FSQ((8, 5, 5, 5))
    ids = torch.arange(1000)
    d = m.to_digits(ids)
    assert torch.equal(m.from_digits(d), ids)
    # FSQ.embed places digit i on channel i: the same digits, as centred values
    zq = q.embed(ids.view(1, 1, -1))[0, :, 0]  # (D, 1000)
    half = torch.tensor([4.0, 2, 2, 2])[:, None]
    torch.testing.assert_close(zq * half + half, d.T.float())


def test_digits_head_nll_is_the_sum_of_digit_cross_entropies_and_greedy_is_per_digit_argmax():
    m = digits_model()
    assert m.head.out_features == m.S * 8
    logits = torch.randn(3, 5, 8)
    target = torch.randint(0, 16, (3, 5))
    nll, ok = m.image_nll(logits, target)
    d = m.to_digits(target)
    ref = (torch.nn.functional.cross_entropy(logits[..., :4].reshape(-1, 4), d[..., 0].flatten(), reduction="none")
           + torch.nn.functional.cross_entropy(logits[..., 4:].reshape(-1, 4), d[..., 1].flatten(), reduction="none"))
    torch.testing.assert_close(nll.flatten(), ref)
    greedy = m.sample_ids(logits, make_sampler(0.0))
    assert torch.equal(greedy, m.from_digits(torch.stack([logits[..., :4].argmax(-1), logits[..., 4:].argmax(-1)], -1)))
    assert torch.equal(ok, greedy == target)
    # the digits' distribution is a distribution over codes: probabilities of all 16 codes sum to 1
    lp = -m.image_nll(logits[0, 0].expand(16, 8), torch.arange(16))[0]
    torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0))


def test_digits_head_kv_cache_matches_full_recomputation_and_trains():
    m = digits_model(context=6)
    tok, act = clip(m, T=5)
    full = m(tok, act)
    greedy_full = m.sample_ids(m.next_frame_logits(full), make_sampler(0.0))  # (B, T-1, P, S)
    c = KVCache()
    m.prefill(c, tok[:, :1], act[:, :1])
    for t in range(4):
        nxt, *_ = m.step(c, t, tok[:, t], act[:, t], make_sampler(0.0))
        assert torch.equal(m.patchify(nxt[:, None])[:, 0], greedy_full[:, t])
    m.train()
    batch = {"tokens": tok, "actions": act, "reward": torch.zeros(3, 5), "terminated": torch.zeros(3, 5)}
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    first = None
    for _ in range(40):
        loss, metrics = m.compute_loss(batch)
        first = first if first is not None else metrics["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["ce"] < 0.5 * first


def test_digits_head_levels_must_match_the_vocabulary():
    with pytest.raises(ValueError, match="code_levels"):
        WorldModelConfig(vocab=1000, code_levels=(8, 8))


def test_cache_clone_never_shares_memory_even_when_full():
    from gaia_gym.models.world_model import KVCache

    c = KVCache()
    for b in range(2):  # 2 x 32 tokens fill the first allocation (64) exactly: the live part is the whole buffer
        k = torch.randn(2, 1, 32, 4)
        c.reserve(32)
        c.write(0, k, k)
        c.commit(torch.full((32,), b), torch.arange(32))
    assert c.start == 0 and c.end == c.k[0].shape[2]
    d = c.clone()
    assert d.k[0].data_ptr() != c.k[0].data_ptr() and torch.equal(d.keys(0), c.keys(0))
    d.k[0].zero_()
    assert c.keys(0).abs().sum() > 0


def test_token_noise_corrupts_inputs_at_the_drawn_rate_and_leaves_targets_clean():
    m = tiny(token_noise=0.5).train()
    tok, act = clip(m, B=64, T=4)
    torch.manual_seed(1)
    noisy = m.noisy_tokens(tok)
    changed = (noisy != tok).float().flatten(1).mean(1)  # per clip
    assert noisy.shape == tok.shape and noisy.dtype == tok.dtype
    assert 0.15 < float(changed.mean()) < 0.35  # E[U(0, 0.5)] * (1 - 1/vocab) = 0.25
    assert float(changed.max()) < 0.8 and float(changed.std()) > 0.05  # one rate per clip, not one for all
    # the loss reads clean targets: with noise off the same call is the plain loss
    batch = {"tokens": tok, "actions": act, "reward": torch.zeros(64, 4), "terminated": torch.zeros(64, 4)}
    clean = tiny(token_noise=0.0).train()
    clean.load_state_dict(m.state_dict())
    torch.manual_seed(2)
    loss_clean, _ = clean.compute_loss(batch)
    torch.manual_seed(2)
    loss_noisy, _ = m.compute_loss(batch)
    assert torch.isfinite(loss_noisy) and not torch.equal(loss_clean, loss_noisy)
    m.eval()  # evaluation never corrupts
    out1, out2 = m.forward(tok, act), m.forward(tok, act)
    assert torch.equal(out1.memory, out2.memory)
