"""GaiaDriveVectorEnv: `num_envs` GaiaDrive-v0 episodes as rows of ONE imagination engine (one batched
forward pass per step), as a Gymnasium `VectorEnv`.

    envs = gym.make_vec("GaiaDrive-v0", num_envs=64, vectorization_mode="vector_entry_point")
    obs, infos = envs.reset(seed=0)
    obs, rewards, terminations, truncations, infos = envs.step(np.zeros((64, 2), np.float32))

**Autoreset: SAME_STEP** (``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``). A row that
terminates or truncates is reset inside the same `step` (the engine's partial reset: the other rows go
on untouched); the returned observation of that row is the first one of its new episode, and, as in
Gymnasium's own `SyncVectorEnv` in that mode:

- ``infos["final_obs"]``: an object array (num_envs,) holding the last observation (a dict) of each
  ended row, None elsewhere; ``infos["_final_obs"]`` the bool mask of the ended rows;
- ``infos["final_info"]``: the step info of the ended rows (``end_prob``, ``steering``, ``speed_mps``
  arrays, each with its ``_key`` mask), ``infos["_final_info"]`` the mask;
- the top-level step keys (``end_prob``, ``steering``, ``speed_mps``) are masked to the rows that did
  not end (absent when every row ended); ended rows carry their reset info instead (``prompt``, masked
  by ``_prompt``).

Rewards, terminations and truncations of ended rows are those of their final step.

Spaces: ``single_observation_space`` / ``single_action_space`` are GaiaDrive-v0's (see `GaiaDriveEnv`
for the action units and observation keys; a single-key ``obs_mode`` gives that key's Box, batched); ``observation_space`` / ``action_space`` are batched with
`gymnasium.vector.utils.batch_space`. Actions: (num_envs, 2) in [-1, 1], clipped; NaN/inf, another
shape or anything but real numbers raise `gaia_gym.errors.ConfigError` (a ValueError), as does a
``num_envs`` that is not a positive integer or an unknown reset option. ``reset(seed=...)`` seeds the
shared engine from ``self.np_random``; options
``{"prompt": int or num_envs ints}`` picks prompt clips and ``{"reset_mask": bool array}`` resets only
those rows. `reward_fn`, when given, is called once per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from gaia_gym.envs.core import ImaginedBatch, RewardFn, check_options, public_obs
from gaia_gym.envs.config import EngineConfig, engine_config
from gaia_gym.imagination import check_count
from gaia_gym.errors import ConfigError
from gaia_gym.models.layout import check_actions

STEP_INFO_KEYS = ("end_prob", "steering", "speed_mps")


class GaiaDriveVectorEnv(VectorEnv):
    """`num_envs` imagined GaiaDrive-v0 episodes on one batched engine (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12, "autoreset_mode": AutoresetMode.SAME_STEP}

    DEFAULT_SETTINGS: dict = {}  # engine settings this env's default differs in (GaiaHighway: horizon 40)

    def __init__(self, num_envs: int = 1, model=None, obs_mode: str = "all", render_mode: str | None = None,
                 reward_fn: RewardFn | None = None, config: EngineConfig | None = None, *, bundle=None,
                 device: str | torch.device = "cpu", int8: bool = False, cameras=None, text_encoder=None,
                 **settings) -> None:
        num_envs = check_count(num_envs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']} or None, "
                              f"got {render_mode!r}")
        config = engine_config(config, settings, **self.DEFAULT_SETTINGS)
        self.core = ImaginedBatch(num_envs, model=model, obs_mode=obs_mode, reward_fn=reward_fn, config=config,
                                  device=device, bundle=bundle, int8=int8, cameras=cameras, text_encoder=text_encoder)
        self.num_envs = int(num_envs)
        self.obs_mode, self.horizon, self.render_mode = obs_mode, self.core.horizon, render_mode
        self.single_observation_space = self.core.single_observation_space
        self.single_action_space = self.core.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._needs_reset = True

    @property
    def engine(self):
        """The shared `Imagination` engine (num_envs rows)."""
        return self.core.engine

    def _reset_info(self, rows: np.ndarray, prompts: np.ndarray) -> dict[str, np.ndarray]:
        prompt = np.zeros(self.num_envs, np.int64)
        mask = np.zeros(self.num_envs, bool)
        prompt[rows], mask[rows] = prompts, True
        return {"prompt": prompt, "_prompt": mask}

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every row (or, with ``options["reset_mask"]``, only the masked rows, the others keeping
        their episodes). Returns (batched obs, infos with ``prompt`` / ``_prompt``)."""
        if isinstance(seed, (list, tuple)):  # one seed per sub-env, as SyncVectorEnv takes: one stream here
            seed = None if all(s is None for s in seed) else int(
                np.random.SeedSequence([s for s in seed if s is not None]).generate_state(1, np.uint64)[0] >> 2)
        options = check_options(options, ("prompt", "reset_mask"), "GaiaDriveVectorEnv reset")
        super().reset(seed=seed)
        self.core.seed(int(self.np_random.integers(2**62)))
        mask = options.pop("reset_mask", None)
        prompt = options.pop("prompt", None)
        if mask is not None and not self._needs_reset:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ConfigError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                                 f"got {mask.dtype} {mask.shape}")
            rows = np.flatnonzero(mask)
            if prompt is not None and not np.isscalar(prompt):
                prompt = np.asarray(prompt, dtype=object)[rows]
            _, prompts = self.core.reset(rows, prompt)
            e = self.core.engine
            obs = self.core.observe(e.latents, e.features)
        else:
            rows = np.arange(self.num_envs)
            obs, prompts = self.core.reset(prompt=prompt)
        self._needs_reset = False
        return public_obs(obs), self._reset_info(rows, prompts)

    def step(self, actions):
        """One batched step; rows that end are reset in the same step (SAME_STEP, see the module doc)."""
        if self._needs_reset:
            raise RuntimeError("GaiaDriveVectorEnv: call reset() before step()")
        a = check_actions(actions, self.num_envs, 2, self.core.engine.device)
        tr = self.core.step(a)
        done = tr.terminated | tr.truncated
        step_info = {"end_prob": tr.end_prob, "steering": tr.steering, "speed_mps": tr.speed_mps}
        infos: dict[str, Any] = {}
        if not done.all():  # (as SyncVectorEnv: a key appears only when some row carries it)
            for k, v in step_info.items():
                infos[k], infos[f"_{k}"] = np.where(done, np.zeros_like(v), v), ~done
        if done.any():
            final_info: dict[str, Any] = {}
            for k, v in step_info.items():
                final_info[k] = np.where(done, v, np.zeros_like(v))
                final_info[f"_{k}"] = done.copy()
            rows, final, prompts = self.core.autoreset(tr)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i, o in zip(rows, final):
                final_obs[i] = public_obs(o)
            infos.update(final_obs=final_obs, _final_obs=done.copy(), final_info=final_info,
                         _final_info=done.copy())
            infos.update(self._reset_info(rows, prompts))
        return (public_obs(tr.obs), tr.reward.astype(np.float64), tr.terminated, tr.truncated, infos)

    def render(self) -> tuple[np.ndarray, ...] | None:
        """"rgb_array": a tuple of num_envs enlarged, annotated frames (as SyncVectorEnv returns)."""
        if self.render_mode is None:
            return None
        return tuple(self.core.images("GaiaDriveVectorEnv"))

    def close_extras(self, **kwargs: Any) -> None:
        self._needs_reset = True


class GaiaHighwayVectorEnv(GaiaDriveVectorEnv):
    """`GaiaDriveVectorEnv` over the highway-env world model by default (the vector entry point of
    "GaiaHighway-v0"); prompt-started rows are conditioned on their clip's recorded metadata."""

    DEFAULT_SETTINGS = {"horizon": 40}

    def __init__(self, num_envs: int = 1, model=None, **kwargs) -> None:
        from gaia_gym.envs.real_highway import default_highway_model

        if model is None and kwargs.get("bundle") is None:
            model = default_highway_model()
        super().__init__(num_envs, model=model, **kwargs)

