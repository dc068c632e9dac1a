"""The real CarRacing-v3, seen exactly as GaiaDrive-v0 shows the world: for scoring agents trained in
imagination (and planners) in the real simulator.

Same action space ([steering, speed] in [-1, 1], decoded by the model's `ActionCodec` to a steer command
and a target speed that `CarRacingDrive`'s speed controller tracks, 4 simulator frames per step), same
observation space and keys (`obs_mode`): the real frame (the dataset's 64x64 crop), its tokens from the
model's tokenizer, and the world model's hidden features computed over the *real* history (the engine
is stepped with the real frames' tokens instead of sampling its own). Reward, termination and truncation
are the real simulator's; `info["model_reward"]` is what the world model's reward head predicted for the
same transition (to measure the reward head in closed loop).

The episode starts after CarRacing's zoom-in, with the car standing still: the world model's context is
the first real frame repeated (the prompt length) with "stand still" actions. Track seeds default to
the test range (1,000,000 + n, never collected), drawn from `np_random`; `options={"track": s}` picks one.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gaia_gym.envs.core import action_space, observation_space, parse_obs_mode, public_obs, public_space, to_numpy
from gaia_gym.models.layout import check_action
from gaia_gym.imagination import Imagination
from gaia_gym.media import rig_mosaics
from gaia_gym.seeds import HELD_OUT_FROM
from gaia_gym.sims.carracing import ZOOM_FRAMES
from gaia_gym.sims.rig import Camera, render_rig

ZOOM_PENALTY = -0.1 * ZOOM_FRAMES  # CarRacing's -0.1 per frame over the zoom-in, before the first observation
EPISODE_STEPS_MAX = -(-(1000 - ZOOM_FRAMES) // 4)  # 238: CarRacing stops at 1000 frames; steps of 4 frames after the zoom-in


class RealCarRacingEnv(gym.Env):
    """The real CarRacing-v3, observed exactly as GaiaDrive-v0 observes imagination.

    ## Description
    For scoring agents and planners made in imagination on the real simulator: same action space, same
    observation space and keys, with the world model's features computed over the *real* history.

    ## Action Space
    ``Box(-1, 1, (2,), float32)`` = ``[steering, speed]`` in the model's `ActionCodec` units: steering is
    CarRacing-v3's steer command, speed a target speed (-1 = 0 m/s .. +1 = ``max_speed_mps``) that a
    speed controller with traction control tracks at every simulator frame. Out-of-range values are
    clipped; NaN, inf or a wrong shape raise `gaia_gym.errors.ConfigError`.

    ## Observation Space
    ``Dict`` with the keys of ``obs_mode`` ("all" = tokens (the model's latent key), frame, features):
    the real frame (64x64 crop of the 96x96 observation, HUD removed), its tokens from the model's
    tokenizer, and the world model's hidden features after seeing the real frames so far. With a camera
    rig model the frame is the rig's views (V, 64, 64, 3), rendered by the simulator from the model's
    camera poses (`gaia_gym.sims.rig`), and the tokens (V, 8, 8). A single key (e.g. ``obs_mode="tokens"``)
    gives that key's ``Box`` and the bare array, as GaiaDrive-v0 does.

    ## Rewards
    CarRacing-v3's own: -0.1 per simulator frame and +1000/N per new track tile (summed over the 4
    frames of a step). ``info["model_reward"]`` is the world model's reward head for the same step; ``info``
    also has the step's decoded ``steering``, ``target_speed_mps``, the measured ``speed_mps`` after it and
    the ``raw_action`` ([steer, gas, brake] mean) sent to the simulator, and `frame` is the frame observed
    now: what a recorder needs to write the drive as a dataset episode (`gaia_gym.rl.rounds`).

    ## Starting State
    After CarRacing's 50-frame zoom-in (its -5 reward is counted by `gaia_gym.evaluation.real.run_episode` as
    ``ZOOM_PENALTY``), the car stands still; the world model's context is the first frame held for the
    prompt length under "stand still" actions. The track is ``options={"track": seed}`` or drawn from
    `np_random` among the test tracks (1,000,000 and up, never collected).

    ## Episode Termination
    The simulator's: the lap is finished or the car leaves the playfield (terminated), or 1000 simulator
    frames, the zoom-in included (~237 steps; truncated).

    ## Arguments
    ``model`` (model directory, default the shipped one) or ``bundle``; ``obs_mode``; ``device``;
    ``render_mode="rgb_array"`` (the frame enlarged 4x); ``frame_skip`` (simulator frames per step, 4);
    ``bf16`` (autocast where the hardware is fast at it); ``cameras`` (a rig model: a sub-rig of its cameras);
    ``int8`` (int8 Linear layers, CPU): both applied by `gaia_gym.bundle.load_bundle`, as in GaiaDrive-v0.

    ## Version History
    - v0: observations as GaiaDrive-v0's; the engine is stepped with the observed frames' tokens.

    ```python
    >>> from gaia_gym.envs.real import RealCarRacingEnv   # doctest: +SKIP
    >>> env = RealCarRacingEnv(obs_mode="tokens+features")  # doctest: +SKIP
    >>> obs, info = env.reset(options={"track": 1_000_000})  # doctest: +SKIP
    ```
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, model=None, obs_mode: str = "all", bundle=None, device: str | torch.device = "cpu",
                 render_mode: str | None = None, frame_skip: int = 4, bf16: bool = True, cameras=None,
                 int8: bool = False) -> None:
        from gaia_gym.bundle import load_bundle
        from gaia_gym.sims.carracing import CarRacingDrive

        # the one builder, as GaiaDrive-v0 uses it: a directory or a loaded bundle, cameras and int8 applied there
        self.bundle = load_bundle(bundle if bundle is not None else model, device, cameras=cameras, int8=int8)
        self.keys = parse_obs_mode(obs_mode, self.bundle.backend.latent_key)
        self.engine = Imagination(self.bundle, n=1, temperature=0.0, end_threshold=1.0, bf16=bf16)
        self.codec = self.bundle.codec
        self.drive = CarRacingDrive(frame_skip=frame_skip, frame_size=self.bundle.tokenizer.cfg.frame_size)
        # a rig model sees the simulator through the same cameras it was trained on (gaia_gym.sims.rig)
        self.cameras = tuple(Camera(*c) for c in self.bundle.backend.cameras)
        self.observation_space = public_space(observation_space(self.bundle, self.keys))
        self.action_space = action_space()
        self.render_mode = render_mode
        self._frame: np.ndarray | None = None
        self._needs_reset = True
        self.track: int | None = None

    @torch.no_grad()
    def _tokens(self, frame: np.ndarray) -> torch.Tensor:
        return self.engine.encode(torch.from_numpy(np.ascontiguousarray(frame))[None])

    def _seen(self, frame: np.ndarray) -> np.ndarray:
        """The observed frame: the front camera's, or the rig's views (V, S, S, 3) of the same state."""
        if not self.cameras:
            return frame
        return render_rig(self.drive.sim, self.cameras, self.drive.last_obs, self.drive.frame_size)

    def _obs(self, tokens: torch.Tensor, features: torch.Tensor):
        every = {self.bundle.backend.latent_key: lambda: to_numpy(tokens[0]), "frame": lambda: self._frame.copy(),
                 "features": lambda: to_numpy(features[0]).astype(np.float32)}
        return public_obs({k: every[k]() for k in self.keys})

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        track = options.get("track")
        self.track = int(track) if track is not None else HELD_OUT_FROM + int(self.np_random.integers(1_000_000))
        self._frame = self._seen(self.drive.reset(self.track))
        tok = self._tokens(self._frame)
        C = self.bundle.prompts.context
        still = torch.as_tensor(self.codec.encode(0.0, 0.0), device=self.engine.device)
        tokens, features = self.engine.reset(context=(tok[:, None].expand(1, C, *tok.shape[1:]),
                                                      still.expand(1, C, 2)))
        self._needs_reset = False
        return self._obs(tokens, features), {"track": self.track}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("RealCarRacing: the episode has ended (or never started): call reset() before step()")
        a = check_action(action)
        steering, speed = self.codec.decode(a)
        s = self.drive.step(float(steering), float(speed))
        self._frame = self._seen(s.frame)
        out = self.engine.step(torch.from_numpy(a[None]).to(self.engine.device), observed=self._tokens(self._frame))
        self._needs_reset = s.terminated or s.truncated
        info = {"model_reward": float(out.reward[0]), "model_end_prob": float(out.end_prob[0]),
                "speed_mps": s.speed_mps, "steering": float(steering), "target_speed_mps": float(speed),
                "raw_action": s.raw_action,
                "track": self.track, **{k: v for k, v in s.info.items() if k == "lap_finished"}}
        return self._obs(out.latents, out.features), float(s.reward), s.terminated, s.truncated, info

    @property
    def frame(self) -> np.ndarray | None:
        """The frame the agent observes now (dataset convention; a rig's views (V, S, S, 3)), or None."""
        return None if self._frame is None else self._frame.copy()

    def render(self):
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        frame = rig_mosaics(self._frame, [c.yaw_deg for c in self.cameras])
        return np.kron(frame, np.ones((4, 4, 1), np.uint8))

    def close(self) -> None:
        self.drive.close()
        super().close()
