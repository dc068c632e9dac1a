"""PMPO (gaia_gym.rl.pmpo): the sign-of-advantage update learns, its KL term pulls towards the prior as
stated, it saves and resumes as itself; ActionRange.rescale_policy keeps a policy's physical actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from gaia_gym.errors import ConfigError
from gaia_gym.rl.agent import ActionRange, agent_algo, algo_class, load_agent
from gaia_gym.rl.pmpo import PMPO, gaussian_kl, sign_loss


class Target(gym.Env):
    """One-step bandit: reward -|a - target|^2 (the best action is `target`)."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, target=(0.6, -0.4)) -> None:
        self.target = np.asarray(target, np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, a):
        r = -float(((np.clip(a, -1, 1) - self.target) ** 2).sum())
        return self.observation_space.sample(), r, True, False, {}


def _agent(**kw) -> PMPO:
    env = DummyVecEnv([Target for _ in range(8)])
    return PMPO("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=4, learning_rate=3e-3, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]}, **kw)


def _mean_action(agent) -> np.ndarray:
    obs = np.random.default_rng(1).uniform(-1, 1, (64, 3)).astype(np.float32)
    return agent.predict(obs, deterministic=True)[0].mean(0)


def _return(agent) -> float:
    return float(np.mean([Target().step(a)[1] for a in agent.predict(
        np.random.default_rng(2).uniform(-1, 1, (64, 3)).astype(np.float32), deterministic=True)[0]]))


def test_gaussian_kl_is_the_closed_form_of_torch():
    g = torch.Generator().manual_seed(0)
    mu, mu0 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    ls, ls0 = 0.3 * torch.randn(5, 2, generator=g), 0.3 * torch.randn(5, 2, generator=g)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu, ls.exp()),
                                             torch.distributions.Normal(mu0, ls0.exp())).sum(-1)
    assert torch.allclose(gaussian_kl(mu, ls, mu0, ls0), want, atol=1e-5)
    assert torch.allclose(gaussian_kl(mu, ls, mu, ls), torch.zeros(5), atol=1e-6)


def test_sign_loss_raises_good_actions_lowers_bad_ones_and_stops_outside_the_trust_region():
    lp = torch.zeros(4, requires_grad=True)
    adv = torch.tensor([2.0, 0.1, -0.1, -5.0])  # only the signs matter
    sign_loss(lp, torch.ones(4), adv, alpha=0.5, clip_range=0.2).backward()
    assert torch.allclose(lp.grad, torch.tensor([-0.25, -0.25, 0.25, 0.25]))  # each side averaged on its own
    lp.grad = None
    ratio = torch.tensor([1.5, 1.0, 0.5, 1.0])  # the first already raised, the third already lowered enough
    sign_loss(lp, ratio, adv, alpha=0.5, clip_range=0.2).backward()
    assert torch.allclose(lp.grad, torch.tensor([0.0, -0.5, 0.0, 0.5]))


def test_pmpo_learns_the_best_action():
    agent = _agent(kl_coef=0.0)
    before = _return(agent)
    agent.learn(8192)
    after = _return(agent)
    assert after > before + 0.3 and after > -0.05, (before, after)
    assert np.allclose(_mean_action(agent), [0.6, -0.4], atol=0.2)


def test_the_kl_term_pulls_towards_the_prior_as_stated():
    """A prior that prefers the opposite action: with a strong KL the policy stays near it, without one it
    goes to the reward's optimum; the logged KL is the closed form between the two Gaussians."""
    prior_agent = _agent(kl_coef=0.0)
    with torch.no_grad():  # prior mean -0.6, +0.4 everywhere, std 0.2
        prior_agent.policy.action_net.weight.zero_()
        prior_agent.policy.action_net.bias.copy_(torch.tensor([-0.6, 0.4]))
        prior_agent.policy.log_std.fill_(np.log(0.2))
    strong = _agent(kl_coef=5.0, prior=prior_agent.policy)
    strong.learn(4096)
    free = _agent(kl_coef=0.0, prior=prior_agent.policy)
    free.learn(4096)
    target, prior = np.array([0.6, -0.4]), np.array([-0.6, 0.4])
    assert np.abs(_mean_action(strong) - prior).sum() < np.abs(_mean_action(strong) - target).sum()
    assert np.abs(_mean_action(free) - target).sum() < np.abs(_mean_action(free) - prior).sum()
    obs = torch.as_tensor(np.random.default_rng(3).uniform(-1, 1, (16, 3)).astype(np.float32))
    d = strong.policy.get_distribution(obs).distribution
    want = gaussian_kl(d.mean, d.stddev.log(), torch.tensor([-0.6, 0.4]).expand(16, 2),
                       torch.full((16, 2), np.log(0.2)))
    assert torch.allclose(strong._prior_kl(obs, strong.policy.get_distribution(obs)), want, atol=1e-5)


def test_critic_warmup_leaves_the_actor_alone():
    agent = _agent(critic_warmup=2)
    actor = {k: v.clone() for k, v in agent.policy.state_dict().items() if not k.startswith(("value_net", "mlp_extractor.value"))}
    critic = agent.policy.value_net.weight.clone()
    agent.learn(2 * 8 * 32)  # two rollouts: warm-up only
    now = agent.policy.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in actor.items())
    assert not torch.equal(critic, agent.policy.value_net.weight)


def test_pmpo_saves_loads_as_itself_and_drives_as_ppo(tmp_path):
    agent = _agent()
    agent.learn(256)
    agent.save(tmp_path / "a.zip")
    assert agent_algo(tmp_path / "a.zip") == "pmpo"
    again = load_agent(tmp_path / "a.zip", device="cpu")
    assert isinstance(again, PMPO) and again._prior is None and again.kl_coef == agent.kl_coef
    obs = np.zeros((4, 3), np.float32)
    ppo = PPO.load(tmp_path / "a.zip", device="cpu")
    assert np.allclose(ppo.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])
    assert algo_class("pmpo") is PMPO
    with pytest.raises(ConfigError):
        _agent(alpha=1.5)


def test_rescale_policy_keeps_the_physical_actions():
    agent = _agent()
    with torch.no_grad():
        agent.policy.action_net.bias.copy_(torch.tensor([0.1, -0.2]))
    narrow, wide = ActionRange((-1, -1), (1, 0.6)), ActionRange((-1, -1), (1, 1.0))
    obs = np.random.default_rng(4).uniform(-1, 1, (32, 3)).astype(np.float32)
    before = narrow(agent.predict(obs, deterministic=True)[0])
    std_before = agent.policy.log_std.exp().detach().numpy() * (narrow.high - narrow.low) / 2
    narrow.rescale_policy(agent.policy, wide)
    after = wide(agent.predict(obs, deterministic=True)[0])
    std_after = agent.policy.log_std.exp().detach().numpy() * (wide.high - wide.low) / 2
    assert np.allclose(before, after, atol=1e-5)
    assert np.allclose(std_before, std_after, atol=1e-6)
