"""GaiaHighway-v0: the highway-env world model as a Gymnasium environment, with scene conditions.

The same API shape as GaiaDrive-v0 (one `Imagination` engine underneath; `GaiaDriveVectorEnv` /
`GaiaDriveVecEnv` take the highway model too), plus reset options that choose the scene:

    import gymnasium as gym, gaia_gym
    env = gym.make("GaiaHighway-v0")
    obs, info = env.reset(seed=0)                                   # a real context clip (its metadata)
    obs, info = env.reset(options={"metadata": {"scenario": "highway", "lanes": "4", "density": "high"}})
    obs, info = env.reset(options={"text": "a roundabout with light traffic", "negative": "dense traffic"})
    obs, info = env.reset(options={"vehicles": [[12.0, 0.0, -2.0, 0.0], [20.0, 4.0, 0.0, 0.0]]})
    obs, reward, terminated, truncated, info = env.step([0.0, 0.6])  # straight, 0.8 x 40 m/s target
"""

from __future__ import annotations

from typing import Any

import torch

from gaia_gym.envs.core import check_options, public_obs
from gaia_gym.envs.gaia_drive import GaiaDriveEnv
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import SCENE_OPTIONS


class GaiaHighwayEnv(GaiaDriveEnv):
    """Drive in the highway-env world model's imagination (see GaiaDriveEnv for spaces and most arguments).

    **Action** ``[steering, speed]`` in [-1, 1]: highway-env's ContinuousAction steering command (-1 =
    45 degrees of wheel angle to the left) and a target speed (-1 = 0 .. +1 = 40 m/s), as the dataset
    records them (`gaia_gym.models.layout.HIGHWAY_CODEC`).

    **Reward / termination**: the learned heads, trained on highway-env's reward (speed, lane, collision
    terms) and its crash termination.

    **Reset options** (``reset(options=...)``):

    - ``prompt``: index of a real context clip of the model's prompt bank (default: drawn); the clip's
      recorded metadata conditions the rollout;
    - ``metadata``: {field: value} scene metadata (fields and values: ``env.unwrapped.conditions.fields``,
      e.g. scenario highway/merge/roundabout/intersection, lanes 1-4, density low/medium/high);
    - ``text`` / ``negative``: a text prompt and a negative prompt (with ``guidance`` > 1 and "text" in
      ``guide``: classifier-free guidance away from the negative prompt, GAIA-1's negative prompting);
    - ``vehicles``: other vehicles to place, rows [x, y, vx, vy, cos_h, sin_h, length, width] relative to
      the ego in metres and m/s (x forward along the road, y to the right; trailing fields may be left
      out), conditioning the next ``agent_steps`` frames (default 1; they move at their velocity).

    Given ``metadata``, ``text`` or ``vehicles`` without ``prompt``, the scene is generated from the
    conditions alone (the context is hidden from the model) and the observation after reset is the first
    generated frame; with ``prompt`` too, the real clip is the context and the conditions steer what
    follows. ``info["scratch"]`` says which. Unknown fields or values, a vehicle list of the wrong shape,
    a text encoder of the wrong width: one-line `ConfigError`s.

    **Text encoder**: the model's default (trained here on generated scene descriptions: see
    `gaia_gym.models.text` for what it understands) or ``text_encoder=`` any callable mapping a list of
    strings to (N, E) embeddings of the width the model was trained on.
    """

    RESET_OPTIONS = ("prompt", *SCENE_OPTIONS)

    DEFAULT_SETTINGS = {"horizon": 40}

    def __init__(self, model=None, **kwargs) -> None:
        from gaia_gym.envs.real_highway import default_highway_model

        super().__init__(model=model if model is not None or kwargs.get("bundle") is not None
                         else default_highway_model(), **kwargs)
        if self.core.spec is None:
            raise ConfigError(f"{self.core.bundle.path} takes no scene conditions: GaiaHighway-v0 needs a conditioned "
                              "highway-env world model (gaia-gym train world-model on a highway dataset)")

    @property
    def conditions(self):
        """The model's `ConditionSpec` (metadata fields and values, agent fields, text width)."""
        return self.core.spec

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = check_options(options, self.RESET_OPTIONS, "GaiaHighway-v0 reset")
        super(GaiaDriveEnv, self).reset(seed=seed)
        self.core.seed(int(self.np_random.integers(2**62)))
        scene = {k: options[k] for k in SCENE_OPTIONS if k in options}
        scratch = bool({"metadata", "text", "vehicles"} & set(scene)) and options.get("prompt") is None
        obs, prompts = self.core.reset(prompt=options.get("prompt"), scene=scene, scratch=scratch)
        if scratch:  # the first frame generated from the conditions alone, under a cruise action
            cruise = torch.as_tensor(self.codec.encode(0.0, 25.0)[None], device=self.engine.device)
            obs = {k: v for k, v in self.core.step(cruise).obs.items()}
            self.core.steps[:] = 0
            self.engine.steps[:] = 0
        self._needs_reset = False
        if self.render_mode == "human":
            self.render()
        return public_obs({k: v[0] for k, v in obs.items()}), {"prompt": int(prompts[0]), "scratch": scratch}

