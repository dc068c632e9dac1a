"""GaiaDrive-v0: the world model as a Gymnasium environment.

An episode is imagined: it starts from a real context clip of the model's prompt bank and every next
frame is sampled by the world model given the agent's action. The environment is a thin layer over one
`gaia_gym.imagination.Imagination` engine (one row); see `GaiaDriveVectorEnv` (Gymnasium, many rows
on one engine) and `GaiaDriveVecEnv` (Stable-Baselines3) for the batched adapters.

    import gymnasium as gym, gaia_gym
    env = gym.make("GaiaDrive-v0", obs_mode="tokens+features")
    env = gym.make("GaiaDrive-v0", model="gaia_gym/assets/flow_world_model")   # the continuous (GAIA-2) model
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step([0.0, 0.2])   # straight, ~60 m/s target
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from gaia_gym.envs.config import EngineConfig, engine_config
from gaia_gym.envs.core import ImaginedBatch, RewardFn, check_options, public_obs
from gaia_gym.errors import ConfigError
from gaia_gym.models.layout import check_action


class GaiaDriveEnv(gym.Env):
    """Drive in the world model's imagination.

    **Action** ``Box(-1, 1, (2,), float32)`` = ``[steering, speed]`` (the `ActionCodec` units):

    - ``steering``: CarRacing-v3's steer command, -1 = full left, +1 = full right;
    - ``speed``: the target speed tracked by the car's low-level controller over the step, linear from
      -1 = 0 m/s (stand still) to +1 = ``max_speed_mps`` of the model's codec (100 m/s by default).

    Finite values outside [-1, 1] are clipped (checked in float64: 1e39 is clipped too); NaN/inf, a shape
    other than (2,), or anything but real numbers (None, strings, ragged lists, ints too large for a
    float) raise `gaia_gym.errors.ConfigError` (a ValueError).
    ``info["steering"]`` and ``info["speed_mps"]`` report the applied action in physical units.

    **Observation** ``Dict`` with the keys chosen by ``obs_mode`` ("all" = all three, or "+"-joined keys
    such as "tokens+features"); a single key ("tokens", "features", "frame") gives that key's ``Box`` and
    the bare array instead of a one-key Dict (so SB3's ``MlpPolicy`` and ``FilterObservation`` users take it):

    - ``tokens``: ``Box(0, vocab-1, (g, g), int64)``: the tokenizer codes of the current imagined frame
      (a discrete, GAIA-1 model);
    - ``latents`` in place of ``tokens`` for a flow (GAIA-2) model: ``Box(-20, 20, (C, h, w), float32)``,
      the VAE latents of the current imagined frame in units of the latent space's global std (the
      shipped flow model: (64, 4, 4));
    - ``frame``: ``Box(0, 255, (H, W, 3), uint8)``: the decoded RGB frame (decoded only when observed or
      rendered);
    - ``features``: ``Box(-inf, inf, (d,), float32)``: the world model's hidden state observed with the
      frame (its memory after the last step, World Models' h_t).

    **Reward**: the world model's learned reward head (expected reward of the transition), or
    ``reward_fn(tokens, action, features) -> float`` when given (the new frame's tokens (g, g) int64, the
    clipped action (2,) float32, the new features (d,) float32).

    **Episode end**: ``terminated`` when the learned end head's probability exceeds ``end_threshold``
    (``info["end_prob"]``); ``truncated`` after ``horizon`` steps (``horizon=None``: never). Stepping
    after either without ``reset()`` raises RuntimeError.

    **Reset**: ``reset(seed=...)`` seeds the engine's torch generator from ``self.np_random``, so one seed
    gives one identical imagined rollout (for the same actions). ``options={"prompt": i}`` starts from
    clip ``i`` of the prompt bank (default: drawn at random); ``info["prompt"]`` tells which. Options
    that are not a dict (or None), or hold another key, raise `ConfigError`.

    **Model**: ``model`` is a world-model directory (default: the shipped model); a missing or wrong path
    raises `gaia_gym.checkpoint.ModelFileError` naming it. ``bundle`` passes an already loaded
    `WorldBundle` instead (then ``model`` and ``device`` are ignored: the bundle's device is used).
    The engine settings (``horizon``, ``temperature``, ``top_k`` (None: the model's default, 50 for a
    token model), ``guidance`` (classifier-free guidance on the action), ``end_threshold``, ``bf16``,
    ``guide``, ``pessimism``) are one `gaia_gym.envs.EngineConfig`: pass ``config=`` or the same names as
    keywords (on top of ``config``); an unknown name or a bad value is a one-line `ConfigError`.
    ``int8=True`` runs the world model's Linear layers in int8 on the CPU (faster, lower precision;
    docs/performance.md measures both); ``model``, ``bundle``, ``int8``, ``cameras`` and ``text_encoder``
    go through `gaia_gym.bundle.load_bundle`, the one builder of a ready model.
    With a camera-rig model (docs/multiview.md) ``frame`` is ``(V, H, W, 3)`` and the tokens ``(V, g, g)``,
    one per camera; ``cameras="front,rear"`` runs the same model over a sub-rig of its cameras.

    **Processes**: ``gym.make_vec("GaiaDrive-v0", n, vectorization_mode="async")`` works with the default
    fork context: an env built in a forked process runs torch on one thread (torch's OpenMP pool hangs
    in a forked child once the parent has used it). ``make_vec``'s default, the vector entry point
    (`GaiaDriveVectorEnv`: n rows of one batched engine in this process), needs no processes at all.

    **Render** (``render_mode``): "rgb_array" returns the current frame enlarged 4x with an overlay
    (steering, target speed m/s, last reward, step); "human" shows it in a pygame window.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 12}
    RESET_OPTIONS = ("prompt",)

    DEFAULT_SETTINGS: dict = {}  # engine settings this env's default differs in (GaiaHighway: horizon 40)

    def __init__(self, model=None, obs_mode: str = "all", render_mode: str | None = None,
                 reward_fn: RewardFn | None = None, config: EngineConfig | None = None, *, bundle=None,
                 device: str | torch.device = "cpu", int8: bool = False, cameras=None, text_encoder=None,
                 **settings) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']} or None, "
                              f"got {render_mode!r}")
        config = engine_config(config, settings, **self.DEFAULT_SETTINGS)
        self.core = ImaginedBatch(1, model=model, obs_mode=obs_mode, reward_fn=reward_fn, config=config,
                                  device=device, bundle=bundle, int8=int8, cameras=cameras, text_encoder=text_encoder)
        self.obs_mode, self.horizon, self.render_mode = obs_mode, self.core.horizon, render_mode
        self.observation_space = self.core.single_observation_space
        self.action_space = self.core.single_action_space
        self._needs_reset = True
        self._viewer = None

    @property
    def engine(self):
        """The `Imagination` engine (one row) behind this env."""
        return self.core.engine

    @property
    def codec(self):
        return self.core.codec

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = check_options(options, self.RESET_OPTIONS, "GaiaDrive-v0 reset")
        super().reset(seed=seed)
        self.core.seed(int(self.np_random.integers(2**62)))
        obs, prompts = self.core.reset(prompt=options.get("prompt"))
        self._needs_reset = False
        if self.render_mode == "human":
            self.render()
        return public_obs({k: v[0] for k, v in obs.items()}), {"prompt": int(prompts[0])}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("GaiaDrive-v0: the episode has ended (or never started): call reset() before step()")
        a = check_action(action)
        tr = self.core.step(torch.from_numpy(a[None]).to(self.engine.device))
        terminated, truncated = bool(tr.terminated[0]), bool(tr.truncated[0])
        self._needs_reset = terminated or truncated
        if self.render_mode == "human":
            self.render()
        return public_obs({k: v[0] for k, v in tr.obs.items()}), float(tr.reward[0]), terminated, truncated, tr.info(0)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("GaiaDrive-v0: render() called without a render_mode (pass render_mode='rgb_array')")
            return None
        img = self.core.images("GaiaDrive-v0")[0]
        if self.render_mode == "rgb_array":
            return img
        if self._viewer is None:
            from gaia_gym.envs.render import Viewer

            self._viewer = Viewer("GaiaDrive-v0", self.metadata["render_fps"])
        self._viewer.show(img)
        return None

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
        super().close()
