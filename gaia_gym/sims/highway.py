"""`gaia-gym collect highway`: real highway-env driving, recorded in the gaia_gym dataset format.

Scenarios are highway-env environment ids (``highway-fast-v0``, ``merge-v0``, ``roundabout-v0`` by
default); an episode's scenario is ``spec.extra[0]``, assigned round-robin by `collect_highway`.

**Actions.** The ego is driven with highway-env's ``ContinuousAction`` (longitudinal + lateral), so it
is a plain kinematic-bicycle `Vehicle`: nothing keeps it in its lane but our own controller. The raw
action is ``[acceleration, steering]`` in [-1, 1], mapped by highway-env to [-5, 5] m/s^2 and
[-pi/4, pi/4] rad, held for one policy step (1 / ``policy_frequency`` s). Positive steering turns
right (the world's y axis points down the screen), so the recorded ``steering`` is the raw steering
command itself (-1 = full left), as the dataset format asks. ``target_speed_mps`` is the speed measured
at the next frame: every behaviour mode below outputs an acceleration, and with highway-env's kinematic
model the next speed is exactly ``v + a / policy_frequency`` (unless the 40 m/s cap or a crash
intervenes), so it encodes the longitudinal command losslessly as a speed, which is what gaia_gym's
[steering, speed] action interface wants.

``merge-v0`` and ``roundabout-v0`` crash when constructed with continuous actions (their reward
evaluates ``action in [0, 2]``, the discrete LANE_LEFT / LANE_RIGHT ids, on the action array). The env
is still built with ``gymnasium.make`` from the registered spec, but with a thin subclass of the
registered class as entry point that hands those reward terms ``None`` for a continuous action (so the
discrete lane-change penalty is 0); everything else is highway-env's own code.

**Frames.** ``render()`` in ``rgb_array`` mode returns the viewer's offscreen surface as
(screen_height, screen_width, 3) uint8: a world-aligned top view (grey ground, white lane lines, the
ego yellow (highway-env's colour for a plain `Vehicle`), other vehicles blue, crashed ones red) that
follows the ego at the scenario's own ``centering_position`` (highway and merge: 30% from the left, so
most of the view is ahead; roundabout: centred, 60% down).
`gaia_gym.data.frames.resize_square` centre-crops to a square, so the screen is made square to begin
with; with highway-env's default 600x150 the square crop would not even contain the ego (it sits at
x = 180 of 600, the crop spans 225..375). We render at twice the dataset resolution (128x128 for
64x64 frames) and area-downsample: highway-env draws lane lines 1 px wide at this zoom, and the 2x
render turns them into anti-aliased grey lines instead of aliased dashes that flicker between frames.
The view spans ``VIEW_M`` = 40 m (1.6 px/m at 64 px), the same in every scenario so a car has the same
size everywhere: a car (5 m x 2 m) is 8x3 px, a 4 m lane 6.4 px, a 3-4 lane carriageway covers 30-40%
of the frame height, and 28 m of road ahead of the ego are visible on the highway (about one second at
highway speed; a wider view makes cars 2-3 px blobs). ``SDL_VIDEODRIVER=dummy`` is refused: highway-env
then disables its viewer and every frame is a flat grey; headless, SDL's ``offscreen`` driver is used.

**Others.** ``others`` (T, 8, 7) float32 is highway-env's ``Kinematics`` observation of the 8 nearest
other vehicles (ahead and behind, sorted by distance) at frame t, with the ego's own row dropped:
features ``presence, x, y, vx, vy, cos_h, sin_h``; x, y in metres and vx, vy in m/s relative to the ego
(``absolute=False``: differences of world-frame coordinates, not rotated into the ego's heading),
cos_h / sin_h the other vehicle's world heading. Unnormalised and unclipped; absent vehicles are rows of
zeros (presence 0). Vehicles beyond 200 m (highway-env's perception distance) are not listed.

**Behaviour.** Expert-only data teaches a world model nothing about the consequences of other actions,
so each episode is a sequence of segments, each in one mode (``behaviour`` ids):

| id | mode        | what the ego does                                                                  |
|----|-------------|------------------------------------------------------------------------------------|
| 0  | cruise      | pure pursuit on its lane; speed tracking of a random target speed, 1 s headway to  |
|    |             | the car ahead, slowing for crossing traffic; light smooth noise                    |
| 1  | noisy       | the same with strong smooth (Ornstein-Uhlenbeck) steering and acceleration noise   |
| 2  | lane_change | pure pursuit onto an adjacent lane of the same road (80% of the time only into a   |
|    |             | lane with a free gap, otherwise regardless), speed as in cruise                    |
| 3  | hard_brake  | full braking (-5 m/s^2), down to standstill at most, still lane keeping            |
| 4  | random      | uniform random acceleration and steering (steering scaled by a random amplitude    |
|    |             | up to 0.4), each held 1-2 steps; afterwards the ego follows the closest lane       |

Over 12 episodes per scenario (40 steps) 1, 2 and 2 episodes ended in a crash (highway-fast, merge,
roundabout): crashes are in the data, as terminations, without dominating it. At lane ends the
follower picks the next road at random among the network's successors (roundabout
exits differ between episodes). Speeds never go negative: decelerations that would reverse the car
within the step are clipped. All randomness comes from ``np.random.default_rng(spec.seed)`` and the
simulator is reset with ``seed=spec.seed``, so an episode is reproducible and a collection resumable.

**Expert labels.** Every step also records ``expert_steering`` and ``expert_speed_mps``: what the clean
cruise controller (`BehaviourPolicy.expert`: lane keeping, the speed range's top, 1 s headway, slowing
for crossing traffic, no noise) would command at that state, in noisy, lane-change, braking and random
segments too. They are the behaviour prior's targets (`gaia_gym.rl.prior`); computing them draws none
of the behaviour's random numbers, so a labelled episode is the same episode as an unlabelled one of
the same seed (`tests/test_highway.py`).

**Throughput**, measured per process on this project's 2-core CPU machine (no GPU), the whole recorder
(simulator, controller, render, frame resize; no shard writing), 20 episodes x 40 steps per scenario::

    .venv/bin/python -c "from gaia_gym.sims.highway import bench_recorder; print(bench_recorder())"

    highway-fast-v0 128 steps/s, merge-v0 200 steps/s, roundabout-v0 80 steps/s, 118 overall
    (two runs agreed within 3%; a CarRacing collection was using the other core meanwhile)

highway-fast-v0 simulates 1 frame per step (5 Hz) but 20 other vehicles; merge and roundabout 3 frames
(15 Hz) with 4 others. Rendering takes 17% (highway), 22% (merge) and 40% (roundabout: highway-env
redraws every lane of the network, dash by dash, each frame) of the CPU time; the rest is highway-env's
Python simulation and its pandas-based observation. Disarming the auto-render of intermediate frames
(`grab_frame`) measured 1.9x on roundabout-v0 and 1.3x on merge-v0 (same run, CPU time).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections import ChainMap
from pathlib import Path

import gymnasium as gym
import highway_env  # noqa: F401  (registers the highway-env scenarios with gymnasium)
import numpy as np
from gymnasium.envs.registration import load_env_creator

from gaia_gym.config import HighwayCollectConfig
from gaia_gym.data.collect import EpisodeSpec, plan_episodes, run_collection
from gaia_gym.data.frames import resize_square
from gaia_gym.errors import ConfigError
from gaia_gym.sims.highway_scene import VIEW_M

OTHERS_FEATURES = ("presence", "x", "y", "vx", "vy", "cos_h", "sin_h")
OTHERS_UNITS = {"presence": "0/1", "x": "m", "y": "m", "vx": "m/s", "vy": "m/s", "cos_h": "", "sin_h": ""}
OTHERS_COUNT = 8  # other vehicles per step (the Kinematics observation lists the ego too: 9 rows)
RENDER_SCALE = 2  # render at this multiple of the dataset frame size, then area-downsample
ACCEL_RANGE = (-5.0, 5.0)  # m/s^2, highway-env ContinuousAction defaults
STEER_RANGE = (-math.pi / 4, math.pi / 4)  # rad
HARD_STEP_LIMIT = 1000  # safety cap when cfg.max_steps == 0 (merge-v0 has no time limit)

MODES = {0: "cruise", 1: "noisy", 2: "lane_change", 3: "hard_brake", 4: "random"}
MODE_PROBS = np.array([0.35, 0.20, 0.20, 0.10, 0.15])
LANE_CHANGE_CAREFUL = 0.8  # share of lane changes that only pick a free adjacent lane
MODE_STEPS = {0: (5, 20), 1: (5, 15), 2: (6, 14), 3: (3, 8), 4: (2, 6)}  # duration ranges, steps
CONFLICT_M = 5.0  # predicted centre distance (m) counted as a conflict by the cruise controller
RANDOM_MAX_STEER = 0.4  # top of the random segments' steering amplitude (0.4 = 18 deg of wheel angle)
# cruise target speeds (m/s) by scenario family; other scenarios: fractions of the lane speed limit
SPEED_RANGES = {"highway": (18.0, 32.0), "merge": (18.0, 32.0), "roundabout": (5.0, 15.0)}


# ----------------------------------------------------------------------------------------------
# the simulator
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _continuous_safe(base: type) -> type:
    """Subclass of a highway-env env class whose reward terms survive continuous actions.

    Several scenarios' `_rewards(action)` test ``action in [0, 2]`` (discrete lane-change ids); with an
    action array that raises "truth value of an array is ambiguous". A continuous action is passed on
    as ``None`` (never a discrete lane change); discrete actions are untouched.
    """

    def _rewards(self, action):
        if isinstance(action, np.ndarray) and action.size > 1:
            action = None
        return base._rewards(self, action)

    return type(f"Continuous{base.__name__}", (base,), {"_rewards": _rewards, "__module__": __name__})


def env_config(scenario: str, cfg: HighwayCollectConfig) -> dict:
    """highway-env configuration for recording `scenario` under `cfg`."""
    base = _env_class(scenario).default_config()
    sim_hz = int(base["simulation_frequency"])
    pf = int(cfg.policy_frequency)
    if pf < 1:
        raise ConfigError(f"policy_frequency must be >= 1, got {pf}")
    # highway-env runs sim_hz // policy_frequency frames per step: keep it a whole number >= 1
    sim_hz = pf * max(1, round(sim_hz / pf))
    px = RENDER_SCALE * int(cfg.frame_size)
    return {
        "action": {"type": "ContinuousAction", "longitudinal": True, "lateral": True},
        "observation": {
            "type": "Kinematics",
            "vehicles_count": OTHERS_COUNT + 1,
            "features": list(OTHERS_FEATURES),
            "absolute": False,
            "normalize": False,
            "clip": False,
            "see_behind": True,
            "order": "sorted",
        },
        "policy_frequency": pf,
        "simulation_frequency": sim_hz,
        "screen_width": px,
        "screen_height": px,
        "scaling": px / VIEW_M,
        "offscreen_rendering": True,
        "show_trajectories": False,
    }


def _env_class(scenario: str) -> type:
    spec = gym.spec(scenario)
    ep = spec.entry_point
    return load_env_creator(ep) if isinstance(ep, str) else ep


def _check_video_driver() -> None:
    """Refuse SDL's dummy driver (blank frames); on a headless machine, name SDL's offscreen driver.

    Without a display SDL falls back to its offscreen driver anyway, but only after probing Wayland,
    which prints "XDG_RUNTIME_DIR is invalid" once per environment; naming it skips the probe. Only
    this process (and its children) see the variable, and only when no display exists.
    """
    if os.environ.get("SDL_VIDEODRIVER") == "dummy":
        raise ConfigError("SDL_VIDEODRIVER=dummy disables highway-env's viewer (every frame would be blank); "
                         "unset it: highway-env renders offscreen without a display")
    if not any(os.environ.get(k) for k in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY")):
        os.environ["SDL_VIDEODRIVER"] = "offscreen"


def _idm_defaults() -> dict:
    from highway_env.vehicle.behavior import IDMVehicle

    return {k: v for k, v in vars(IDMVehicle).items() if k.isupper() and isinstance(v, (int, float))}


# highway-env's intersection-v0 sets IDMVehicle.DISTANCE_WANTED / COMFORT_ACC_MAX / COMFORT_ACC_MIN on the
# class when it builds its traffic, so every later episode of any scenario in the same process drove
# other traffic: an episode depended on which episodes ran before it. `make_env` puts the class's own
# values back before every episode (the intersection then sets its own again).
_IDM_DEFAULTS = _idm_defaults()


def restore_traffic_defaults() -> None:
    """Undo highway-env's process-wide changes to its traffic model (see `_IDM_DEFAULTS`)."""
    from highway_env.vehicle.behavior import IDMVehicle

    for k, v in _IDM_DEFAULTS.items():
        setattr(IDMVehicle, k, v)


def make_env(scenario: str, cfg: HighwayCollectConfig, scene: dict | None = None, render: bool = True) -> gym.Env:
    """The registered highway-env scenario with continuous actions, Kinematics observation, rgb frames
    (``render=False``: no frames, faster); `scene`: highway-env config overrides (e.g.
    `scene_variation`'s lane count and density). Every env starts from highway-env's own traffic model,
    whatever ran before in this process (`restore_traffic_defaults`)."""
    _check_video_driver()
    restore_traffic_defaults()
    spec = gym.spec(scenario)
    cls = _continuous_safe(_env_class(scenario))
    return gym.make(dataclasses.replace(spec, entry_point=cls), render_mode="rgb_array" if render else None,
                    config={**env_config(scenario, cfg), **(scene or {})}, disable_env_checker=True)


def scene_variation(scenario: str, seed: int, cfg: HighwayCollectConfig) -> dict:
    """Per-episode scene knobs (drawn from the episode seed, so reproducible): scenarios whose config has
    ``lanes_count`` and ``vehicles_density`` (highway-fast) get a lane count from `cfg.lanes_choices`
    and a density from `cfg.density_choices`, so the metadata the world model is conditioned on varies
    within a scenario; other scenarios keep their own road network."""
    base = _env_class(scenario).default_config()
    if not cfg.vary_scenes or "lanes_count" not in base or "vehicles_density" not in base:
        return {}
    rng = np.random.default_rng([int(seed), 7])
    return {"lanes_count": int(rng.choice(cfg.lanes_choices)),
            "vehicles_density": float(rng.choice(cfg.density_choices))}


def grab_frame(env: gym.Env, size: int) -> np.ndarray:
    """Render the current state as a (size, size, 3) uint8 dataset frame."""
    img = env.render()
    # render() arms highway-env's auto-rendering of the intermediate simulation frames of the next
    # step (for videos); nobody records those, so disarm it (3x fewer renders at 15 Hz simulation).
    env.unwrapped.enable_auto_render = False
    return resize_square(img, size)


def lane_count(env) -> tuple[int, str]:
    """(lanes, where the number comes from): the config's lanes_count, else the road network's widest road."""
    u = env.unwrapped
    if "lanes_count" in u.config:
        return int(u.config["lanes_count"]), "config.lanes_count"
    widest = max(len(lanes) for tos in u.road.network.graph.values() for lanes in tos.values())
    return int(widest), "road_network.max_parallel_lanes"


# ----------------------------------------------------------------------------------------------
# the behaviour policy
# ----------------------------------------------------------------------------------------------
def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class LaneFollower:
    """Lane geometry for the ego: its target lane, successors, and a pure-pursuit steering law."""

    def __init__(self, env, rng: np.random.Generator) -> None:
        self.u = env.unwrapped
        self.net = self.u.road.network
        self.rng = rng
        self.successor: dict = {}
        self.lane = self.u.vehicle.lane_index

    @property
    def ego(self):
        return self.u.vehicle

    def next_lane(self, index):
        """The lane after `index` (chosen once at random among the successor roads), or None."""
        if index not in self.successor:
            _from, _to, _id = index
            roads = sorted(self.net.graph.get(_to, {}).keys())
            nxt = None
            if roads:
                road = roads[int(self.rng.integers(len(roads)))]
                lanes = self.net.graph[_to][road]
                if len(lanes) == len(self.net.graph[_from][_to]):
                    nid = _id
                else:  # different lane count: the lane starting closest to where this one ends
                    end = self.net.get_lane(index).position(self.net.get_lane(index).length, 0)
                    nid = int(np.argmin([ln.distance(end) for ln in lanes]))
                nxt = (_to, road, nid)
            self.successor[index] = nxt
        return self.successor[index]

    def advance(self) -> None:
        """Move the target lane on to the next one once the ego has passed the current one's end."""
        for _ in range(4):
            lane = self.net.get_lane(self.lane)
            if not lane.after_end(self.ego.position):
                return
            nxt = self.next_lane(self.lane)
            if nxt is None:
                return
            self.lane = nxt

    def reacquire(self) -> None:
        """Follow whichever lane is closest now (after a segment that ignored the lane)."""
        self.lane = self.net.get_closest_lane_index(self.ego.position, self.ego.heading)

    def adjacent(self) -> list:
        """Lanes beside the target lane on the same road."""
        _from, _to, _id = self.lane
        n = len(self.net.graph[_from][_to])
        return [(_from, _to, j) for j in (_id - 1, _id + 1) if 0 <= j < n]

    def lane_is_free(self, index, margin: float = 6.0) -> bool:
        """No vehicle on lane `index` within `margin` m (plus a car length) ahead of or behind the ego."""
        lane = self.net.get_lane(index)
        s_ego = lane.local_coordinates(self.ego.position)[0]
        for v in self.u.road.vehicles:
            if v is self.ego or v.lane_index != index:
                continue
            if abs(lane.local_coordinates(v.position)[0] - s_ego) < margin + v.LENGTH:
                return False
        return True

    def lateral_offset(self) -> float:
        return float(self.net.get_lane(self.lane).local_coordinates(self.ego.position)[1])

    def steering(self) -> float:
        """Normalised steering that brings the ego onto the target lane's centre line (pure pursuit)."""
        ego = self.ego
        v = max(float(ego.speed), 1.0)
        look = float(np.clip(0.8 * v + 4.0, 6.0, 30.0))
        index = self.lane
        lane = self.net.get_lane(index)
        s = lane.local_coordinates(ego.position)[0] + look
        for _ in range(4):  # walk onto the successor lanes if the lookahead point lies beyond the end
            if s <= lane.length:
                break
            nxt = self.next_lane(index)
            if nxt is None:
                break
            s -= lane.length
            index, lane = nxt, self.net.get_lane(nxt)
        p = lane.position(s, 0.0)
        dx, dy = float(p[0] - ego.position[0]), float(p[1] - ego.position[1])
        dist = max(math.hypot(dx, dy), 1e-3)
        alpha = _wrap(math.atan2(dy, dx) - float(ego.heading))
        curvature = 2.0 * math.sin(alpha) / dist
        # highway-env's bicycle: heading rate = v sin(beta) / (L/2), beta = atan(tan(delta) / 2)
        sin_beta = float(np.clip(curvature * ego.LENGTH / 2.0, -1.0, 1.0))
        delta = math.atan(2.0 * math.tan(math.asin(sin_beta)))
        return float(np.clip(delta / STEER_RANGE[1], -1.0, 1.0))


def speed_range(scenario: str, env) -> tuple[float, float]:
    for family, rng in SPEED_RANGES.items():
        if scenario.startswith(family):
            return rng
    limit = getattr(env.unwrapped.road.network.get_lane(env.unwrapped.vehicle.lane_index), "speed_limit", 20.0)
    return 0.4 * float(limit or 20.0), float(limit or 20.0)


class BehaviourPolicy:
    """Segment-by-segment behaviour mix on top of a lane follower; returns [accel, steer] in [-1, 1]."""

    def __init__(self, env, scenario: str, rng: np.random.Generator) -> None:
        self.u = env.unwrapped
        self.rng = rng
        self.follow = LaneFollower(env, rng)
        self.v_lo, self.v_hi = speed_range(scenario, env)
        self.dt = 1.0 / float(self.u.config["policy_frequency"])
        self.mode = 0
        self.left = 0
        self.target = float(np.clip(self.u.vehicle.speed, self.v_lo, self.v_hi))
        self.ou = np.zeros(2)  # smooth noise on [accel, steer]
        self.amp = 0.0
        self.held = np.zeros(2)
        self.hold = 0
        # `expert`'s own route choices (where the behaviour has not chosen yet), from its own generator
        self._expert_rng, self._expert_routes = np.random.default_rng(0), {}

    def _next_segment(self) -> None:
        r = self.rng
        prev = self.mode
        self.mode = int(r.choice(len(MODES), p=MODE_PROBS))
        if self.mode == 2:
            options = self.follow.adjacent()
            if r.random() < LANE_CHANGE_CAREFUL:
                options = [ln for ln in options if self.follow.lane_is_free(ln)]
            if options:
                self.follow.lane = options[int(r.integers(len(options)))]
            else:
                self.mode = 0
        lo, hi = MODE_STEPS[self.mode]
        self.left = int(r.integers(lo, hi + 1))
        if self.mode in (0, 1):
            self.target = float(r.uniform(self.v_lo, self.v_hi))
        if self.mode == 4:
            self.amp = float(np.exp(r.uniform(np.log(0.03), np.log(RANDOM_MAX_STEER))))
            self.hold = 0
        if prev == 4 and self.mode != 4:
            self.follow.reacquire()

    def _accel_for(self, target: float, others: np.ndarray) -> float:
        """Acceleration (m/s^2) tracking `target`, slowed for the nearest vehicle ahead in the ego's path."""
        ego = self.u.vehicle
        v = float(ego.speed)
        h = float(ego.heading)
        c, s = math.cos(h), math.sin(h)
        present = others[:, 0] > 0.5
        lon = others[:, 1] * c + others[:, 2] * s
        lat = -others[:, 1] * s + others[:, 2] * c
        ahead = present & (lon > 0) & (np.abs(lat) < 2.2)
        if ahead.any():
            k = int(np.argmin(np.where(ahead, lon, np.inf)))
            gap = float(lon[k]) - ego.LENGTH
            v_front = v + float(others[k, 3] * c + others[k, 4] * s)
            want = 4.0 + 1.0 * v  # standstill gap + 1 s headway
            if gap < want:
                target = min(target, max(0.0, v_front + (gap - want) / 1.5))
        # crossing traffic (roundabouts, merges): extrapolate relative motion at constant velocity and
        # slow down for any vehicle in front of the ego that would come within CONFLICT_M in 2 s
        front = present & (lon > 0)
        if front.any():
            taus = np.arange(1, 11) * 0.2
            p = others[front, None, 1:3] + others[front, None, 3:5] * taus[None, :, None]
            close = np.hypot(p[..., 0], p[..., 1]) < CONFLICT_M
            if close.any():
                t_hit = float(taus[close.any(axis=0)][0])
                target = min(target, v * float(np.clip((t_hit - 0.6) / 1.4, 0.0, 1.0)))
        return 1.5 * (target - v)

    def expert(self, others: np.ndarray) -> tuple[float, float]:
        """The expert label for this state: what the clean cruise controller (lane keeping on the lane the
        ego is following, or the closest lane during a random segment; speed target the range's top,
        1 s headway, slowing for crossing traffic; no noise) would command now, as (steering command in
        [-1, 1], target speed in m/s reached by the next step).

        It draws none of the behaviour's random numbers and changes none of its state: the episode is
        the same with or without labels. A route choice the behaviour has not made yet (which exit) is
        drawn from the labeller's own generator; one it has made is followed."""
        f, ego = self.follow, self.u.vehicle
        shadow = LaneFollower.__new__(LaneFollower)
        shadow.u, shadow.net = f.u, f.net
        for k in [k for k in self._expert_routes if k in f.successor]:
            del self._expert_routes[k]  # the behaviour has chosen: follow its choice from now on
        shadow.rng, shadow.successor = self._expert_rng, ChainMap(self._expert_routes, f.successor)
        shadow.lane = f.lane if self.mode != 4 else f.net.get_closest_lane_index(ego.position, ego.heading)
        shadow.advance()
        steer = shadow.steering()
        accel = float(np.clip(self._accel_for(self.v_hi, others) / ACCEL_RANGE[1], -1.0, 1.0))
        v = float(ego.speed)
        accel = max(accel, -max(v, 0.0) / self.dt / ACCEL_RANGE[1])  # never reverse, as in `act`
        return float(steer), max(0.0, v + accel * ACCEL_RANGE[1] * self.dt)

    def act(self, others: np.ndarray) -> tuple[np.ndarray, int]:
        """One step's raw action [accel, steer] in [-1, 1] and the behaviour mode id."""
        if self.left <= 0:
            self._next_segment()
        self.left -= 1
        r = self.rng
        m = self.mode
        if m != 4:
            self.follow.advance()
        sig = np.array([0.05, 0.01]) if m != 1 else np.array([0.25, 0.06])
        self.ou += -0.3 * self.ou + sig * r.standard_normal(2)
        if m == 4:
            if self.hold <= 0:
                self.held = np.array([r.uniform(-1, 1), self.amp * r.uniform(-1, 1)])
                self.hold = int(r.integers(1, 3))
            self.hold -= 1
            accel, steer = self.held
        else:
            steer = self.follow.steering()
            if m == 3:
                accel = -1.0
            else:
                accel = self._accel_for(self.target, others) / ACCEL_RANGE[1]
            accel, steer = accel + self.ou[0], steer + self.ou[1]
            if m == 2 and abs(self.follow.lateral_offset()) < 0.3:
                self.left = min(self.left, 1)  # lane reached: one more step, then a new segment
        # never reverse: the slowest allowed deceleration stops the car exactly at the end of the step
        v = float(self.u.vehicle.speed)
        accel = max(float(accel), -max(v, 0.0) / self.dt / ACCEL_RANGE[1])
        action = np.clip(np.array([accel, steer], dtype=np.float32), -1.0, 1.0)
        return action, m


# ----------------------------------------------------------------------------------------------
# recording
# ----------------------------------------------------------------------------------------------
def others_tracks(env, ids: dict[int, int]) -> np.ndarray:
    """(OTHERS_COUNT,) int16 track numbers of the vehicles in this step's ``others`` rows (-1: no vehicle).

    The Kinematics observation sorts the other vehicles by distance, so a row is not the same vehicle
    from one step to the next; the track number is (numbered in order of first sight in the episode;
    static obstacles, e.g. merge-v0's end of the ramp, are rows of the observation and get one too).
    The rows are listed by the same call the observation makes (`Road.close_objects_to`, same
    arguments), so row i here is row i of ``others``."""
    u = env.unwrapped
    obs_type = u.observation_type
    close = u.road.close_objects_to(u.vehicle, u.PERCEPTION_DISTANCE, count=OTHERS_COUNT, see_behind=True,
                                    sort=getattr(obs_type, "order", "sorted") == "sorted",
                                    vehicles_only=not getattr(obs_type, "include_obstacles", True))
    out = np.full(OTHERS_COUNT, -1, dtype=np.int16)
    for i, v in enumerate(close[:OTHERS_COUNT]):
        out[i] = ids.setdefault(id(v), len(ids))
    return out


def record_highway_episode(spec: EpisodeSpec, cfg: HighwayCollectConfig) -> tuple[dict, dict]:
    """Drive scenario ``spec.extra[0]`` with seed ``spec.seed``; returns (arrays, meta) for one shard."""
    if not spec.extra:
        raise ConfigError(f"episode {spec.index}: the spec names no scenario (extra=())")
    scenario = str(spec.extra[0])
    scene = scene_variation(scenario, spec.seed, cfg)
    env = make_env(scenario, cfg, scene)
    try:
        obs, _ = env.reset(seed=int(spec.seed))
        u = env.unwrapped
        rng = np.random.default_rng(spec.seed)
        policy = BehaviourPolicy(env, scenario, rng)
        lanes, lanes_source = lane_count(env)
        others_at_reset = len(u.road.vehicles) - 1
        limit = int(cfg.max_steps) if cfg.max_steps and cfg.max_steps > 0 else HARD_STEP_LIMIT
        ids: dict[int, int] = {}  # id(vehicle) -> track number (order of first sight)
        keys = ("frames", "others", "others_track", "steering", "speed_mps", "target_speed_mps", "raw_action", "reward",
                "terminated", "truncated", "behaviour", "expert_steering", "expert_speed_mps")
        rec: dict[str, list] = {k: [] for k in keys}
        frame = grab_frame(env, cfg.frame_size)
        while True:
            others = np.asarray(obs, dtype=np.float32)[1:]
            track = others_tracks(env, ids)
            speed = float(u.vehicle.speed)
            expert = policy.expert(others)  # before the behaviour acts: the label of this state
            action, mode = policy.act(others)
            obs, reward, terminated, truncated, _ = env.step(action)
            for k, v in (("frames", frame), ("others", others), ("others_track", track), ("steering", action[1]), ("speed_mps", speed),
                         ("target_speed_mps", float(u.vehicle.speed)), ("raw_action", action),
                         ("reward", float(reward)), ("terminated", bool(terminated)),
                         ("truncated", bool(truncated)), ("behaviour", mode),
                         ("expert_steering", expert[0]), ("expert_speed_mps", expert[1])):
                rec[k].append(v)
            frame = grab_frame(env, cfg.frame_size)
            if terminated or truncated:
                break
            if len(rec["frames"]) >= limit:
                rec["truncated"][-1] = True
                break
        crashed = bool(u.vehicle.crashed)
        sizes = {(float(v.LENGTH), float(v.WIDTH)) for v in u.road.vehicles if v is not u.vehicle}
        ego_size = (float(u.vehicle.LENGTH), float(u.vehicle.WIDTH))
        config = u.config
        sim_hz = int(config["simulation_frequency"])
    finally:
        env.close()
    arrays = {k: np.asarray(v) for k, v in rec.items()}
    arrays["frames"] = np.stack(rec["frames"]).astype(np.uint8)
    arrays["others"] = np.stack(rec["others"]).astype(np.float32)
    arrays["others_track"] = np.stack(rec["others_track"]).astype(np.int16)
    arrays["raw_action"] = np.stack(rec["raw_action"]).astype(np.float32)
    arrays["behaviour"] = arrays["behaviour"].astype(np.uint8)
    for k in ("expert_steering", "expert_speed_mps"):
        arrays[k] = arrays[k].astype(np.float32)
    arrays["last_frame"] = frame
    meta = {
        "source": "highway",
        "scenario": scenario,
        "env_class": type(u).__mro__[1].__name__,
        "lanes": lanes,
        "lanes_source": lanes_source,
        **{k: config[k] for k in ("vehicles_count", "vehicles_density") if k in config},
        "others_at_reset": others_at_reset,
        "scene_overrides": scene,
        # every vehicle of these scenarios has one box size (highway-env's Vehicle.LENGTH x WIDTH)
        "others_sizes_m": sorted(sizes),
        "ego_size_m": list(ego_size),
        "policy_frequency": int(cfg.policy_frequency),
        "simulation_frequency": sim_hz,
        "fps": float(cfg.policy_frequency),
        "frame_size": int(cfg.frame_size),
        "view_m": VIEW_M,
        "px_per_m": cfg.frame_size / VIEW_M,
        "centering_position": list(config["centering_position"]),
        "crashed": crashed,
        "others_features": list(OTHERS_FEATURES),
        "others_units": OTHERS_UNITS,
        "others_relative_to_ego": True,
        "raw_action_names": ["acceleration", "steering"],
        "accel_range_mps2": list(ACCEL_RANGE),
        "steering_range_rad": list(STEER_RANGE),
        "cruise_speed_range_mps": [policy.v_lo, policy.v_hi],
        "behaviour_modes": {str(k): v for k, v in MODES.items()},
    }
    return arrays, meta


def scenario_of(i: int, scenarios, cfg: HighwayCollectConfig) -> str:
    """Episode i's scenario. "round_robin": i mod the number of scenarios (with 4 scenarios and every 10th
    episode held out, the validation split then holds only two of them); "interleaved" (the default):
    shifted by one every `val_every` episodes, so the validation split and the training split both
    hold every scenario in equal shares."""
    n = len(scenarios)
    if cfg.scenario_order == "round_robin":
        return scenarios[i % n]
    if cfg.scenario_order == "interleaved":
        return scenarios[(i + i // max(1, cfg.val_every)) % n]
    raise ConfigError(f"scenario_order must be 'interleaved' or 'round_robin', got {cfg.scenario_order!r}")


def collect_highway(cfg: HighwayCollectConfig, out_dir: Path, progress: bool = True) -> dict:
    """Record (or finish recording) the planned highway-env episodes into `out_dir`; returns the manifest.

    A rerun with more episodes (or other workers / compression) resumes; one with other scenarios, frame
    size, episode length, seed... is refused with a `DatasetError` naming the differing fields.
    """
    if not cfg.scenarios:
        raise ConfigError("no scenarios to collect")
    _check_video_driver()
    for s in cfg.scenarios:  # fail before any worker starts on a misspelt id
        try:
            gym.spec(s)
        except gym.error.Error as e:
            raise ConfigError(f"unknown highway-env scenario {s!r}: {e}") from None
    scen = list(cfg.scenarios)
    extras = [(scenario_of(i, scen, cfg),) for i in range(cfg.episodes)]
    specs = plan_episodes(cfg.episodes, cfg.seed, cfg.val_every, extras=extras)
    return run_collection(record_highway_episode, specs, cfg, out_dir, info=highway_info(cfg),
                          workers=cfg.workers, compress=cfg.compress, progress=progress)


def highway_info(cfg: HighwayCollectConfig) -> dict:
    """The manifest header of a highway-env collection with `cfg`. A rerun into the same directory must
    give the same header (scenarios, frame size, episode length, rates, seed...), but for
    `gaia_gym.data.collect.RERUN_FREE` (episodes, workers, compress)."""
    return dict(source="highway", fps=cfg.policy_frequency, frame_size=cfg.frame_size,
                config=dataclasses.asdict(cfg))


def bench_recorder(episodes_per_scenario: int = 20, cfg: HighwayCollectConfig | None = None) -> dict:
    """Recorded steps per second of `record_highway_episode` in this process, per scenario.

    Reports steps per wall-clock second and per CPU second of this process (the latter is what one
    process delivers on an otherwise idle core; the former drops when other jobs share the cores).
    """
    cfg = cfg or HighwayCollectConfig()
    out: dict = {}
    tot = np.zeros(3)
    for scenario in cfg.scenarios:
        steps, t0, c0 = 0, time.perf_counter(), time.process_time()
        for i in range(episodes_per_scenario):
            arrays, _ = record_highway_episode(EpisodeSpec(i, 10_000 + i, "train", (scenario,)), cfg)
            steps += len(arrays["frames"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[scenario] = {"steps": steps, "steps_per_wall_s": round(steps / wall, 1),
                         "steps_per_cpu_s": round(steps / cpu, 1)}
        tot += (steps, wall, cpu)
    out["overall"] = {"steps": int(tot[0]), "steps_per_wall_s": round(tot[0] / tot[1], 1),
                      "steps_per_cpu_s": round(tot[0] / tot[2], 1)}
    return out
