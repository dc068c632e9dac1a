"""The continuous (GAIA-2) half: the VAE, the flow-matching world model, its backend behind the engine and
the envs, training verbs and model files."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from conftest import fit, make_dataset
from gaia_gym.backends.flow import FlowBackend
from gaia_gym.bundle import load_bundle, save_bundle
from gaia_gym.testing import tiny_flow_bundle
from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.imagination import Imagination
from gaia_gym.models.flow import FLOW_PRESETS, FlowConfig, FlowMemory, FlowWorldModel, sample_tau, step_index
from gaia_gym.models.vae import VAE, VAE_PRESETS, VAEConfig


@pytest.fixture(scope="module")
def flow_bundle():
    return tiny_flow_bundle()


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory, flow_bundle) -> Path:
    return save_bundle(flow_bundle, tmp_path_factory.mktemp("flow") / "fw")


def _batch(cfg: FlowConfig, B: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    T = cfg.context
    return {"latents": torch.randn(B, T, *cfg.latent_shape, generator=g),
            "actions": torch.rand(B, T, 2, generator=g) * 2 - 1,
            "reward": torch.randn(B, T, generator=g), "terminated": torch.zeros(B, T)}


# ---- the objective -------------------------------------------------------------------------------
def test_tau_sampler_is_bimodal():
    cfg = FlowConfig(**FLOW_PRESETS["tiny"])
    tau = sample_tau(20000, cfg, generator=torch.Generator().manual_seed(0))
    assert ((tau > 0) & (tau < 1)).all()
    # the near-noise mode (p 0.2 at logit mean -3) puts clearly more than a logit-normal(0.5, 1.4) alone below 0.1
    low = float((tau < 0.1).float().mean())
    unimodal = float((torch.sigmoid(0.5 + 1.4 * torch.randn(20000, generator=torch.Generator().manual_seed(1))) < 0.1).float().mean())
    assert low > unimodal + 0.1


def test_flow_and_shortcut_losses_fall():
    torch.manual_seed(0)
    cfg = FlowConfig(**{**FLOW_PRESETS["tiny"], "shortcut_fraction": 0.5})
    m = FlowWorldModel(cfg).train()
    batch = _batch(cfg)
    batch["latents"] = batch["latents"][:, :1].expand_as(batch["latents"]).contiguous()  # a still scene: learnable
    first, met = fit(m, batch, steps=60, lr=3e-3)
    assert "shortcut_loss" in met
    assert met["flow_loss"] < 0.7 * first["flow_loss"]
    assert met["reward_loss"] < first["reward_loss"]


def test_step_index_maps_step_sizes():
    cfg = FlowConfig(**FLOW_PRESETS["tiny"])  # 4 levels: d = 1, 1/2, 1/4, 1/8
    assert [step_index(k, cfg) for k in (1, 2, 4, 8, 16)] == [1, 2, 3, 4, 0]
    assert step_index(4, cfg, plain=True) == 0
    assert step_index(3, cfg) == 0


# ---- generation ----------------------------------------------------------------------------------
def test_kv_cache_equals_recomputation():
    torch.manual_seed(0)
    cfg = FlowConfig(**FLOW_PRESETS["tiny"])
    m = FlowWorldModel(cfg).eval()
    for p in m.parameters():  # zero-initialised gates would hide mistakes
        p.data.add_(torch.randn_like(p) * 0.05)
    b = _batch(cfg, B=3)
    lat, act = b["latents"], b["actions"]
    T = cfg.context
    pos = torch.arange(T)
    full = m.run(lat, m.condition(torch.ones(3, T), torch.zeros(3, T, dtype=torch.long), act, None), pos, None, None, pos[:0])
    mem = FlowMemory()
    f = m.prefill(mem, lat[:, :3], act[:, :3])
    assert torch.allclose(f, full.memory[:, 1], atol=1e-5)
    noise = torch.randn(3, *cfg.latent_shape)
    nxt, feats, _r, _e = m.step(mem, 2, lat[:, 2], act[:, 2], noise, steps=1)
    assert torch.allclose(feats, full.memory[:, 2], atol=1e-5)
    # the generated frame equals one Euler step of the teacher-forced pass over the same noised frame
    prev = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], 1)
    noisy = torch.zeros_like(lat)
    noisy[:, 3] = noise
    o = m.run(lat, m.condition(torch.ones(3, T), torch.zeros(3, T, dtype=torch.long), act, None), pos, noisy,
              m.condition(torch.zeros(3, T), torch.full((3, T), 1), prev, None), pos)
    assert torch.allclose(nxt, noise + o.velocity[:, 3], atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_few_step_sampling_shapes_and_seeds(flow_bundle, steps):
    be = FlowBackend(flow_bundle.world_model, flow_bundle.tokenizer, steps=steps)
    runs = []
    for seed in (0, 0, 1):
        eng = Imagination(be, n=3, seed=seed, prompts=flow_bundle.prompts)
        eng.reset()
        out = [eng.step(torch.zeros(3, 2)).latents for _ in range(3)]
        runs.append(torch.stack(out))
    assert runs[0].shape == (3, 3, *be.latent_shape) and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_zero_temperature_is_deterministic_and_guidance_runs(flow_bundle):
    be = FlowBackend(flow_bundle.world_model, flow_bundle.tokenizer, steps=2)
    outs = []
    for seed, guidance in ((0, 1.0), (5, 1.0), (0, 3.0)):
        eng = Imagination(be, n=2, seed=seed, temperature=0.0, guidance=guidance, prompts=flow_bundle.prompts)
        eng.reset(prompt=torch.tensor([0, 1]))
        outs.append(eng.step(torch.tensor([[1.0, 0.5], [-1.0, 0.0]])).latents)
    assert torch.equal(outs[0], outs[1])  # no noise: the seed does not matter
    assert outs[2].shape == outs[0].shape and torch.isfinite(outs[2]).all()


# ---- the VAE -------------------------------------------------------------------------------------
def test_vae_shapes_window_and_scale():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(**VAE_PRESETS["tiny"]))
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    z = vae.encode(frames)
    assert z.shape == (5, *vae.cfg.latent_shape) and z.dtype == torch.float32
    assert vae.decode(z).shape == (5, 64, 64, 3)
    video = vae.decode_video(z[None])
    assert video.shape == (1, 5, 64, 64, 3) and video.dtype == torch.uint8
    # the first frame of a video has no past: it decodes as a lone frame
    assert torch.equal(video[0, 0], vae.decode(z[:1])[0])
    with pytest.raises(ConfigError, match="latents must be"):
        vae.decode(torch.zeros(2, 3, 4, 4))
    before = float(vae.latent_std)
    vae.train()
    loss, met = vae.compute_loss({"frames": frames.view(5, 1, 64, 64, 3).expand(5, 2, 64, 64, 3)})
    loss.backward()
    assert float(vae.latent_std) != before and {"l1", "l2", "kl", "psnr"} <= met.keys()


def test_vae_past_dropout_reaches_lone_frames():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(**{**VAE_PRESETS["tiny"], "past_dropout": 1.0})).train()
    x = torch.randn(2, 3, *vae.cfg.latent_shape)
    w = vae._window(x)
    assert w.shape[1] == vae.cfg.latent_channels * vae.cfg.decode_window
    # fewer latents than the window: the oldest is repeated
    short = vae._window(x[:, :1])
    assert torch.equal(short[:, : vae.cfg.latent_channels], short[:, vae.cfg.latent_channels :])


# ---- model directories and envs -------------------------------------------------------------------
def test_flow_bundle_round_trip(flow_bundle, flow_dir):
    b = load_bundle(flow_dir)
    assert b.kind == "flow_world_model" and isinstance(b.backend, FlowBackend)
    for a, c in zip(flow_bundle.world_model.state_dict().values(), b.world_model.state_dict().values()):
        assert torch.equal(a, c)
    assert torch.equal(b.prompts.tokens, flow_bundle.prompts.tokens)
    assert float(b.tokenizer.latent_std) == float(flow_bundle.tokenizer.latent_std)


def test_env_checkers_on_flow_model(flow_dir, headless):
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make("GaiaDrive-v0", model=str(flow_dir), horizon=8)
    obs, _ = env.reset(seed=0)
    assert obs["latents"].dtype == np.float32 and obs["latents"].shape == (4, 4, 4)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check(gym.make("GaiaDrive-v0", model=str(flow_dir), horizon=8, obs_mode="latents+features").unwrapped)
    with pytest.raises(ConfigError, match="latents"):
        gym.make("GaiaDrive-v0", model=str(flow_dir), obs_mode="tokens+features")


def test_vec_env_and_policy_on_latents(flow_dir):
    from stable_baselines3 import PPO

    from gaia_gym.envs.sb3 import GaiaDriveVecEnv
    from gaia_gym.rl.extractor import policy_kwargs

    bundle = load_bundle(flow_dir)
    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="latents+features", horizon=6)
    agent = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1,
                policy_kwargs=policy_kwargs(bundle, net_arch=[16]))
    agent.learn(16)
    obs = venv.reset()
    act, _ = agent.predict(obs, deterministic=True)
    assert act.shape == (2, 2)


def test_bad_flow_model_files(flow_dir, tmp_path, model_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(flow_dir, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json"):
        load_bundle(bad)
    with pytest.raises(ModelFileError, match="not a world model"):
        load_bundle(flow_dir / "tokenizer")  # the VAE given as a world model
    mixed = tmp_path / "mixed"
    shutil.copytree(flow_dir, mixed)
    shutil.rmtree(mixed / "tokenizer")
    shutil.copytree(model_dir / "tokenizer", mixed / "tokenizer")  # a discrete tokenizer beside a flow model
    src = json.loads((mixed / "sources.json").read_text())
    src["tokenizer_sha256"] = json.loads((mixed / "tokenizer" / "config.json").read_text())["weights"]["sha256"]
    (mixed / "sources.json").write_text(json.dumps(src))
    with pytest.raises(ModelFileError, match="reads a vae"):
        load_bundle(mixed)


def test_train_and_eval_verbs_on_tiny_presets(tmp_path):
    from gaia_gym.cli import main

    data = make_dataset(tmp_path / "data", train=(40,) * 4, val=(40,) * 2)
    assert main(["train", "vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--preset", "tiny",
                 "--steps", "4", "--quiet"]) == 0
    assert main(["train", "flow-world-model", "--data", str(data), "--vae", str(tmp_path / "vae"), "--out",
                 str(tmp_path / "fw"), "--preset", "tiny", "--steps", "4", "--quiet"]) == 0
    assert main(["train", "flow-world-model", "--data", str(data), "--vae", str(tmp_path / "vae"), "--out",
                 str(tmp_path / "fw"), "--preset", "tiny", "--steps", "6", "--quiet"]) == 0  # resumes
    info = json.loads((tmp_path / "fw" / "config.json").read_text())
    assert info["kind"] == "flow_world_model" and info["meta"]["step"] == 6
    out = tmp_path / "eval.json"
    assert main(["eval", "world-model", "--data", str(data), "--model", str(tmp_path / "fw"), "--max-clips", "2",
                 "--real-seconds", "0", "--throughput-seconds", "0", "--steps-sweep", "1", "2", "--quiet",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["quality_by_sampling_steps"]) == {"shortcut", "flow_matching"}
    assert "val_flow_loss" in r and "flicker" in r and "psnr_by_horizon" in r
    # flow-only options on a discrete model: a one-line error before any work
    from gaia_gym.bundle import save_bundle
    from gaia_gym.testing import tiny_bundle

    disc = save_bundle(tiny_bundle(), tmp_path / "disc")
    assert main(["eval", "world-model", "--data", str(data), "--model", str(disc), "--steps-sweep", "1",
                 "--quiet"]) == 2
    assert main(["eval", "vae", "--data", str(data), "--model", str(tmp_path / "vae"), "--max-clips", "2", "--quiet",
                 "--json", str(tmp_path / "vae.json")]) == 0
    assert "flicker_windowed" in json.loads((tmp_path / "vae.json").read_text())


def test_planner_on_flow_model(flow_bundle):
    from gaia_gym.rl.planner import Planner, PlannerConfig

    planner = Planner(flow_bundle, PlannerConfig(candidates=4, horizon=2, samples=1, iterations=1, elites=2))
    eng = Imagination(flow_bundle, n=1, seed=0)
    eng.reset()
    a = planner.plan(eng.state())
    assert a.shape == (2,) and torch.isfinite(torch.as_tensor(a)).all()


def test_sampling_defaults_come_from_the_config(flow_bundle):
    import dataclasses

    wm = flow_bundle.world_model
    assert FlowBackend(wm, flow_bundle.tokenizer).plain is False
    flow_cfg = dataclasses.replace(wm.cfg, sampling_embedding="flow", sampling_steps=4)
    other = FlowWorldModel(flow_cfg)
    other.load_state_dict(wm.state_dict())
    be = FlowBackend(other, flow_bundle.tokenizer)
    assert be.plain is True and be.steps == 4
    assert FlowBackend(other, flow_bundle.tokenizer, plain=False, steps=1).plain is False
    with pytest.raises(ConfigError, match="sampling_embedding"):
        dataclasses.replace(wm.cfg, sampling_embedding="euler")


def test_shipped_flow_model_loads_and_imagines():
    from gaia_gym.bundle import DEFAULT_FLOW_WORLD_MODEL

    b = load_bundle(DEFAULT_FLOW_WORLD_MODEL)
    assert b.kind == "flow_world_model" and b.backend.latent_shape == (64, 4, 4)
    eng = Imagination(b, n=8, seed=0, temperature=0.0)
    eng.reset(prompt=torch.arange(8))
    out = eng.step(b.prompts.actions[:8, -1])  # the real action after the context
    assert out.latents.shape == (8, 64, 4, 4) and torch.isfinite(out.latents).all()
    # a trained model: the next frame is closer to the real continuation than the real frame before it
    # is (greedy, one step); an untrained or mis-loaded model is not
    real, last = b.prompts.next_tokens[:8, 0], b.prompts.tokens[:8, -1]
    assert float((out.latents - real).pow(2).mean()) < float((last - real).pow(2).mean())


def test_memory_compaction_and_growth_change_nothing(flow_bundle):
    """A memory forced to compact and grow (capacity 1) gives the same rollout as a roomy one."""
    wm, cfg = flow_bundle.world_model, flow_bundle.world_model.cfg
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 3, *cfg.latent_shape, generator=g)
    act = torch.rand(2, 12, 2, generator=g) * 2 - 1
    noise = torch.randn(12, 2, *cfg.latent_shape, generator=g)
    outs = []
    for cap in (1, 64):
        mem = FlowMemory(capacity=cap)
        wm.prefill(mem, lat, act[:, :3])
        cur, seq = lat[:, -1], []
        for t in range(10):
            cur, _f, _r, _e = wm.step(mem, 2 + t, cur, act[:, 2 + t], noise[t], steps=2)
            seq.append(cur)
        assert mem.length == wm.window
        outs.append(torch.stack(seq))
    assert torch.equal(outs[0], outs[1])


def test_qk_norm_under_bf16_autocast_uses_the_fused_path(flow_bundle):
    """bf16 queries with float32 norm weights made rms_norm warn and fall back to its slow path."""
    import warnings

    attn = flow_bundle.world_model.blocks[0].spatial
    x = torch.randn(2, 5, flow_bundle.world_model.cfg.d_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, _v = attn.qkv_heads(x)
    assert q.dtype == k.dtype == torch.bfloat16 and torch.isfinite(q.float()).all()
