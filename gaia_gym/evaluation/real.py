"""Agents on the real simulator's test tracks, and result summaries.

Policies scored here drive the REAL CarRacing-v3:
  - an SB3 agent (PPO or SAC) trained in imagination (agents/train_imagination.py; "shipped": the one in
    the package); it sees the real simulator through `RealCarRacingEnv`, which has GaiaDrive-v0's
    observation space (real frame -> the world model's tokens and hidden features), observation keys as
    when trained;
  - "random": uniform random [steering, speed] actions, through the same env;
  - "scripted": the privileged scripted driver (`gaia_gym.sims.carracing.run_scripted_episode`).

Test tracks: `TEST_SEEDS`, the 20 track seeds 1,000,000..1,000,019 (the collector never uses seeds
from 1,000,000 up; training's real-simulator evaluations use 1,000,100+).

Returns are counted as CarRacing-v3 counts them, the same way for all three: every simulator frame
costs -0.1, including the 50 zoom-in frames that `RealCarRacingEnv.reset` (and the scripted driver)
run with no action before the first observation, so ZOOM_PENALTY = -0.1 * ZOOM_FRAMES is added to the
sum of the step rewards (as `run_scripted_episode` does). `max_steps` caps episodes (smoke tests);
capped returns are flagged and are not comparable.

`summarize` turns episodes into the JSON record every evaluation writes (results/agents.json);
`pipeline_costs` adds what an imagination-trained policy cost (real transitions, wall-clock per stage).
The command line is agents/evaluate_real.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from gaia_gym.envs.real import TEST_TRACKS, ZOOM_PENALTY, run_real_episode
from gaia_gym.fileio import read_json
from gaia_gym.policy import agent_actor
from gaia_gym.errors import ConfigError

TEST_SEEDS = tuple(range(TEST_TRACKS, TEST_TRACKS + 20))  # the final test tracks
STEP_SECONDS = 0.08  # one env step: 4 simulator frames at 50 Hz
Actor = Callable[[dict], np.ndarray]


def random_actor(action_space, seed: int = 0) -> Actor:
    """Uniform random actions from `action_space` (seeded)."""
    action_space.seed(seed)
    return lambda obs: action_space.sample()


def summarize(name: str, episodes: list[dict], seconds: float, **extra) -> dict:
    """The JSON record of an evaluation: per-seed returns, mean/std, steps, wall seconds."""
    ret = np.array([e["return"] for e in episodes], np.float64)
    out = {
        "policy": name,
        "seeds": [e["track"] for e in episodes],
        "real_return_per_seed": {str(e["track"]): round(e["return"], 3) for e in episodes},
        "real_return_mean": float(ret.mean()) if len(ret) else float("nan"),
        "real_return_std": float(ret.std()) if len(ret) else float("nan"),
        "steps_per_seed": {str(e["track"]): e["steps"] for e in episodes},
        "steps_mean": float(np.mean([e["steps"] for e in episodes])) if episodes else 0.0,
        "laps_finished": int(sum(e["lap_finished"] for e in episodes)),
        "episodes": len(episodes),
        "wall_seconds": round(seconds, 2),
        "zoom_penalty_included": ZOOM_PENALTY,
    }
    if any("model_return" in e for e in episodes):
        out["model_return_per_seed"] = {str(e["track"]): round(e["model_return"], 3) for e in episodes}
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
        e = run_real_episode(env, act, s, max_steps, video=video is not None and i == 0)
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


def evaluate_policy(policy: str, seeds=TEST_SEEDS, model: str | None = None, bundle=None,
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
        from gaia_gym.envs.core import parse_obs_mode
        from gaia_gym.envs.real import RealCarRacingEnv
        from gaia_gym.policy import load_agent

        agent = None
        if policy != "random":
            agent = load_agent(policy, device=device, world_model=model)
        bundle = bundle if bundle is not None else load_bundle(model, device)
        # the agent's observation keys, in GaiaDrive's order (gymnasium sorts a Dict space's keys)
        key = bundle.backend.latent_key
        obs_mode = "+".join(parse_obs_mode("+".join(agent.observation_space.spaces), key)) if agent is not None else key
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


def pipeline_costs(policy: Path, results: Path = Path("results")) -> dict:
    """What the imagination-trained `policy` cost, from the records each stage left: real transitions
    (the collected dataset, results/data.json, plus the real-simulator evaluations made while training,
    the run's state.json) and wall-clock minutes per stage (data.json, tokenizer.json, world_model.json,
    the agent run's state.json)."""
    results = Path(results)
    rd = lambda name: read_json(results / name, {})  # noqa: E731
    data, tok, wm = rd("data.json").get("default_carracing_dataset", {}), rd("tokenizer.json"), rd("world_model.json")
    state = read_json(Path(policy).parent / "state.json", {})
    args = state.get("args", {})
    # the behaviour prior (agents/behaviour_prior.py): the policy itself, or the run's --init / --prior
    prior_dirs = {Path(q).parent for q in (args.get("init"), args.get("prior")) if q}
    if not state:
        prior_dirs.add(Path(policy).parent)
    priors = [r for r in (read_json(d / "prior.json", {}) for d in sorted(prior_dirs)) if r]
    best_t = state.get("best_timesteps")
    evals = state.get("evals", [])
    # every evaluation counts, also those after the best checkpoint: they took part in picking it
    eval_steps = int(round(sum(e["real_steps_mean"] * len(e["real_return_per_seed"]) for e in evals)))
    prior_steps = sum(int(r.get("real_env_steps_used", 0)) for r in priors)
    agent_s = next((e["elapsed_s"] for e in evals if e["timesteps"] == best_t), state.get("elapsed_s"))
    wall = {"collect": data.get("wall_minutes_2_workers"), "tokenizer": tok.get("train_minutes"),
            "world_model": wm.get("train_minutes"),
            "agent_in_imagination": None if agent_s is None else round(agent_s / 60, 1)}
    if priors:
        wall["behaviour_prior"] = round(sum(r.get("replay_seconds", 0) + r.get("fit_seconds", 0) for r in priors) / 60, 1)
    return {
        "real_env_steps_used": int(data.get("transitions", 0)) + eval_steps + prior_steps,
        "real_env_steps_detail": {"dataset_transitions": data.get("transitions"),
                                  "training_time_real_evaluation_steps": eval_steps,
                                  **({"behaviour_prior_extra_steps": prior_steps} if priors else {}),
                                  "note": "evaluations (seeds 1,000,100+) only pick the checkpoint; no gradient "
                                          "ever sees a real transition outside the dataset"},
        "wall_clock_minutes": wall,
        "agent_run": {"imagined_steps": best_t, "imagined_steps_trained": state.get("num_timesteps"),
                      "real_evaluations": len(evals), "torch_threads": state.get("torch_threads"), "args": args},
    }


def default_key(policy: str) -> str:
    """"random" / "scripted" / "<run dir>_<file stem>" (runs/agent_ppo/best.zip -> "agent_ppo_best")."""
    if policy in ("random", "scripted"):
        return policy
    p = Path(policy)
    return f"{p.parent.name}_{p.stem}" if p.parent.name else p.stem


__all__ = ["TEST_SEEDS", "default_key", "evaluate_env_policy", "evaluate_policy", "pipeline_costs", "random_actor",
           "scripted_episodes", "summarize"]
