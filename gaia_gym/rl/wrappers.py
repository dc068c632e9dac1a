"""SB3 VecEnv wrappers for training in imagination: the agent's action range, and the behaviour-prior term."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper

from gaia_gym.errors import ConfigError
from gaia_gym.rl.agent import ActionRange
from gaia_gym.rl.prior import prior_mean, prior_penalty


class RangedVecEnv(VecEnvWrapper):
    """Applies an `ActionRange` to the agent's actions before the wrapped VecEnv sees them."""

    def __init__(self, venv, action_range: ActionRange) -> None:
        super().__init__(venv)
        self.action_range = action_range

    def reset(self):
        return self.venv.reset()

    def step_async(self, actions) -> None:
        self.venv.step_async(self.action_range(actions))

    def step_wait(self):
        return self.venv.step_wait()


class PriorRewardVecEnv(VecEnvWrapper):
    """Adds `prior_penalty` (the frozen prior's action mean mu0(s) vs the agent's raw action) to every
    reward: the agent sees it, an inner VecMonitor's episode returns do not; ``infos[i]["prior_penalty"]``."""

    def __init__(self, venv, prior_policy, coef: float, std: float = 0.3) -> None:
        if coef < 0 or std <= 0:
            raise ConfigError(f"prior term needs coef >= 0 and std > 0, got coef={coef}, std={std}")
        super().__init__(venv)
        self.prior_policy, self.coef, self.std = prior_policy, float(coef), float(std)

    def reset(self):
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions) -> None:
        self._mu0 = prior_mean(self.prior_policy, self._obs)
        self._u = np.asarray(actions, np.float32)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rew, done, infos = self.venv.step_wait()
        pen = prior_penalty(self._u, self._mu0, self.coef, self.std)
        for i, info in enumerate(infos):
            info["prior_penalty"] = float(pen[i])
        self._obs = obs
        return obs, rew + pen, done, infos


def ranged_vec_env(venv, action_range: ActionRange) -> RangedVecEnv:
    """`venv` with `action_range` applied to the agent's actions."""
    return RangedVecEnv(venv, action_range)


def prior_reward_env(venv, prior_policy, coef: float, std: float = 0.3) -> PriorRewardVecEnv:
    """`venv` (fed the agent's raw actions) with the prior term added to every reward."""
    return PriorRewardVecEnv(venv, prior_policy, coef, std)


__all__ = ["PriorRewardVecEnv", "RangedVecEnv", "prior_reward_env", "ranged_vec_env"]
