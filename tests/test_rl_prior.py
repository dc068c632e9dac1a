"""The behaviour prior (gaia_gym.rl.prior): expert labels, the replayed observations, the fit, the prior term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

from gaia_gym.envs import GaiaDriveVecEnv
from gaia_gym.envs.real import RealCarRacingEnv
from gaia_gym.errors import DatasetError
from gaia_gym.rl.agent import ActionRange
from gaia_gym.rl.extractor import policy_kwargs
from gaia_gym.rl.prior import (discounted_returns, expert_targets, fit_prior, inverse_range, prior_mean, prior_penalty,
                               real_observations)
from gaia_gym.rl.wrappers import prior_reward_env


def test_inverse_range_undoes_the_range():
    rng = ActionRange((-1.0, -1.0), (1.0, 0.6))
    u = np.array([[-1.0, -1.0], [0.3, 0.75], [1.0, 1.0]], np.float32)
    np.testing.assert_allclose(inverse_range(rng, rng(u)), u, atol=1e-6)
    assert inverse_range(rng, np.array([0.0, 0.9]))[1] == 1.0  # beyond the range: clipped


def test_expert_targets_and_missing_labels(bundle):
    rng = ActionRange((-1.0, -1.0), (1.0, 0.6))
    ep = {"expert_steering": np.array([0.5, -2.0]), "expert_speed_mps": np.array([70.0, 0.0])}
    t = expert_targets(ep, bundle.codec, rng)
    np.testing.assert_allclose(t[:, 0], [0.5, -1.0])
    np.testing.assert_allclose(rng(t)[:, 1], bundle.codec.encode(np.zeros(2), np.array([70.0, 0.0]))[:, 1], atol=1e-6)
    with pytest.raises(DatasetError, match="expert_steering"):
        expert_targets({"steering": np.zeros(2)}, bundle.codec, rng)


def test_discounted_returns():
    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


def test_replayed_observations_are_what_the_real_env_sees(bundle):
    """Two episodes replayed together (one shorter: padded) give, step for step, the features that
    RealCarRacingEnv's engine computes one episode at a time from the same frames and actions."""
    from gaia_gym.imagination import Imagination

    rs = np.random.default_rng(0)
    S = bundle.backend.frame_size
    eps = [{"frames": rs.integers(0, 255, (T, S, S, 3), dtype=np.uint8), "steering": rs.uniform(-1, 1, T),
            "target_speed_mps": rs.uniform(0, 80, T)} for T in (7, 4)]
    obs = real_observations(bundle, eps, rows=2, progress=False)
    assert obs["tokens"].shape[0] == obs["features"].shape[0] == 11
    # the second episode alone, as the real env steps it
    e = eps[1]
    eng = Imagination(bundle, n=1, temperature=0.0, end_threshold=1.0)
    tok = eng.encode(torch.from_numpy(e["frames"]))
    C = bundle.prompts.context
    still = torch.as_tensor(bundle.codec.encode(0.0, 0.0))
    _, f = eng.reset(context=(tok[:1][:, None].expand(1, C, *tok.shape[1:]), still.expand(1, C, 2)))
    feats, rews = [f[0]], []
    acts = bundle.codec.encode(e["steering"], e["target_speed_mps"])
    for t in range(3):
        out = eng.step(torch.as_tensor(acts[t : t + 1]), observed=tok[t + 1 : t + 2])
        feats.append(out.features[0])
        rews.append(float(out.reward[0]))
    np.testing.assert_allclose(obs["features"][7:], torch.stack(feats).numpy(), atol=1e-4)
    np.testing.assert_allclose(obs["model_reward"][7:10], rews, atol=1e-4)
    assert np.isnan(obs["model_reward"][[6, 10]]).all() and not np.isnan(obs["model_reward"][:6]).any()
    np.testing.assert_array_equal(obs["tokens"][7:], tok.numpy())


def _agent(model_dir, bundle):
    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="tokens+features", horizon=5)
    return PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, device="cpu",
               policy_kwargs=policy_kwargs(bundle, net_arch=[32])), venv


def test_fit_prior_learns_the_labels_and_scores_held_out(bundle, model_dir):
    """Targets that are a function of the features: the held-out action error falls well below the
    error of predicting their mean, and the log std is set as asked."""
    agent, venv = _agent(model_dir, bundle)
    rs = np.random.default_rng(1)
    d = bundle.backend.feature_dim
    g = bundle.backend.latent_shape

    def make(n):
        f = rs.standard_normal((n, d)).astype(np.float32)
        t = np.tanh(np.stack([f[:, 0], f[:, 1] - f[:, 2]], 1)).astype(np.float32)
        return {"tokens": rs.integers(0, 4, (n, *g)), "features": f, "target": t,
                "returns": (10 * f[:, 3]).astype(np.float32)}

    train, val = make(2000), make(400)
    base = float(((val["target"] - val["target"].mean(0)) ** 2).mean())
    fit = fit_prior(agent, train, val, epochs=15, batch_size=64, lr=3e-3, value_coef=0.5, log_std=-1.5,
                    progress=False)
    assert fit.val_action_mse[-1] < 0.3 * base, (fit.val_action_mse, base)
    assert fit.val_value_mse[-1] < 0.5 * float(val["returns"].var())
    assert torch.allclose(agent.policy.log_std, torch.full_like(agent.policy.log_std, -1.5))
    mu = prior_mean(agent.policy, {k: val[k][:5] for k in ("tokens", "features")})
    assert mu.shape == (5, 2) and np.abs(mu).max() <= 1
    venv.close()


def test_fit_prior_keep_best_restores_the_best_held_out_epoch(bundle, model_dir):
    """Labels that are noise on the training set only: held-out error rises as the fit memorises them;
    keep_best hands back the epoch with the lowest held-out error, and the policy then scores that error."""
    agent, venv = _agent(model_dir, bundle)
    rs = np.random.default_rng(2)
    d, g = bundle.backend.feature_dim, bundle.backend.latent_shape

    def make(n, noise):
        f = rs.standard_normal((n, d)).astype(np.float32)
        t = np.clip(0.5 * np.tanh(f[:, :2]) + noise * rs.standard_normal((n, 2)), -1, 1).astype(np.float32)
        return {"tokens": rs.integers(0, 4, (n, *g)), "features": f, "target": t}

    train, val = make(300, 0.6), make(300, 0.0)
    fit = fit_prior(agent, train, val, epochs=6, batch_size=32, lr=3e-3, progress=False, keep_best=True,
                    weight_decay=0.01)
    best = int(np.argmin(fit.val_action_mse))
    assert fit.best_epoch == best + 1
    import gaia_gym.rl.prior as prior_mod

    mu = prior_mod.prior_mean(agent.policy, {k: val[k] for k in ("tokens", "features")})
    assert float(((mu - val["target"]) ** 2).sum(-1).mean() / 2) == pytest.approx(fit.val_action_mse[best], abs=2e-4)
    venv.close()


def test_prior_penalty_is_zero_at_the_prior_and_grows_with_distance():
    mu0 = np.array([[0.2, 0.5], [0.2, 0.5]], np.float32)
    p = prior_penalty(np.array([[0.2, 0.5], [0.8, 0.5]]), mu0, coef=2.0, std=0.3)
    assert p[0] == 0.0 and p[1] == pytest.approx(-2.0 * 0.36 / (2 * 0.09))
    # the agent's unclipped Gaussian sample is clipped as the env clips it
    assert prior_penalty(np.array([[5.0, 0.5]]), mu0[:1], 1.0, 1.0) == pytest.approx(-0.8**2 / 2)


def test_prior_reward_env_adds_the_term_and_the_monitor_keeps_the_model_reward(bundle, model_dir):
    agent, _ = _agent(model_dir, bundle)
    inner = VecMonitor(GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="tokens+features", horizon=3))
    env = prior_reward_env(inner, agent.policy, coef=1.0, std=0.5)
    obs = env.reset()
    mu0 = prior_mean(agent.policy, obs)
    far = np.clip(mu0 + np.array([1.0, 0.0], np.float32), -1, 1)
    env.step_async(far)
    _, rew, _, infos = env.step_wait()
    pen = np.array([i["prior_penalty"] for i in infos])
    np.testing.assert_allclose(pen, prior_penalty(far, mu0, 1.0, 0.5), rtol=1e-5)
    assert (pen < 0).any()
    raw = rew - pen  # what the world model's reward head gave
    for _ in range(2):  # on to the horizon (3 steps)
        env.step_async(np.zeros((2, 2), np.float32))
        _, rew, _, infos = env.step_wait()
        raw = raw + rew - np.array([i["prior_penalty"] for i in infos])
    ep = [i["episode"]["r"] for i in infos]  # the monitor's episode return has no prior term in it
    np.testing.assert_allclose(ep, raw, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="coef >= 0"):
        prior_reward_env(inner, agent.policy, coef=-1.0)
    env.close()


def test_real_env_steps_match_replay_on_its_own_frames(bundle):
    """Sanity of the seam the prior relies on: the real env's observation at reset is the replay's first."""
    env = RealCarRacingEnv(bundle=bundle, obs_mode="tokens+features")
    obs, _ = env.reset(options={"track": 1_000_000})
    frame = env._frame
    rep = real_observations(bundle, [{"frames": frame[None], "steering": np.zeros(1),
                                      "target_speed_mps": np.zeros(1)}], progress=False)
    np.testing.assert_allclose(rep["features"][0], obs["features"], atol=1e-4)
    env.close()


def test_spatial_extractor_keeps_positions(bundle, model_dir):
    """spatial=k: (P k,) features that change when the same tokens move to other cells (the mean-pool does not)."""
    from gymnasium import spaces

    from gaia_gym.rl.extractor import WorldModelExtractor

    g = bundle.backend.latent_shape[-1]
    space = spaces.Dict({"tokens": spaces.Box(0, 15, (g, g), np.int64)})
    p = bundle.world_model.cfg.patch
    kw = policy_kwargs(bundle)["features_extractor_kwargs"]
    pooled = WorldModelExtractor(space, **kw)
    spatial = WorldModelExtractor(space, **kw, spatial=3)
    assert spatial.features_dim == 3 * (g // p) ** 2
    t = torch.zeros(1, g, g)
    t[0, :p, :p] = 5.0
    moved = torch.roll(t, shifts=(p, p), dims=(1, 2))  # the same patch, another cell
    assert torch.allclose(pooled({"tokens": t}), pooled({"tokens": moved}), atol=1e-6)
    assert not torch.allclose(spatial({"tokens": t}), spatial({"tokens": moved}))
    with pytest.raises(Exception, match="spatial"):
        WorldModelExtractor(spaces.Dict({"features": spaces.Box(-1, 1, (4,), np.float32)}), spatial=2)


def test_per_token_extractor_sees_a_move_within_a_patch(bundle):
    """per_token: (g*g*k,) features, and a code moved to another cell of the same patch changes them (a
    patch's sum of its sub-positions' rows keeps less of where inside the patch a thing is)."""
    from gymnasium import spaces

    from gaia_gym.rl.extractor import WorldModelExtractor

    g = bundle.backend.latent_shape[-1]
    space = spaces.Dict({"tokens": spaces.Box(0, 15, (g, g), np.int64)})
    kw = policy_kwargs(bundle, spatial=2, per_token=True)["features_extractor_kwargs"]
    ex = WorldModelExtractor(space, **kw)
    assert ex.features_dim == 2 * g * g
    t = torch.zeros(1, g, g)
    t[0, 0, 0] = 5.0
    moved = torch.roll(t, shifts=1, dims=2)  # one cell to the right, inside the same patch
    a, b = ex({"tokens": t}), ex({"tokens": moved})
    assert not torch.allclose(a, b)
    assert int((~torch.isclose(a, b)).sum()) <= 4  # only the two cells' own numbers changed
    with pytest.raises(Exception, match="per_token needs spatial"):
        WorldModelExtractor(space, **{**kw, "spatial": 0})


def test_collector_records_the_experts_action_at_every_step():
    from gaia_gym.config import CarRacingCollectConfig
    from gaia_gym.data.collect import EpisodeSpec
    from gaia_gym.sims.carracing_collect import record_carracing_episode

    a, _ = record_carracing_episode(EpisodeSpec(0, 3, "train"), CarRacingCollectConfig(clean_fraction=0.0))
    T = len(a["steering"])
    assert a["expert_steering"].shape == (T,) and T > 200
    assert np.all(np.abs(a["expert_steering"]) <= 1) and np.all(a["expert_speed_mps"] > 0)
    expert = a["behaviour"] == 0
    assert expert.any() and (~expert).any()
    # expert segments execute the label (up to its tiny noise); the perturbed ones do not
    assert np.abs(a["steering"] - a["expert_steering"])[expert].mean() < 0.1
    if (~expert).any():
        assert np.abs(a["steering"] - a["expert_steering"])[~expert].max() > 0.05


def test_rank_correlation():
    from gaia_gym.metrics import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
