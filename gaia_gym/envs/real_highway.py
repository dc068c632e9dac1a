"""The real highway-env, seen exactly as GaiaHighway-v0 shows the world: for scoring agents trained in
imagination (and planners) in the real simulator.

Same action space ([steering, speed] in [-1, 1], decoded by the model's `ActionCodec`: the steering
command of highway-env's ContinuousAction and a target speed, reached in one step by the acceleration
``(target - v) * policy_frequency``, as the collector records it), same observation keys: the real 64x64
frame, its tokens and the world model's features over the *real* history (the engine is stepped with
the observed frames' tokens). Reward and termination (a crash) are highway-env's own; episodes are cut
at `max_steps` (40, the recorded episodes' length). Seeds default to the test range (1,000,000 + n,
never collected); `options={"seed": s, "scenario": name}` picks them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gaia_gym.config import HighwayCollectConfig
from gaia_gym.envs.core import action_space, observation_space, parse_obs_mode, public_obs, public_space, to_numpy
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination, scene_rows
from gaia_gym.models.layout import check_action
from gaia_gym.seeds import HIGHWAY_TEST_SEED

SCENARIOS = HighwayCollectConfig().scenarios
EPISODE_STEPS = 40  # a real episode's steps at most (the recorded episodes' length)


class RealHighwayEnv(gym.Env):
    """The real highway-env scenario `scenario`, observed as GaiaHighway-v0 observes imagination (the
    keys of ``obs_mode``; a single key gives that key's ``Box`` and the bare array). ``int8`` and
    ``text_encoder`` are applied by `gaia_gym.bundle.load_bundle`, as in GaiaHighway-v0.

    ``info``: ``model_reward`` and ``model_end_prob`` (the world model's reward and end heads for the same
    step), ``crashed``, ``speed_mps``, ``distance_m`` (driven this episode), ``success``
    (`scenario_success`), ``seed``, ``scenario``. ``scripted_action()`` is the collector's cruise controller
    (lane keeping, speed tracking with a 1 s headway, slowing for crossing traffic) for the current
    state, in model units: the scripted baseline driver."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, model=None, scenario: str = "highway-fast-v0", obs_mode: str = "all", bundle=None,
                 device: str | torch.device = "cpu", max_steps: int = EPISODE_STEPS, bf16: bool = True,
                 render_mode: str | None = None, int8: bool = False, text_encoder=None) -> None:
        from gaia_gym.bundle import load_bundle

        # the one builder, as GaiaHighway-v0 uses it: a directory or a loaded bundle, every option applied there
        self.bundle = load_bundle(bundle if bundle is not None else (model or default_highway_model()), device,
                                  int8=int8, text_encoder=text_encoder)
        self.keys = parse_obs_mode(obs_mode, self.bundle.backend.latent_key)
        self.engine = Imagination(self.bundle, n=1, temperature=0.0, end_threshold=1.0, bf16=bf16)
        self.codec = self.bundle.codec
        self.scenario = scenario
        self.cfg = HighwayCollectConfig(frame_size=self.bundle.tokenizer.cfg.frame_size)
        self.max_steps = int(max_steps)
        self.observation_space = public_space(observation_space(self.bundle, self.keys))
        self.action_space = action_space()
        self.render_mode = render_mode
        self.env = None
        self._frame = None
        self._needs_reset = True

    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        return self.engine.encode(torch.from_numpy(np.ascontiguousarray(frame))[None])

    def _obs(self, tokens, features):
        every = {self.bundle.backend.latent_key: lambda: to_numpy(tokens[0]), "frame": lambda: self._frame.copy(),
                 "features": lambda: to_numpy(features[0]).astype(np.float32)}
        return public_obs({k: every[k]() for k in self.keys})

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        from gaia_gym.sims.highway import BehaviourPolicy, grab_frame, lane_count, make_env, scene_variation

        super().reset(seed=seed)
        options = dict(options or {})
        bad = [k for k in options if k not in ("seed", "scenario")]
        if bad:
            raise ConfigError(f"RealHighway reset: unknown option {bad[0]!r} (allowed: 'seed', 'scenario')")
        self.scenario = str(options.get("scenario", self.scenario))
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}")
        s = options.get("seed")
        self.seed_ = int(s) if s is not None else HIGHWAY_TEST_SEED + int(self.np_random.integers(1_000_000))
        if self.env is not None:
            self.env.close()
        self.env = make_env(self.scenario, self.cfg, scene_variation(self.scenario, self.seed_, self.cfg))
        obs, _ = self.env.reset(seed=self.seed_)
        self.others = np.asarray(obs, dtype=np.float32)[1:]
        self.driver = BehaviourPolicy(self.env, self.scenario, np.random.default_rng(self.seed_))
        self.driver.left, self.driver.mode = 10**9, 0  # the cruise controller, for good
        self.driver.target = self.driver.v_hi
        self._frame = grab_frame(self.env, self.cfg.frame_size)
        self.steps, self._needs_reset = 0, False
        tok = self._encode(self._frame)
        C = self.bundle.prompts.context
        u = self.env.unwrapped
        self.distance_m = 0.0
        hold, scene = highway_start(self.bundle, self.scenario, lane_count(self.env)[0], float(u.vehicle.speed),
                                    self.engine.device)
        tokens, features = self.engine.reset(context=(tok[:, None].expand(1, C, *tok.shape[1:]), hold.expand(1, C, 2)),
                                             scene=scene)
        return self._obs(tokens, features), {"seed": self.seed_, "scenario": self.scenario}

    def scripted_action(self) -> np.ndarray:
        """The cruise controller's action for the current state, in model units [steering, speed]."""
        raw, _ = self.driver.act(self.others)
        v = float(self.env.unwrapped.vehicle.speed)
        pf = float(self.cfg.policy_frequency)
        target = max(0.0, v + float(raw[0]) * 5.0 / pf)
        return self.codec.encode(float(raw[1]), target)

    def step(self, action):
        from gaia_gym.sims.highway import grab_frame

        if self._needs_reset:
            raise RuntimeError("RealHighway: the episode has ended (or never started): call reset() before step()")
        a = check_action(action)
        u = self.env.unwrapped
        obs, reward, terminated, truncated, info = self.env.step(
            highway_control(self.codec, a, float(u.vehicle.speed), self.cfg.policy_frequency))
        self.others = np.asarray(obs, dtype=np.float32)[1:]
        self._frame = grab_frame(self.env, self.cfg.frame_size)
        self.steps += 1
        self.distance_m += float(u.vehicle.speed) / float(self.cfg.policy_frequency)
        truncated = bool(truncated) or self.steps >= self.max_steps
        out = self.engine.step(torch.from_numpy(a[None]).to(self.engine.device), observed=self._encode(self._frame))
        self._needs_reset = bool(terminated) or truncated
        info = {"model_reward": float(out.reward[0]), "model_end_prob": float(out.end_prob[0]),
                "crashed": bool(u.vehicle.crashed), "speed_mps": float(u.vehicle.speed), "seed": self.seed_,
                "scenario": self.scenario, "distance_m": self.distance_m, "success": scenario_success(self.env, self.scenario)}
        return self._obs(out.latents, out.features), float(reward), bool(terminated), truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return np.kron(self._frame, np.ones((4, 4, 1), np.uint8))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        super().close()


def highway_start(bundle, scenario: str, lanes: int, speed_mps: float, device=None):
    """How a real highway episode starts in the world model: (the context's action (2,): straight on at the
    current speed, held under the first frame; the scene rows of what the simulator says of the scene:
    road family and lane count, or None for an unconditioned model). `RealHighwayEnv.reset` and the
    behaviour prior's replay of logged episodes (`gaia_gym.rl.prior.real_observations`) share it, so the
    prior sees what the agent will see."""
    from gaia_gym.sims.highway_scene import scenario_family

    dev = device if device is not None else bundle.device
    hold = torch.as_tensor(bundle.codec.encode(0.0, float(speed_mps)), device=dev)
    spec = bundle.conditions
    if spec is None:
        return hold, None
    known = {"scenario": scenario_family(scenario), "lanes": str(min(4, int(lanes)))}
    return hold, scene_rows(bundle, 1, None, {"metadata": {k: v for k, v in known.items() if k in spec.fields}}, dev)


# merge-v0's ramp joins the highway over x = 230..310 m (its road: 150 m before, 80 m converging, 80 m
# merging); the ego starts at x = 30 m, so within 40 steps (8 s) it reaches the merging section, never
# the end (highway-env's own success, x > 370 m, is out of reach of a 40-step episode)
MERGE_ZONE_X = 230.0


def scenario_success(env, scenario: str) -> bool | None:
    """Success where the scenario defines it, for the episode so far: merge-v0, reached the merging section
    (x >= `MERGE_ZONE_X`, where the ramp's traffic joins) without a crash; intersection-v0, arrived on the
    exit road (highway-env's `has_arrived`) without a crash. None for the other scenarios (survival is
    their crash rate)."""
    u = env.unwrapped
    if scenario == "merge-v0":
        return bool(u.vehicle.position[0] >= MERGE_ZONE_X and not u.vehicle.crashed)
    if scenario == "intersection-v0":
        return bool(u.has_arrived(u.vehicle) and not u.vehicle.crashed)
    return None


def default_highway_model():
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL

    return HIGHWAY_WORLD_MODEL


def highway_control(codec, action, speed: float, policy_frequency: float) -> np.ndarray:
    """A [steering, speed] action in model units -> highway-env's ContinuousAction [acceleration, steering]:
    the target speed reached in one step (``(target - v) * policy_frequency``), as the collector records it."""
    steering, target = codec.decode(np.asarray(action, np.float32))
    accel = float(np.clip((float(target) - speed) * policy_frequency / 5.0, -1.0, 1.0))
    return np.array([accel, float(steering)], np.float32)


class RealKinematicsEnv(gym.Env):
    """The real highway-env scenarios (round-robin over episodes, training seeds `seed + 100,000 + i`, never
    the test seeds) with highway-env's Kinematics observation flattened (ego + 8 nearest, 7 features each,
    scaled) and the [steering, speed] action through `highway_control`: the baseline a PPO trains on in
    the real simulator, with no world model."""

    def __init__(self, seed: int = 0, max_steps: int = 40) -> None:
        from gaia_gym.models.layout import HIGHWAY_CODEC

        self.cfg = HighwayCollectConfig()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (63,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.episode, self.seed0, self.max_steps = 0, seed, max_steps
        self.env = None
        self.codec = HIGHWAY_CODEC

    @staticmethod
    def observe(o) -> np.ndarray:
        """highway-env's Kinematics rows (9, 7) -> the flat, scaled observation (63,)."""
        o = np.asarray(o, np.float32).copy()
        o[1:, 1:5] /= np.array([40.0, 10.0, 10.0, 10.0], np.float32)
        o[0, 3:5] /= 40.0
        o[0, 1:3] = 0.0  # the ego's absolute position says nothing transferable
        return o.reshape(-1)

    def reset(self, *, seed=None, options=None):
        from gaia_gym.sims.highway import make_env, scene_variation

        super().reset(seed=seed)
        scen = SCENARIOS[self.episode % len(SCENARIOS)]
        s = self.seed0 + 100_000 + self.episode  # training seeds: never the test seeds (1,000,000+)
        self.episode += 1
        if self.env is not None:
            self.env.close()
        self.env = make_env(scen, self.cfg, scene_variation(scen, s, self.cfg), render=False)
        o, _ = self.env.reset(seed=s)
        self.t = 0
        return self.observe(o), {}

    def step(self, action):
        control = highway_control(self.codec, action, float(self.env.unwrapped.vehicle.speed), self.cfg.policy_frequency)
        o, r, term, trunc, info = self.env.step(control)
        self.t += 1
        return self.observe(o), float(r), bool(term), bool(trunc) or self.t >= self.max_steps, {}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
