"""GaiaDriveVecEnv: `num_envs` GaiaDrive-v0 episodes as rows of ONE imagination engine, as a
Stable-Baselines3 `VecEnv` (numpy out, SB3's conventions).

    from stable_baselines3 import PPO
    venv = GaiaDriveVecEnv(num_envs=64, obs_mode="tokens+features")
    PPO("MultiInputPolicy", venv).learn(100_000)

SB3 conventions (as its DummyVecEnv): ``step`` returns (obs, rewards (n,) float32, dones (n,) bool,
infos: list of n dicts); ``dones = terminated | truncated``; an ended row is reset automatically within
the step and its last observation is in ``infos[i]["terminal_observation"]``;
``infos[i]["TimeLimit.truncated"]`` is True when the row reached the horizon without terminating. Every
info also carries ``end_prob``, ``steering`` and ``speed_mps`` (the applied action in physical units).
Observations are a dict of numpy arrays with a leading row axis, in the Dict space of `GaiaDriveEnv`
(see it for the action units and the observation keys); a single-key ``obs_mode`` gives the bare array
(num_envs, ...) in that key's Box, as `GaiaDriveEnv` does.

``seed(s)`` (SB3: applied at the next ``reset()``) seeds the shared engine with the first env's seed;
``set_options({"prompt": i})`` picks prompt clips for the next reset (other keys, or options that are
not dicts, raise `gaia_gym.errors.ConfigError`, as do a bad ``num_envs`` and actions that are not
(num_envs, 2) finite real numbers). The n envs are rows of one engine:
``get_attr`` / ``set_attr`` / ``env_method`` act on this VecEnv itself (shared by every index), and no
env is wrapped. ``render()`` tiles the annotated frames of all rows ("rgb_array" returns the image,
"human" shows it in a pygame window).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import tile_images

from gaia_gym.envs.core import ImaginedBatch, RewardFn, check_options, public_obs
from gaia_gym.envs.config import EngineConfig, engine_config
from gaia_gym.imagination import check_count
from gaia_gym.errors import ConfigError
from gaia_gym.models.layout import check_actions


class GaiaDriveVecEnv(VecEnv):
    """`num_envs` imagined GaiaDrive-v0 episodes on one batched engine, for SB3 (see the module doc)."""

    DEFAULT_SETTINGS: dict = {}  # engine settings this env's default differs in (GaiaHighway: horizon 40)

    def __init__(self, num_envs: int = 1, model=None, obs_mode: str = "all", render_mode: str | None = None,
                 reward_fn: RewardFn | None = None, config: EngineConfig | None = None, *, bundle=None,
                 device: str | torch.device = "cpu", int8: bool = False, cameras=None, text_encoder=None,
                 **settings) -> None:
        num_envs = check_count(num_envs)
        if render_mode not in (None, "rgb_array", "human"):
            raise ConfigError(f"render_mode must be 'rgb_array', 'human' or None, got {render_mode!r}")
        config = engine_config(config, settings, **self.DEFAULT_SETTINGS)
        self.core = ImaginedBatch(num_envs, model=model, obs_mode=obs_mode, reward_fn=reward_fn, config=config,
                                  device=device, bundle=bundle, int8=int8, cameras=cameras, text_encoder=text_encoder)
        self.obs_mode, self.horizon, self.render_mode = obs_mode, self.core.horizon, render_mode
        super().__init__(int(num_envs), self.core.single_observation_space, self.core.single_action_space)
        self._actions: torch.Tensor | None = None
        self._needs_reset = True
        self._viewer = None

    @property
    def engine(self):
        """The shared `Imagination` engine (num_envs rows)."""
        return self.core.engine

    # ---- VecEnv API -------------------------------------------------------------------------------
    def reset(self):
        seeds = [s for s in self._seeds if s is not None]
        if seeds:
            self.core.seed(int(seeds[0]))
        prompts = [o.get("prompt") for o in self._options]
        obs, p = self.core.reset(prompt=None if all(x is None for x in prompts) else prompts)
        self.reset_infos = [{"prompt": int(i)} for i in p]
        self._reset_seeds()
        self._reset_options()
        self._needs_reset = False
        return public_obs(obs)

    def set_options(self, options: list[dict] | dict | None = None) -> None:
        """Options for the next reset: one dict for every row, or a list of num_envs dicts; the only key is
        "prompt" (a prompt-bank index). Anything else raises `ConfigError` at once."""
        if isinstance(options, (list, tuple)):
            if len(options) != self.num_envs:
                raise ConfigError(f"GaiaDriveVecEnv set_options: a list of options needs {self.num_envs} dicts "
                                  f"(one per env), got {len(options)}")
            checked = [check_options(o, ("prompt",), "GaiaDriveVecEnv set_options") for o in options]
        else:
            checked = [check_options(options, ("prompt",), "GaiaDriveVecEnv set_options")] * self.num_envs
        super().set_options(checked)

    def step_async(self, actions: np.ndarray) -> None:
        if self._needs_reset:
            raise RuntimeError("GaiaDriveVecEnv: call reset() before step()")
        self._actions = check_actions(actions, self.num_envs, 2, self.core.engine.device)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("GaiaDriveVecEnv: step_wait() without step_async()")
        tr = self.core.step(self._actions)
        self._actions = None
        infos = [tr.info(i) for i in range(self.num_envs)]
        for i, info in enumerate(infos):
            info["TimeLimit.truncated"] = bool(tr.truncated[i] and not tr.terminated[i])
        rows, final, prompts = self.core.autoreset(tr)
        for i, o, p in zip(rows, final, prompts):
            infos[i]["terminal_observation"] = public_obs(o)
            self.reset_infos[i] = {"prompt": int(p)}
        dones = tr.terminated | tr.truncated
        return public_obs(tr.obs), tr.reward.astype(np.float32), dones, infos

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
        self._needs_reset = True

    def _n(self, indices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """The attribute of this VecEnv (shared by all rows), once per index; AttributeError if absent."""
        value = getattr(self, attr_name)
        return [value] * self._n(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Set an attribute of this VecEnv (shared by all rows, whatever `indices`)."""
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        """Call a method of this VecEnv once (the rows share it); its result repeated per index."""
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result] * self._n(indices)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * self._n(indices)

    # ---- rendering --------------------------------------------------------------------------------
    def get_images(self) -> list[np.ndarray]:
        return self.core.images("GaiaDriveVecEnv")

    def render(self, mode: str | None = None) -> np.ndarray | None:
        """The annotated frames of all rows tiled into one image ("rgb_array"), or shown ("human")."""
        mode = mode or self.render_mode
        if mode is None:
            warnings.warn("GaiaDriveVecEnv: render() called without a render_mode")
            return None
        img = tile_images(self.get_images())
        if mode == "rgb_array":
            return img
        if self._viewer is None:
            from gaia_gym.envs.render import Viewer

            self._viewer = Viewer("GaiaDriveVecEnv", 12)
        self._viewer.show(img)
        return None
