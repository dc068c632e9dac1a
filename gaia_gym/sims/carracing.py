"""Real CarRacing-v3, driven through gaia_gym's action interface.

`CarRacingDrive` is the single adapter between the real simulator and everything in gaia_gym that
speaks [steering, speed]: the data collector, (later) the real-simulator evaluator of agents and the
planner. It owns

- the **frame skip**: one gaia_gym step = ``frame_skip`` simulator frames (4 by default, i.e. 12.5 Hz
  from CarRacing's 50 Hz). At 50 Hz consecutive frames are nearly identical, so a world model would
  spend its tokens predicting "no change"; at 12.5 Hz one step moves the car by about a car length at
  cruising speed, steering has a visible effect within a step, and an episode is ~237 steps, a horizon
  an RL agent can assign credit over. Frames in between are simulated (physics, reward, termination)
  but not rendered — pixels nobody records are not drawn, which makes collection faster than the raw
  simulator (see `gaia-gym bench`-style figures in results/data.json).
- the **speed controller**: the speed action is a target speed in m/s; a proportional controller turns
  it into gas/brake at every simulator frame (50 Hz) from the measured speed, with traction control
  (no gas while the rear wheels spin faster than the car moves: full gas on grass otherwise spins
  CarRacing's rear-wheel-drive car in circles).
- the **zoom-in**: CarRacing animates a zoom during its first second (50 frames); those frames are
  simulated with no action and never returned.
- the **frame convention** (`gaia_gym.data.frames.carracing_frame`: HUD cropped, 64x64).

Units: CarRacing's Box2D world has no declared unit; its own HUD reads the hull's linear velocity as
"true speed", and we log that number as m/s (`speed_mps`). Steering is the simulator's steer command
in [-1, 1] (-1 = full left); the front wheels' joint limit is 0.4 rad, reached at |steer| >= 0.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from gaia_gym.data.frames import carracing_frame
from gaia_gym.errors import ConfigError

ZOOM_FRAMES = 50  # CarRacing's zoom-in animation lasts t < 1 s at 50 FPS


@dataclass(frozen=True)
class SpeedController:
    """Proportional speed controller: target speed (m/s) and measured speed -> (gas, brake)."""

    gas_gain: float = 0.1  # gas per m/s of speed deficit
    brake_gain: float = 0.06  # brake per m/s of speed excess
    max_brake: float = 0.8  # below 0.9: brakes slow the wheels instead of locking them
    deadband: float = 1.0  # m/s of excess tolerated before braking
    max_slip: float = 8.0  # traction control: no gas while the rear wheels outrun the car by this, m/s

    def __call__(self, target: float, speed: float, wheel_speed: float = 0.0) -> tuple[float, float]:
        err = target - speed
        gas = float(np.clip(self.gas_gain * err, 0.0, 1.0))
        if wheel_speed - speed > self.max_slip:  # spinning wheels on grass spin the car round
            gas = 0.0
        brake = 0.0
        if err < -self.deadband:
            brake = float(np.clip(-self.brake_gain * err, 0.0, self.max_brake))
        return gas, brake


@dataclass
class DriveStep:
    """What one gaia_gym step in the real simulator produced."""

    frame: np.ndarray  # (S, S, 3) uint8, after the step
    reward: float  # summed over the simulated frames
    terminated: bool
    truncated: bool
    speed_mps: float  # measured after the step
    raw_action: np.ndarray  # (3,) mean [steer, gas, brake] sent to the simulator over the frames
    sim_frames: int  # simulator frames actually run (< frame_skip only when the episode ended)
    info: dict


class CarRacingDrive:
    """CarRacing-v3 with [steering in [-1, 1], target speed in m/s] actions and dataset frames.

    Args:
        frame_skip: simulator frames per step.
        frame_size: side of the square dataset frame.
        controller: speed controller mapping target speed to gas/brake.
        render_skipped: render the frames in between too (only to measure the raw simulator).
    """

    def __init__(
        self,
        frame_skip: int = 4,
        frame_size: int = 64,
        controller: SpeedController | None = None,
        render_skipped: bool = False,
    ) -> None:
        if frame_skip < 1:
            raise ConfigError(f"frame_skip must be >= 1, got {frame_skip}")
        self.frame_skip = frame_skip
        self.frame_size = frame_size
        self.controller = controller or SpeedController()
        self.render_skipped = render_skipped
        self.env = gym.make("CarRacing-v3", disable_env_checker=True)  # TimeLimit(1000 frames) included, as everyone scores it
        self.sim = self.env.unwrapped
        self._real_render = self.sim._render
        self.frames_run = 0

    # --- simulator access -------------------------------------------------------------------
    @property
    def speed_mps(self) -> float:
        v = self.sim.car.hull.linearVelocity
        return float(math.hypot(v[0], v[1]))

    @property
    def rear_wheel_speed(self) -> float:
        """Surface speed of the driven (rear) wheels, m/s."""
        w = self.sim.car.wheels[2:4]
        return float(max(abs(x.omega) * x.wheel_rad for x in w))

    @property
    def track_xy(self) -> np.ndarray:
        """(N, 2) centreline points of the current track, in driving order."""
        return np.asarray([t[2:4] for t in self.sim.track], dtype=np.float64)

    def _sim_step(self, action: np.ndarray, render: bool):
        # The simulator renders state pixels inside every step; the frames we do not keep are skipped
        # by swapping its renderer for a no-op, so physics, reward and termination are its own code.
        if not render:
            self.sim._render = lambda mode: None
        try:
            out = self.env.step(action)
        finally:
            self.sim._render = self._real_render
        self.frames_run += 1
        return out

    # --- episode API ------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        """New track from `seed`; runs the zoom-in with no action; returns the first dataset frame."""
        obs, _ = self.env.reset(seed=int(seed))
        noop = np.zeros(3, dtype=np.float32)
        for k in range(ZOOM_FRAMES):
            obs, _, _, _, _ = self._sim_step(noop, render=(k == ZOOM_FRAMES - 1))
        self.last_obs = obs
        return carracing_frame(obs, self.frame_size)

    def step(self, steering: float, target_speed_mps: float) -> DriveStep:
        """Hold `steering` and track `target_speed_mps` for `frame_skip` simulator frames."""
        if not (math.isfinite(steering) and math.isfinite(target_speed_mps)):
            raise ConfigError(f"action must be finite, got steering={steering}, speed={target_speed_mps}")
        steering = float(np.clip(steering, -1.0, 1.0))
        total_r, raw_sum, n = 0.0, np.zeros(3), 0
        terminated = truncated = False
        info: dict = {}
        obs = None
        for k in range(self.frame_skip):
            gas, brake = self.controller(target_speed_mps, self.speed_mps, self.rear_wheel_speed)
            raw = np.array([steering, gas, brake], dtype=np.float32)
            last = k == self.frame_skip - 1
            obs, r, terminated, truncated, info = self._sim_step(raw, render=last or self.render_skipped)
            total_r += float(r)
            raw_sum += raw
            n += 1
            if terminated or truncated:
                if obs is None:  # ended on a frame we did not render: draw it now
                    obs = self._real_render("state_pixels")
                break
        self.last_obs = obs
        return DriveStep(
            frame=carracing_frame(obs, self.frame_size),
            reward=total_r,
            terminated=bool(terminated),
            truncated=bool(truncated),
            speed_mps=self.speed_mps,
            raw_action=(raw_sum / n).astype(np.float32),
            sim_frames=n,
            info=dict(info),
        )

    def close(self) -> None:
        self.env.close()


# ----------------------------------------------------------------------------------------------
# The privileged scripted driver
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PursuitParams:
    """Pure pursuit on the track centreline plus a curvature-limited speed profile."""

    lookahead_base: float = 10.0  # metres of lookahead at standstill
    lookahead_per_mps: float = 0.22  # extra lookahead per m/s
    wheelbase: float = 2.5  # metres (the Car's axle distance, SIZE-scaled)
    steer_gain: float = 1.0
    v_max: float = 70.0  # m/s on straights
    v_min: float = 25.0  # m/s in the tightest corners
    lateral_accel: float = 260.0  # m/s^2 budget for v^2 * curvature
    preview_s: float = 1.2  # seconds of track ahead scanned for curvature


class PursuitDriver:
    """Privileged expert: reads the track centreline and the car pose from the simulator."""

    def __init__(self, drive: CarRacingDrive, params: PursuitParams | None = None) -> None:
        self.drive = drive
        self.p = params or PursuitParams()
        self.reset()

    def reset(self) -> None:
        self._xy: np.ndarray | None = None
        self._idx = 0

    def _track(self) -> np.ndarray:
        if self._xy is None:
            self._xy = self.drive.track_xy
            seg = np.diff(np.vstack([self._xy, self._xy[:1]]), axis=0)
            self._seglen = np.hypot(seg[:, 0], seg[:, 1])
            head = np.arctan2(seg[:, 1], seg[:, 0])
            dh = np.angle(np.exp(1j * (np.roll(head, -1) - head)))
            self._curv = np.abs(dh) / np.maximum(self._seglen, 1e-6)  # 1/m, per segment
        return self._xy

    def nearest_index(self) -> int:
        xy = self._track()
        pos = np.asarray(self.drive.sim.car.hull.position)
        n = len(xy)
        # search a window around the last index (tracks can pass close to themselves)
        window = (self._idx + np.arange(-10, 40)) % n
        d = np.hypot(*(xy[window] - pos).T)
        if d.min() > 15.0:  # lost (far off the road, spun round): search the whole track
            window = np.arange(n)
            d = np.hypot(*(xy - pos).T)
        self._idx = int(window[np.argmin(d)])
        return self._idx

    def _ahead(self, i: int, dist: float) -> int:
        n = len(self._xy)
        acc = 0.0
        while acc < dist:
            acc += self._seglen[i % n]
            i += 1
        return i % n

    def act(self) -> tuple[float, float]:
        """(steering in [-1, 1], target speed m/s) for the current car pose."""
        xy = self._track()
        car = self.drive.sim.car.hull
        v = self.drive.speed_mps
        i = self.nearest_index()
        ld = self.p.lookahead_base + self.p.lookahead_per_mps * v
        j = self._ahead(i, ld)
        d = xy[j] - np.asarray(car.position)
        fwd = np.asarray(car.GetWorldVector((0, 1)))
        right = np.asarray(car.GetWorldVector((1, 0)))
        x_f, x_r = float(d @ fwd), float(d @ right)
        dist2 = max(x_f * x_f + x_r * x_r, 1e-6)
        kappa = 2.0 * x_r / dist2
        delta = math.atan(self.p.wheelbase * kappa)  # wheel angle, rad (right positive)
        steer = float(np.clip(self.p.steer_gain * delta / 0.4, -1.0, 1.0))
        # speed: the sharpest curvature in the next preview_s seconds bounds the target speed
        k_end = self._ahead(i, max(v, 20.0) * self.p.preview_s)
        idx = np.arange(i, k_end if k_end >= i else k_end + len(xy)) % len(xy)
        kmax = float(self._curv[idx].max()) if len(idx) else 0.0
        vt = math.sqrt(self.p.lateral_accel / max(kmax, 1e-6))
        return steer, float(np.clip(vt, self.p.v_min, self.p.v_max))


def run_scripted_episode(seed: int, frame_skip: int = 4, params: PursuitParams | None = None) -> dict:
    """Drive one track with the clean scripted driver; returns its real return and length."""
    drive = CarRacingDrive(frame_skip=frame_skip)
    driver = PursuitDriver(drive, params)
    drive.reset(seed)
    ret, steps, frames = 0.0, 0, drive.frames_run
    while True:
        s = drive.step(*driver.act())
        ret += s.reward
        steps += 1
        if s.terminated or s.truncated:
            break
    # CarRacing's episode return counts the zoom-in frames' time penalty too (they ran with no action).
    zoom_penalty = -0.1 * ZOOM_FRAMES
    out = {
        "seed": int(seed),
        "return": ret + zoom_penalty,
        "steps": steps,
        "sim_frames": drive.frames_run - frames,
        "lap_finished": bool(s.info.get("lap_finished", False)),
    }
    drive.close()
    return out
