"""PMPO: a policy update that keeps a good start, for fine-tuning a behaviour prior in imagination.

PPO's clipped ratio step follows the *size* of each advantage; with a world model's reward head the
sizes are noisy (the head is least right where the agent goes new ways), and a cloned policy that
already drives is easily pushed off its road. PMPO (Abdolmaleki et al., "Preference optimization as
probabilistic inference", 2024; the update Dreamer 4 uses for its imagination stage) uses only the
*sign* of each advantage:

    L_actor = -alpha * mean_{A>0} log pi(a|s) + (1 - alpha) * mean_{A<0} log pi(a|s) + beta * KL(pi || pi0)

Positive actions are made likelier, negative ones less likely, each set averaged on its own (so a
batch of mostly bad actions does not swamp the few good ones), and the reverse KL to the frozen prior
pi0 (closed form for the diagonal Gaussians SB3 uses) is what stops the negative term from pushing the
policy arbitrarily far. On top of that the rollout policy bounds each step: an action whose
probability has already moved by more than ``clip_range`` (ratio outside [1 - clip, 1 + clip]) in the
direction its sign wants gives no more gradient (PPO's trust region, applied to the sign update).

The critic learns on imagined returns (GAE targets, bootstrapped at the horizon by SB3 when an imagined
episode is truncated). ``critic_warmup`` rollouts train the critic alone, through its own head only
(the shared features are detached): a critic that has not yet seen imagined returns would otherwise
hand the actor advantages from the real data's value scale.

`PMPO` is SB3's PPO with this `train()`: rollout collection, saving and loading are SB3's. A zip it saves
loads as PPO for driving (``agent.predict`` is unchanged) and as PMPO for more training
(`gaia_gym.rl.agent.algo_class("pmpo")`).
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance

from gaia_gym.errors import ConfigError


def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor, mu0: torch.Tensor, log_std0: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std) || N(mu0, std0)) per row, summed over action dimensions (diagonal Gaussians)."""
    var, var0 = (2 * log_std).exp(), (2 * log_std0).exp()
    kl = log_std0 - log_std + (var + (mu - mu0) ** 2) / (2 * var0) - 0.5
    return kl.sum(-1)


def sign_loss(log_prob: torch.Tensor, ratio: torch.Tensor, advantages: torch.Tensor, alpha: float,
              clip_range: float) -> torch.Tensor:
    """The PMPO actor term: -alpha * mean log pi over A > 0 + (1 - alpha) * mean log pi over A < 0, each
    action's gradient stopped once its ratio to the rollout policy left [1 - clip, 1 + clip] the way its
    sign pushes it. Zero advantages (and an empty side) contribute nothing."""
    pos, neg = advantages > 0, advantages < 0
    pos = pos & (ratio < 1 + clip_range)  # already made likely enough this update
    neg = neg & (ratio > 1 - clip_range)  # already made unlikely enough this update
    loss = log_prob.new_zeros(())
    if pos.any():
        loss = loss - alpha * log_prob[pos].mean()
    if neg.any():
        loss = loss + (1 - alpha) * log_prob[neg].mean()
    return loss


class PMPO(PPO):
    """PPO's rollouts with the sign-of-advantage update and a reverse KL to a frozen prior policy.

    ``prior``: an SB3 actor-critic policy with the same observation and action spaces (e.g.
    `gaia_gym.rl.prior.load_prior`); None: no KL term (``kl_coef`` is then ignored). ``alpha``: weight of
    the positive side. ``kl_coef``: beta. ``critic_warmup``: rollouts at the start that train the critic
    only. Other arguments are PPO's (``clip_range`` bounds each step as described in the module)."""

    def __init__(self, policy, env, prior=None, alpha: float = 0.5, kl_coef: float = 0.1, critic_warmup: int = 0,
                 **kwargs) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"PMPO alpha must be in [0, 1], got {alpha}")
        if kl_coef < 0 or critic_warmup < 0:
            raise ConfigError(f"PMPO needs kl_coef >= 0 and critic_warmup >= 0, got {kl_coef}, {critic_warmup}")
        self.alpha, self.kl_coef, self.critic_warmup = float(alpha), float(kl_coef), int(critic_warmup)
        self.gaia_algo = "pmpo"
        self._prior = None
        super().__init__(policy, env, **kwargs)
        self.set_prior(prior)

    def set_prior(self, prior) -> None:
        """The frozen policy the KL term pulls towards (not saved with the agent: give it again on resume)."""
        if prior is not None:
            prior.set_training_mode(False)
            for p in prior.parameters():
                p.requires_grad_(False)
        self._prior = prior

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["_prior"]

    def _prior_kl(self, obs, dist) -> torch.Tensor:
        with torch.no_grad():
            d0 = self._prior.get_distribution(obs).distribution
        d = dist.distribution
        return gaussian_kl(d.mean, d.stddev.log(), d0.mean, d0.stddev.log())

    def train(self) -> None:
        """One update on the rollout buffer: the critic on its GAE targets, the actor by `sign_loss` plus
        the KL to the prior (critic only during the warm-up rollouts)."""
        pol = self.policy
        pol.set_training_mode(True)
        self._update_learning_rate(pol.optimizer)
        clip = float(self.clip_range(self._current_progress_remaining))
        warm = self._n_updates < self.critic_warmup * self.n_epochs
        logs: dict[str, list[float]] = {k: [] for k in ("actor", "kl", "value", "positive", "entropy")}
        for _ in range(self.n_epochs):
            for batch in self.rollout_buffer.get(self.batch_size):
                obs, act = batch.observations, batch.actions
                features = pol.extract_features(obs, pol.pi_features_extractor)
                if pol.share_features_extractor:
                    latent_pi, latent_vf = pol.mlp_extractor(features)
                else:
                    latent_pi = pol.mlp_extractor.forward_actor(features)
                    latent_vf = pol.mlp_extractor.forward_critic(
                        pol.extract_features(obs, pol.vf_features_extractor))
                if warm:  # the critic through its own head only: the actor (and shared features) stay put
                    latent_vf = pol.mlp_extractor.forward_critic(features.detach()) \
                        if pol.share_features_extractor else latent_vf
                values = pol.value_net(latent_vf).flatten()
                value_loss = torch.nn.functional.mse_loss(batch.returns, values)
                loss = self.vf_coef * value_loss
                if not warm:
                    dist = pol._get_action_dist_from_latent(latent_pi)
                    log_prob = dist.log_prob(act)
                    ratio = torch.exp(log_prob - batch.old_log_prob)
                    actor = sign_loss(log_prob, ratio.detach(), batch.advantages, self.alpha, clip)
                    loss = loss + actor
                    if self.ent_coef:
                        ent = dist.entropy()
                        loss = loss - self.ent_coef * ent.mean()
                        logs["entropy"].append(ent.mean().item())
                    logs["actor"].append(actor.item())
                    logs["positive"].append(float((batch.advantages > 0).float().mean()))
                    if self._prior is not None and self.kl_coef > 0:
                        kl = self._prior_kl(obs, dist).mean()
                        loss = loss + self.kl_coef * kl
                        logs["kl"].append(kl.item())
                logs["value"].append(value_loss.item())
                pol.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(pol.parameters(), self.max_grad_norm)
                pol.optimizer.step()
            self._n_updates += 1
        for k, v in logs.items():
            if v:
                self.logger.record(f"train/{k}_loss" if k in ("actor", "value") else f"train/{k}", float(np.mean(v)))
        self.logger.record("train/critic_warmup", int(warm))
        self.logger.record("train/explained_variance", explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()))
        if hasattr(pol, "log_std"):
            self.logger.record("train/std", pol.log_std.detach().exp().mean().item())


__all__ = ["PMPO", "gaussian_kl", "sign_loss"]
