"""`gaia-gym collect carracing`: the behaviour mixes, the episode recorder, and its measurements.

A world model only learns the consequences of actions it has seen (DIAMOND and Vista users report
"changing the action does not change the video" when data is expert-only), and an agent that drives
faster or recovers better than the collector needs a model that is right there too. So the scripted
expert is only the backbone; each episode is a sequence of *segments*, each in one behaviour mode.

The default mix, "v2": every mixed episode also draws a *driver style* (`driver_style`: the
`PursuitParams` of a pure-pursuit driver with its own look-ahead, steering gain, top speed, cornering
budget and braking preview), so the data holds many drivers, not one:

| id | mode      | what the car does                                                               |
|----|-----------|---------------------------------------------------------------------------------|
| 0  | expert    | the reference expert (the label of every step), tiny smooth noise               |
| 1  | noisy     | the episode's driver with strong smooth (Ornstein-Uhlenbeck) steering noise, speed x0.5-1.3 |
| 2  | excursion | a steering bias to the left or right that leaves the road; the next segment recovers |
| 3  | brake     | late hard braking to 0-25 m/s, steering still follows the track                  |
| 4  | random    | uniform random steering and target speed (0-100 m/s), each held 1-3 steps        |
| 5  | style     | the episode's driver as it is (look-ahead, gains, speeds up to 100 m/s)          |
| 6  | weave     | the episode's driver plus a sine weave (amplitude 0.08-0.4, 0.15-1.5 Hz)         |
| 7  | fast      | the episode's steering at a held 75-100 m/s: the car's limit, corners overshot   |

"v1" (modes 0-4 only, one driver) is the first mix, kept so its dataset rebuilds bit for bit.
`clean_fraction` of the episodes are expert-only (mode 0). All randomness comes from
``np.random.default_rng([track_seed, 7])``, so a plan is reproducible and resumable. Whatever the mode,
`expert_steering` / `expert_speed_mps` record what the reference expert would do at that step.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from gaia_gym.config import CarRacingCollectConfig
from gaia_gym.data import format as fmt
from gaia_gym.data.collect import EpisodeSpec, plan_episodes, run_collection
from gaia_gym.data.frames import SIM_FPS
from gaia_gym.sims.rig import cameras_from_names, render_rig, rig_manifest
from gaia_gym.errors import ConfigError
from gaia_gym.sims.carracing import (
    ZOOM_FRAMES,
    CarRacingDrive,
    PursuitDriver,
    PursuitParams,
    run_scripted_episode,
)

MODES = {0: "expert", 1: "noisy", 2: "excursion", 3: "brake", 4: "random"}
MODE_PROBS = np.array([0.40, 0.22, 0.14, 0.10, 0.14])  # over MODES, for mixed episodes
MODE_STEPS = {0: (12, 50), 1: (12, 40), 2: (5, 16), 3: (8, 22), 4: (8, 30)}  # duration ranges, steps
RANDOM_MAX_SPEED = 90.0  # m/s, top of the random segments' target speeds


class BehaviourMix:
    """Turns the expert's (steering, target speed) into the recorded behaviour, segment by segment."""

    def __init__(self, rng: np.random.Generator, clean: bool) -> None:
        self.rng = rng
        self.clean = clean
        self.mode = 0
        self.left = 0
        self.ou = 0.0
        self.speed_scale = 1.0
        self.bias = 0.0
        self.hold = 0
        self.held = (0.0, 0.0)
        self.after_excursion = False

    def _next_segment(self) -> None:
        r = self.rng
        if self.clean:
            self.mode = 0
        elif self.after_excursion:  # recover with the expert before anything else
            self.mode, self.after_excursion = 0, False
        else:
            self.mode = int(r.choice(len(MODES), p=MODE_PROBS))
        lo, hi = MODE_STEPS[self.mode]
        self.left = int(r.integers(lo, hi + 1))
        self.speed_scale = 1.0 if self.mode == 0 else float(r.uniform(0.5, 1.3))
        if self.mode == 2:
            self.bias = float(r.choice([-1, 1]) * r.uniform(0.4, 1.0))
            self.after_excursion = True
        self.hold = 0

    def __call__(self, steer: float, speed: float) -> tuple[float, float, int]:
        if self.left <= 0:
            self._next_segment()
        self.left -= 1
        r = self.rng
        m = self.mode
        sigma = 0.03 if m == 0 else 0.12
        self.ou += -0.25 * self.ou + sigma * r.standard_normal()
        if m == 0:
            s, v = steer + self.ou, speed * (1.0 + 0.05 * r.standard_normal())
        elif m == 1:
            s, v = steer + 2.0 * self.ou, speed * self.speed_scale
        elif m == 2:
            s, v = steer + self.bias, speed * min(self.speed_scale, 1.0)
        elif m == 3:
            s, v = steer, 0.0
        else:
            if self.hold <= 0:
                self.held = (float(r.uniform(-1, 1)), float(r.uniform(0, RANDOM_MAX_SPEED)))
                self.hold = int(r.integers(1, 4))
            self.hold -= 1
            s, v = self.held
        return float(np.clip(s, -1.0, 1.0)), float(max(v, 0.0)), m


MODES_V2 = {**MODES, 5: "style", 6: "weave", 7: "fast"}
MODE_PROBS_V2 = np.array([0.10, 0.12, 0.12, 0.08, 0.10, 0.20, 0.17, 0.11])
MODE_STEPS_V2 = {0: (12, 40), 1: (10, 30), 2: (4, 14), 3: (6, 18), 4: (6, 24), 5: (15, 50), 6: (15, 45), 7: (8, 30)}
MAX_TARGET_MPS = 100.0  # the action codec's top speed; CarRacing's car tops out near it


def driver_style(rng: np.random.Generator) -> PursuitParams:
    """One driver: pure pursuit with its own look-ahead (short: tight and twitchy, long: cuts corners),
    steering gain, top and corner speeds, cornering budget and braking preview (short: brakes late)."""
    v_max = float(rng.uniform(50.0, MAX_TARGET_MPS))
    return PursuitParams(
        lookahead_base=float(rng.uniform(5.0, 18.0)),
        lookahead_per_mps=float(rng.uniform(0.10, 0.35)),
        steer_gain=float(rng.uniform(0.7, 1.5)),
        v_max=v_max,
        v_min=float(rng.uniform(15.0, min(40.0, v_max))),
        lateral_accel=float(rng.uniform(170.0, 450.0)),
        preview_s=float(rng.uniform(0.4, 1.8)),
    )


class BehaviourMixV2(BehaviourMix):
    """The v2 mix: segments over MODES_V2, driven by the reference expert or the episode's own driver."""

    def __init__(self, rng: np.random.Generator, clean: bool) -> None:
        super().__init__(rng, clean)  # the v1 mix's segment state
        self.style = PursuitParams() if clean else driver_style(rng)
        self.weave = (0.0, 0.0, 0.0)  # amplitude, Hz, phase
        self.fast = MAX_TARGET_MPS
        self.brake_to = 0.0
        self.t = 0  # steps into the episode

    def _next_segment(self) -> None:
        r = self.rng
        if self.clean:
            self.mode = 0
        elif self.after_excursion:  # recover before anything else: the reference expert or the episode's driver
            self.mode, self.after_excursion = int(r.choice([0, 5])), False
        else:
            self.mode = int(r.choice(len(MODES_V2), p=MODE_PROBS_V2))
        lo, hi = MODE_STEPS_V2[self.mode]
        self.left = int(r.integers(lo, hi + 1))
        self.speed_scale = float(r.uniform(0.5, 1.3))
        if self.mode == 2:
            self.bias = float(r.choice([-1, 1]) * r.uniform(0.3, 1.0))
            self.after_excursion = True
        elif self.mode == 3:
            self.brake_to = float(r.uniform(0.0, 25.0))
        elif self.mode == 6:
            self.weave = (float(r.uniform(0.08, 0.4)), float(r.uniform(0.15, 1.5)), float(r.uniform(0, 2 * np.pi)))
        elif self.mode == 7:
            self.fast = float(r.uniform(75.0, MAX_TARGET_MPS))
        self.hold = 0

    def __call__(self, expert: tuple[float, float], own: tuple[float, float]) -> tuple[float, float, int]:
        """expert: the reference expert's (steer, speed); own: the episode's driver's. -> (steer, speed, mode)."""
        if self.left <= 0:
            self._next_segment()
        self.left -= 1
        self.t += 1
        r = self.rng
        m = self.mode
        sigma = 0.03 if m in (0, 5, 6, 7) else 0.12
        self.ou += -0.25 * self.ou + sigma * r.standard_normal()
        if m == 0:
            s, v = expert[0] + self.ou, expert[1] * (1.0 + 0.05 * r.standard_normal())
        elif m == 1:
            s, v = own[0] + 2.0 * self.ou, own[1] * self.speed_scale
        elif m == 2:
            s, v = own[0] + self.bias, own[1] * min(self.speed_scale, 1.0)
        elif m == 3:
            s, v = own[0], self.brake_to
        elif m == 4:
            if self.hold <= 0:
                self.held = (float(r.uniform(-1, 1)), float(r.uniform(0, MAX_TARGET_MPS)))
                self.hold = int(r.integers(1, 4))
            self.hold -= 1
            s, v = self.held
        elif m == 5:
            s, v = own[0] + self.ou, own[1]
        elif m == 6:
            a, hz, ph = self.weave
            s, v = own[0] + a * np.sin(2 * np.pi * hz * self.t * 0.08 + ph), own[1]
        else:
            s, v = own[0] + self.ou, self.fast
        return float(np.clip(s, -1.0, 1.0)), float(np.clip(v, 0.0, MAX_TARGET_MPS)), m


MIXES = {"v1": MODES, "v2": MODES_V2}


def record_carracing_episode(spec: EpisodeSpec, cfg: CarRacingCollectConfig) -> tuple[dict, dict]:
    """Drive track `spec.seed` with the behaviour mix; returns (arrays, meta) for one shard."""
    modes = mix_modes(cfg.mix)
    drive = CarRacingDrive(frame_skip=cfg.frame_skip, frame_size=cfg.frame_size)
    driver = PursuitDriver(drive)
    cams = cameras_from_names(cfg.cameras)
    rng = np.random.default_rng([spec.seed, 7])
    clean = bool(rng.random() < cfg.clean_fraction)
    v2 = cfg.mix == "v2"
    mix = BehaviourMixV2(rng, clean) if v2 else BehaviourMix(rng, clean)
    own_driver = PursuitDriver(drive, mix.style) if v2 else None
    frame = drive.reset(spec.seed)
    rig = lambda: render_rig(drive.sim, cams, drive.last_obs, cfg.frame_size)  # noqa: E731
    views, all_views = (rig() if cams else None), []
    rec: dict[str, list] = {k: [] for k in ("frames", "steering", "speed_mps", "target_speed_mps",
                                            "raw_action", "reward", "terminated", "truncated", "behaviour",
                                            "expert_steering", "expert_speed_mps")}
    while True:
        speed = drive.speed_mps
        expert = driver.act()  # what the clean expert would do here: the label of every step, noisy ones too
        steer, target, mode = mix(expert, own_driver.act()) if v2 else mix(*expert)
        s = drive.step(steer, target)
        for k, v in (("frames", frame), ("steering", steer), ("speed_mps", speed),
                     ("target_speed_mps", target), ("raw_action", s.raw_action), ("reward", s.reward),
                     ("terminated", s.terminated), ("truncated", s.truncated), ("behaviour", mode),
                     ("expert_steering", expert[0]), ("expert_speed_mps", expert[1])):
            rec[k].append(v)
        frame = s.frame
        if cams:
            all_views.append(views)
            views = rig()
        if s.terminated or s.truncated:
            break
        if cfg.max_steps and len(rec["frames"]) >= cfg.max_steps:
            rec["truncated"][-1] = True
            break
    drive.close()
    arrays = {k: np.asarray(v) for k, v in rec.items()}
    arrays["frames"] = np.stack(rec["frames"])
    arrays["behaviour"] = arrays["behaviour"].astype(np.uint8)
    arrays["last_frame"] = frame
    if cams:
        arrays["views"], arrays["last_views"] = np.stack(all_views), views
    meta = {
        "source": "carracing",
        "clean": clean,
        "fps": SIM_FPS / cfg.frame_skip,
        "frame_skip": cfg.frame_skip,
        "frame_size": cfg.frame_size,
        "zoom_reward": -0.1 * ZOOM_FRAMES,  # the zoom-in's time penalty, not in `reward`
        "lap_finished": bool(s.info.get("lap_finished", False)),
        "behaviour_modes": {str(k): v for k, v in modes.items()},
    }
    if v2:
        meta["driver_style"] = asdict(mix.style)
    if cams:
        meta["cameras"] = rig_manifest(cams)
    return arrays, meta


def mix_modes(name: str) -> dict[int, str]:
    """The behaviour modes of mix `name` ("v1", "v2"); an unknown name is a one-line error."""
    if name not in MIXES:
        raise ConfigError(f"unknown CarRacing behaviour mix {name!r}; choose from {', '.join(MIXES)}")
    return MIXES[name]


def carracing_info(cfg: CarRacingCollectConfig) -> dict:
    """The manifest header of a CarRacing collection with `cfg`. A rerun into the same directory must
    give the same header, but for `gaia_gym.data.collect.RERUN_FREE` (episodes, workers, compress)."""
    return {
        "source": "carracing",
        "sim": "CarRacing-v3",
        "fps": SIM_FPS / cfg.frame_skip,
        "frame_size": cfg.frame_size,
        "frame_convention": "carracing",
        "behaviour_modes": {str(k): v for k, v in mix_modes(cfg.mix).items()},
        "config": asdict(cfg),
        **({"cameras": rig_manifest(cameras_from_names(cfg.cameras))} if cfg.cameras else {}),
    }


def collect_carracing(cfg: CarRacingCollectConfig, out_dir: Path, progress: bool = True) -> dict:
    """Record (or finish recording) the planned CarRacing episodes into `out_dir`.

    A rerun with more episodes (or other workers / compression) resumes; one with another frame size,
    frame skip, episode length, seed... is refused with a `DatasetError` naming the differing fields.
    """
    specs = plan_episodes(cfg.episodes, cfg.seed, cfg.val_every)
    info = carracing_info(cfg)
    return run_collection(record_carracing_episode, specs, cfg, out_dir, info, workers=cfg.workers,
                          compress=cfg.compress, progress=progress)


# ----------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------
def evaluate_scripted_driver(seeds: Iterable[int], workers: int = 2, frame_skip: int = 4,
                             progress: bool = True) -> dict:
    """The clean scripted driver (no noise) on each track seed; CarRacing's own episode return."""
    seeds = list(seeds)
    args = [(s, frame_skip) for s in seeds]
    with mp.get_context("spawn").Pool(max(1, min(workers, len(seeds)))) as pool:
        res = list(tqdm(pool.imap(_scripted, args), total=len(seeds), desc="scripted driver",
                        disable=not progress))
    rets = np.array([r["return"] for r in res])
    return {"seeds": seeds, "returns": rets.round(1).tolist(), "mean": float(rets.mean()),
            "std": float(rets.std()), "laps_finished": int(sum(r["lap_finished"] for r in res)),
            "frame_skip": frame_skip}


def _scripted(args):
    seed, skip = args
    return run_scripted_episode(seed, frame_skip=skip)


def _raw_worker(args):
    seconds, seed = args
    env = gym.make("CarRacing-v3", disable_env_checker=True)
    rng = np.random.default_rng(seed)
    frames, t0 = 0, time.perf_counter()
    env.reset(seed=seed)
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(np.array([rng.uniform(-1, 1), 0.5, 0.0], dtype=np.float32))
        frames += 1
        if term or trunc:
            env.reset()
    return frames, time.perf_counter() - t0


def _collect_worker(args):
    seconds, seed, skip = args
    cfg = CarRacingCollectConfig(frame_skip=skip)
    frames, steps, t0 = 0, 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        i = 0
        while time.perf_counter() - t0 < seconds:
            spec = EpisodeSpec(i, seed + i, "train")
            arrays, meta = record_carracing_episode(spec, cfg)
            fmt.write_episode(Path(d) / fmt.episode_filename(i), arrays, meta)
            steps += len(arrays["frames"])
            frames += len(arrays["frames"]) * skip
            i += 1
    return frames, time.perf_counter() - t0, steps


def bench_collection(seconds: float = 60.0, workers: int = 2, frame_skip: int = 4, rounds: int = 2) -> dict:
    """Collection throughput vs the raw simulator, measured side by side in one run.

    Both use `workers` processes. The raw simulator steps CarRacing-v3 one frame at a time, rendering
    its observation as it always does. Collection runs the whole pipeline: driver, behaviour mix,
    frame conversion, shard writing. Throughput = simulated driving frames (50 Hz) per wall second,
    zoom-ins and resets included in the time. Rounds alternate raw / collect to cancel drift.
    """
    raw_f = raw_t = col_f = col_t = col_steps = 0.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for r in range(rounds):
            out = pool.map(_raw_worker, [(seconds / rounds, 5_000_000 + 100 * r + w) for w in range(workers)])
            raw_f += sum(o[0] for o in out)
            raw_t += max(o[1] for o in out)
            out = pool.map(_collect_worker, [(seconds / rounds, 6_000_000 + 1000 * (r * workers + w), frame_skip)
                                             for w in range(workers)])
            col_f += sum(o[0] for o in out)
            col_t += max(o[1] for o in out)
            col_steps += sum(o[2] for o in out)
    raw = raw_f / raw_t
    col = col_f / col_t
    return {
        "workers": workers,
        "frame_skip": frame_skip,
        "raw_sim_frames_per_s": round(raw, 1),
        "collect_sim_frames_per_s": round(col, 1),
        "collect_recorded_steps_per_s": round(col_steps / col_t, 1),
        "collect_vs_raw_speed_ratio": round(col / raw, 3),
        "seconds_each": seconds,
    }
