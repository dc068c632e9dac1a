"""Agents on the real simulator's test tracks, and result summaries.

Policies scored here drive the REAL CarRacing-v3:
  - an SB3 agent (PPO or SAC) trained in imagination (agents/train_imagination.py; "shipped": the one in
    the package); it sees the real simulator through `RealCarRacingEnv`, which has GaiaDrive-v0's
    observation space (real frame -> the world model's tokens and hidden features), observation keys as
    when trained;
  - "random": uniform random [steering, speed] actions, through the same env;
  - "scripted": the privileged scripted driver (`gaia_gym.sims.carracing.run_scripted_episode`).

Test tracks: `gaia_gym.seeds.TEST_TRACKS`, the 20 track seeds 1,000,000..1,000,019 (the collector never uses seeds
from 1,000,000 up; training's real-simulator evaluations use 1,000,100+).

Returns are counted as CarRacing-v3 counts them, the same way for all three: every simulator frame
costs -0.1, including the 50 zoom-in frames that `RealCarRacingEnv.reset` (and the scripted driver)
run with no action before the first observation, so ZOOM_PENALTY = -0.1 * ZOOM_FRAMES is added to the
sum of the step rewards (as `run_scripted_episode` does). `max_steps` caps episodes (smoke tests);
capped returns are flagged and are not comparable.

`run_episode` is the one real-episode runner, for any real env (`RealCarRacingEnv`, `RealHighwayEnv`);
`summarize` turns episodes into the JSON record every evaluation writes (results/agents.json);
`drive_tracks` is the resumable real-track harness of a planner (`summarize_planning` its record);
`gaia_gym.evaluation.costs.pipeline_costs` adds what an imagination-trained policy cost. The command
line is agents/evaluate_real.py.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from gaia_gym.envs.real import ZOOM_PENALTY
from gaia_gym.errors import ConfigError
from gaia_gym.rl.agent import agent_actor
from gaia_gym.rl.planner import Planner, PlannerConfig
from gaia_gym.seeds import TEST_TRACKS

STEP_SECONDS = 0.08  # one env step: 4 simulator frames at 50 Hz
Actor = Callable[[dict], np.ndarray]


def random_actor(action_space, seed: int = 0) -> Actor:
    """Uniform random actions from `action_space` (seeded)."""
    action_space.seed(seed)
    return lambda obs: action_space.sample()


def run_episode(env, act, seed: int, max_steps: int | None = None, video: bool = False,
                scenario: str | None = None) -> dict:
    """One real episode of `env` (a `RealCarRacingEnv` or a `RealHighwayEnv`) from `seed` (a CarRacing
    track; a highway episode seed, with its `scenario`) with `act(obs) -> action` (a policy, or a planner
    reading `env.engine`; on highway also "scripted" or "random").

    Returns the real return (CarRacing's counts every frame -0.1, the zoom-in's ZOOM_PENALTY included),
    the world model's predicted return (``info["model_reward"]`` summed), the per-step real rewards, the
    steps, whether `max_steps` cut it (then the return is not comparable) and the wall seconds; on
    CarRacing ``track`` and ``lap_finished``; on highway ``scenario``, ``crashed``, ``success`` (where the
    scenario defines it), ``distance_m``, the per-step ``speeds`` and ``end_probs`` (the end head's
    crash probability); with ``video`` also the frames (`render()`)."""
    highway = scenario is not None or hasattr(env, "scripted_action")
    t0 = time.perf_counter()
    if highway:
        obs, _ = env.reset(options={"seed": int(seed), **({"scenario": scenario} if scenario else {})})
        rng = np.random.default_rng(seed)
        if act == "scripted":
            act = lambda obs: env.scripted_action()  # noqa: E731
        elif act == "random":
            act = lambda obs: rng.uniform(-1, 1, 2).astype(np.float32)  # noqa: E731
    else:
        obs, _ = env.reset(options={"track": int(seed)})
    rewards, model_return, frames, info, crashed, done = [], 0.0, [], {}, False, False
    end_probs, speeds = [], []
    if video:
        frames.append(env.render())
    while not done and (max_steps is None or len(rewards) < max_steps):
        obs, r, terminated, truncated, info = env.step(act(obs))
        rewards.append(float(r))
        model_return += info["model_reward"]
        crashed |= bool(info.get("crashed", False))
        if highway:
            end_probs.append(float(info["model_end_prob"]))
            speeds.append(float(info["speed_mps"]))
        done = terminated or truncated
        if video:
            frames.append(env.render())
    out = {"seed": int(seed), "return": float(sum(rewards)) + (0.0 if highway else ZOOM_PENALTY),
           "model_return": float(model_return), "rewards": rewards, "steps": len(rewards), "capped": not done,
           "wall_seconds": time.perf_counter() - t0}
    if highway:  # the end head's probability at every step (its calibration against `crashed`), speeds
        out.update(scenario=scenario or info.get("scenario"), crashed=crashed, success=info.get("success"),
                   distance_m=float(info.get("distance_m", 0.0)), speeds=speeds, end_probs=end_probs)
    else:
        out.update(track=int(seed), lap_finished=bool(info.get("lap_finished", False)))
    if video:
        out["frames"] = frames
    return out


def is_highway(bundle) -> bool:
    """Whether `bundle` is a highway-env world model (its action codec is highway-env's)."""
    from gaia_gym.models.layout import HIGHWAY_CODEC

    return bundle.codec == HIGHWAY_CODEC


def real_env_for(bundle, obs_mode: str):
    """The real simulator seen as `bundle`'s imagination is: `RealHighwayEnv` for a highway-env model,
    `RealCarRacingEnv` otherwise."""
    if is_highway(bundle):
        from gaia_gym.envs.real_highway import RealHighwayEnv

        return RealHighwayEnv(bundle=bundle, obs_mode=obs_mode)
    from gaia_gym.envs.real import RealCarRacingEnv

    return RealCarRacingEnv(bundle=bundle, obs_mode=obs_mode)


def validation_episodes(bundle, n: int) -> list[tuple[int, str | None]]:
    """The real episodes that score checkpoints of an agent on `bundle`: the first `n` validation tracks
    (CarRacing: (track, None)); on highway-env the first `n` validation seeds of every scenario."""
    from gaia_gym.seeds import validation_tracks

    if is_highway(bundle):  # scenario by scenario, as `gaia_gym.evaluation.highway_agents.episodes_of`
        from gaia_gym.envs.real_highway import SCENARIOS

        return [(s, sc) for sc in SCENARIOS for s in validation_tracks(n)]
    return [(t, None) for t in validation_tracks(n)]


def episode_steps_max(bundle) -> int:
    """The longest real episode of `bundle`'s world (a ledger reserves this many steps per episode)."""
    if is_highway(bundle):
        from gaia_gym.envs.real_highway import EPISODE_STEPS

        return EPISODE_STEPS
    from gaia_gym.envs.real import EPISODE_STEPS_MAX

    return EPISODE_STEPS_MAX


def _key(e: dict) -> int:
    return e["track"] if "track" in e else e["seed"]


def summarize(name: str, episodes: list[dict], seconds: float, **extra) -> dict:
    """The JSON record of an evaluation: per-seed returns, mean/std, steps, wall seconds."""
    ret = np.array([e["return"] for e in episodes], np.float64)
    out = {
        "policy": name,
        "seeds": [_key(e) for e in episodes],
        "real_return_per_seed": {str(_key(e)): round(e["return"], 3) for e in episodes},
        "real_return_mean": float(ret.mean()) if len(ret) else float("nan"),
        "real_return_std": float(ret.std()) if len(ret) else float("nan"),
        "steps_per_seed": {str(_key(e)): e["steps"] for e in episodes},
        "steps_mean": float(np.mean([e["steps"] for e in episodes])) if episodes else 0.0,
        "laps_finished": int(sum(e.get("lap_finished", False) for e in episodes)),
        "episodes": len(episodes),
        "wall_seconds": round(seconds, 2),
        "zoom_penalty_included": ZOOM_PENALTY,
    }
    if any("model_return" in e for e in episodes):
        out["model_return_per_seed"] = {str(_key(e)): round(e["model_return"], 3) for e in episodes}
    if any("crashed" in e for e in episodes):
        out["crashes"] = int(sum(e.get("crashed", False) for e in episodes))
    if any(e.get("capped") for e in episodes):
        out["capped"] = True  # max_steps cut episodes: not comparable with full returns
    return {**out, **extra}


def evaluate_env_policy(env, act: Actor, seeds, max_steps: int | None = None, video: Path | None = None,
                        progress: bool = False) -> tuple[list[dict], list[np.ndarray]]:
    """Run `act` in `env` on every seed; returns (episodes without frames, frames of the first one if
    `video`)."""
    from tqdm import tqdm

    episodes, frames = [], []
    for i, s in enumerate(tqdm(list(seeds), desc="real episodes", unit="track", disable=not progress)):
        e = run_episode(env, act, s, max_steps, video=video is not None and i == 0)
        frames = e.pop("frames", frames)
        episodes.append(e)
    return episodes, frames


def scripted_episodes(seeds, max_steps: int | None = None, video: Path | None = None,
                      progress: bool = False) -> tuple[list[dict], list[np.ndarray]]:
    """The privileged scripted driver: returns from `run_scripted_episode` (zoom-in penalty included);
    with `video`, the first track is driven once more for its (enlarged) frames."""
    from tqdm import tqdm

    from gaia_gym.sims.carracing import CarRacingDrive, PursuitDriver, run_scripted_episode

    if max_steps is not None:
        raise ConfigError("--max-steps does not apply to the scripted driver (it always drives whole episodes)")
    episodes = []
    for s in tqdm(list(seeds), desc="scripted", unit="track", disable=not progress):
        r = run_scripted_episode(s)
        episodes.append({"track": r["seed"], "return": r["return"], "steps": r["steps"],
                         "lap_finished": r["lap_finished"], "capped": False})
    frames = []
    if video is not None and episodes:
        drive = CarRacingDrive()
        driver = PursuitDriver(drive)
        big = np.ones((4, 4, 1), np.uint8)
        frames.append(np.kron(drive.reset(episodes[0]["track"]), big))
        while True:
            st = drive.step(*driver.act())
            frames.append(np.kron(st.frame, big))
            if st.terminated or st.truncated:
                break
        drive.close()
    return episodes, frames


def evaluate_policy(policy: str, seeds=TEST_TRACKS, model: str | None = None, bundle=None,
                    max_steps: int | None = None, video: Path | None = None, device: str = "cpu", seed: int = 0,
                    progress: bool = False, video_every: int = 2) -> dict:
    """Score `policy` ("random", "scripted", "shipped" or an agent's .zip path) on `seeds`; returns
    `summarize`'s record. ``model``/``bundle``: the world model behind the observations (default: the
    shipped one). ``video``: a .gif/.mp4 of the first episode, every `video_every`-th step at real time."""
    from gaia_gym.media import VIDEO_SUFFIXES, write_video

    if video is not None and Path(video).suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{video}: write the video as a .gif or .mp4")  # before driving, not after
    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if policy == "scripted":
        episodes, frames = scripted_episodes(seeds, max_steps, video, progress)
        extra = {}
    else:
        from gaia_gym.bundle import load_bundle
        from gaia_gym.envs.real import RealCarRacingEnv
        from gaia_gym.rl.agent import agent_obs_mode, load_agent

        bundle = bundle if bundle is not None else load_bundle(model, device)
        # the agent must have been trained on this world model's features (its zip records which)
        agent = None if policy == "random" else load_agent(policy, world_model=bundle, device=device)
        obs_mode = agent_obs_mode(agent, bundle) if agent is not None else bundle.backend.latent_key
        env = RealCarRacingEnv(bundle=bundle, obs_mode=obs_mode, render_mode="rgb_array")
        act = random_actor(env.action_space, seed) if agent is None else agent_actor(agent)
        try:
            episodes, frames = evaluate_env_policy(env, act, seeds, max_steps, video, progress)
        finally:
            env.close()
        extra = {"obs_mode": obs_mode, "world_model": str(bundle.path), "max_steps": max_steps}
    if video is not None and frames:
        write_video(video, np.stack(frames[::video_every]), fps=1.0 / (STEP_SECONDS * video_every))
    return summarize(policy, episodes, time.perf_counter() - t0, **extra)


def plan_real_episode(env, planner: Planner, track: int, max_steps: int | None = None, video: bool = False) -> dict:
    """Drive one REAL episode of `env` (a `RealCarRacingEnv`) on `track`, deciding every step with
    `planner` from the world model's memory of the real frames; scored like every policy
    (`run_episode`), plus the planner's decisions per second."""
    planner.reset()
    dec0, sec0, kept0 = planner.decisions, planner.seconds, planner.kept
    out = run_episode(env, lambda obs: planner.act(env.engine.state(), 0).cpu().numpy(), track, max_steps, video)
    out["decisions_per_s"] = (planner.decisions - dec0) / max(planner.seconds - sec0, 1e-9)
    if planner.cfg.margin is not None and planner.proposal is not None:  # share of decisions left to the proposal
        out["kept_proposal"] = (planner.kept - kept0) / max(planner.decisions - dec0, 1)
    return out


def drive_tracks(bundle, config: PlannerConfig, tracks, done_path=None, seed: int = 0, max_steps: int | None = None,
                 video_path=None, progress: bool = True, proposal=None, value_fn=None) -> list[dict]:
    """`plan_real_episode` on every track in `tracks`, resumable: each finished episode is appended to the
    JSON file `done_path` (atomically), and tracks already there are not driven again. With
    `video_path`, the first track driven in this call is also written as a GIF; `proposal` seeds every
    decision (see `Planner`, `PolicyProposal`), `value_fn` values the horizon's end (`PolicyValue`). Returns all episodes (per-step rewards dropped) in
    `tracks` order."""
    import json

    from tqdm import tqdm

    from gaia_gym.fileio import atomic_write_json
    from gaia_gym.envs.real import RealCarRacingEnv

    done: dict[str, dict] = {}
    if done_path is not None and Path(done_path).exists():
        done = {str(e["track"]): e for e in json.loads(Path(done_path).read_text())}
    todo = [int(t) for t in tracks if str(int(t)) not in done]
    if todo:
        env = RealCarRacingEnv(bundle=bundle, obs_mode="tokens", render_mode="rgb_array" if video_path else None)
        planner = Planner(bundle, config, seed=seed, proposal=proposal, value_fn=value_fn)
        try:
            for i, t in enumerate(tqdm(todo, desc="planning (real tracks)", unit="track", disable=not progress)):
                e = plan_real_episode(env, planner, t, max_steps, video=video_path is not None and i == 0)
                frames = e.pop("frames", None)
                if frames:
                    from gaia_gym.media import write_video

                    write_video(Path(video_path), np.stack(frames[::2]), fps=6.25)
                e.pop("rewards")
                done[str(t)] = e
                if done_path is not None:
                    Path(done_path).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(Path(done_path), list(done.values()))
        finally:
            env.close()
    return [done[str(int(t))] for t in tracks]


def summarize_planning(episodes: list[dict], config: PlannerConfig) -> dict:
    """The JSON record of a planner's real episodes."""
    ret = np.array([e["return"] for e in episodes], np.float64)
    return {"real_return_mean": float(ret.mean()), "real_return_std": float(ret.std()),
            "real_return_per_seed": {str(e["track"]): round(e["return"], 3) for e in episodes},
            "model_return_per_seed": {str(e["track"]): round(e["model_return"], 3) for e in episodes},
            "decisions_per_s": float(np.mean([e["decisions_per_s"] for e in episodes])),
            "steps_mean": float(np.mean([e["steps"] for e in episodes])),
            "laps_finished": int(sum(e["lap_finished"] for e in episodes)),
            "wall_seconds": round(float(sum(e["wall_seconds"] for e in episodes)), 1),
            "capped": any(e["capped"] for e in episodes), "episodes": len(episodes),
            **({"kept_proposal": float(np.mean([e["kept_proposal"] for e in episodes]))}
               if all("kept_proposal" in e for e in episodes) else {}),
            "planner": {**asdict(config), "imagined_steps_per_decision": config.imagined_steps()}}


def default_key(policy: str) -> str:
    """"random" / "scripted" / "<run dir>_<file stem>" (runs/agent_ppo/best.zip -> "agent_ppo_best")."""
    if policy in ("random", "scripted"):
        return policy
    p = Path(policy)
    return f"{p.parent.name}_{p.stem}" if p.parent.name else p.stem


__all__ = ["default_key", "drive_tracks", "evaluate_env_policy", "evaluate_policy", "plan_real_episode",
           "random_actor", "run_episode", "scripted_episodes", "summarize", "summarize_planning"]

