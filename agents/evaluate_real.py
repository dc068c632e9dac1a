"""Score a driving policy in the REAL CarRacing-v3, on track seeds no training data comes from.

    python agents/evaluate_real.py --policy runs/agent_ppo/best.zip --json results/agents.json --key ppo
    python agents/evaluate_real.py --policy random --json results/agents.json
    python agents/evaluate_real.py --policy scripted --json results/agents.json --video results/scripted.gif

Policies:
  shipped    the agent shipped in the package (gaia_gym/assets/agents/ppo_imagination.zip);
  PATH.zip   an SB3 agent (PPO or SAC) trained in imagination (agents/train_imagination.py); it sees the
             real simulator through `RealCarRacingEnv`, which has GaiaDrive-v0's observation space (real
             frame -> the world model's tokens and hidden features), observation keys as when trained;
  random     uniform random [steering, speed] actions, through the same env;
  scripted   the privileged scripted driver (`gaia_gym.sims.carracing.run_scripted_episode`).

Track seeds default to the 20 test tracks 1,000,000..1,000,019 (the collector never uses seeds from
1,000,000 up; training's real-simulator evaluations use 1,000,100+).

Returns are counted as CarRacing-v3 counts them, the same way for all three: every simulator frame
costs -0.1, including the 50 zoom-in frames that `RealCarRacingEnv.reset` (and the scripted driver)
run with no action before the first observation, so ZOOM_PENALTY = -0.1 * ZOOM_FRAMES is added to the
sum of the step rewards (as `run_scripted_episode` does). `--max-steps` caps episodes (smoke tests);
capped returns are flagged and are not comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from gaia_gym.envs.real import ZOOM_PENALTY, run_real_episode as run_episode
from gaia_gym.policy import agent_actor  # noqa: F401  (re-exported: train_imagination, tests)

TEST_SEEDS = tuple(range(1_000_000, 1_000_020))  # the final test tracks
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
        out["capped"] = True  # --max-steps cut episodes: not comparable with full returns
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
        raise ValueError("--max-steps does not apply to the scripted driver (it always drives whole episodes)")
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


def write_video(frames: list[np.ndarray], path: Path, every: int = 2) -> None:
    """GIF (or any imageio format) at the real time of a step (4 simulator frames at 50 Hz)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames[::every]), duration=80 * every, loop=0)


def evaluate(policy: str, seeds=TEST_SEEDS, model: str | None = None, bundle=None, max_steps: int | None = None,
             video: Path | None = None, device: str = "cpu", seed: int = 0, progress: bool = False) -> dict:
    """Score `policy` ("random", "scripted" or an agent's .zip path) on `seeds`; returns `summarize`'s
    record. ``model``/``bundle``: the world model behind the observations (default: the shipped one)."""
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
        obs_mode = "+".join(parse_obs_mode("+".join(agent.observation_space.spaces))) if agent is not None else "tokens"
        env = RealCarRacingEnv(bundle=bundle, obs_mode=obs_mode, render_mode="rgb_array")
        act = random_actor(env.action_space, seed) if agent is None else agent_actor(agent)
        try:
            episodes, frames = evaluate_env_policy(env, act, seeds, max_steps, video, progress)
        finally:
            env.close()
        extra = {"obs_mode": obs_mode, "world_model": str(bundle.path), "max_steps": max_steps}
    if video is not None and frames:
        write_video(frames, Path(video))
    return summarize(policy, episodes, time.perf_counter() - t0, **extra)


def merge_json(path: Path, key: str, record: dict, update: bool = False) -> None:
    """Put `record` under `key` in the JSON object at `path` (other keys kept), atomically. A dotted key
    ("baselines.random") nests; the key "." merges `record`'s fields into the top level. With `update`,
    `record`'s fields are merged into what `key` already holds instead of replacing it (so the fields'
    own names may contain dots: policy paths)."""
    from gaia_gym.fileio import atomic_write_json

    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else {}
    if key == ".":
        old.update(record)
    else:
        *parents, last = key.split(".")
        node = old
        for k in parents:
            node = node.setdefault(k, {})
        if update:
            node.setdefault(last, {}).update(record)
        else:
            node[last] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, old)


def pipeline_costs(policy: Path, results: Path = Path("results")) -> dict:
    """What the imagination-trained `policy` cost, from the records each stage left: real transitions
    (the collected dataset, results/data.json, plus the real-simulator evaluations made while training,
    the run's state.json) and wall-clock minutes per stage (data.json, tokenizer.json, world_model.json,
    the agent run's state.json)."""
    rd = lambda name: json.loads((results / name).read_text()) if (results / name).exists() else {}  # noqa: E731
    data, tok, wm = rd("data.json").get("default_carracing_dataset", {}), rd("tokenizer.json"), rd("world_model.json")
    state_p = Path(policy).parent / "state.json"
    state = json.loads(state_p.read_text()) if state_p.exists() else {}
    args = state.get("args", {})
    best_t = state.get("best_timesteps")
    evals = state.get("evals", [])
    # every evaluation counts, also those after the best checkpoint: they took part in picking it
    eval_steps = int(round(sum(e["real_steps_mean"] * len(e["real_return_per_seed"]) for e in evals)))
    agent_s = next((e["elapsed_s"] for e in evals if e["timesteps"] == best_t), state.get("elapsed_s"))
    return {
        "real_env_steps_used": int(data.get("transitions", 0)) + eval_steps,
        "real_env_steps_detail": {"dataset_transitions": data.get("transitions"),
                                  "training_time_real_evaluation_steps": eval_steps,
                                  "note": "evaluations (seeds 1,000,100+) only pick the checkpoint; no gradient "
                                          "ever sees a real transition outside the dataset"},
        "wall_clock_minutes": {"collect": data.get("wall_minutes_2_workers"), "tokenizer": tok.get("train_minutes"),
                               "world_model": wm.get("train_minutes"),
                               "agent_in_imagination": None if agent_s is None else round(agent_s / 60, 1)},
        "agent_run": {"imagined_steps": best_t, "imagined_steps_trained": state.get("num_timesteps"),
                      "real_evaluations": len(evals), "torch_threads": state.get("torch_threads"), "args": args},
    }


def default_key(policy: str) -> str:
    """"random" / "scripted" / "<run dir>_<file stem>" (runs/agent_ppo/best.zip -> "agent_ppo_best")."""
    if policy in ("random", "scripted"):
        return policy
    p = Path(policy)
    return f"{p.parent.name}_{p.stem}" if p.parent.name else p.stem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="PATH.zip (an SB3 agent), 'shipped', 'random' or 'scripted'")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--episodes", type=int, default=len(TEST_SEEDS), help="number of tracks (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=TEST_SEEDS[0], help="first track seed (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="cap each episode (smoke tests only)")
    p.add_argument("--json", type=Path, default=None, help="merge the result into this JSON file")
    p.add_argument("--key", default=None, help="key in --json, dotted to nest ('baselines.random'), '.' for the "
                                               "top level (default: random / scripted / RUNDIR_STEM)")
    p.add_argument("--as-result", action="store_true",
                   help="the policy is THE result: merge at the top level of --json, with its pipeline costs "
                        "(real transitions, wall-clock per stage; see pipeline_costs)")
    p.add_argument("--video", type=Path, default=None, help="write the first episode as a GIF")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    if a.episodes < 1:
        raise SystemExit(f"evaluate_real: --episodes must be >= 1, got {a.episodes}")
    from gaia_gym.errors import ModelFileError

    seeds = range(a.first_seed, a.first_seed + a.episodes)
    try:
        r = evaluate(a.policy, seeds, model=a.model, max_steps=a.max_steps, video=a.video, device=a.device,
                     seed=a.seed, progress=not a.no_progress)
    except (FileNotFoundError, ModelFileError, ValueError) as e:
        raise SystemExit(f"evaluate_real: {e}") from None
    print(f"{a.policy}: real return {r['real_return_mean']:.1f} +- {r['real_return_std']:.1f} over {r['episodes']} "
          f"tracks ({r['laps_finished']} laps finished, {r['steps_mean']:.0f} steps, {r['wall_seconds']:.0f} s)")
    if a.as_result:
        if a.policy in ("random", "scripted"):
            raise SystemExit("evaluate_real: --as-result is for a trained policy")
        r = {**r, **pipeline_costs(Path(a.policy)), "command": "python agents/evaluate_real.py " + " ".join(
            argv if argv is not None else sys.argv[1:])}
        r["wall_clock_minutes"]["evaluation_20_tracks"] = round(r["wall_seconds"] / 60, 1)
        a.key = "."
    if a.json:
        key = a.key or default_key(a.policy)
        merge_json(a.json, key, r)
        print(f"wrote {a.json} [{key}]")
    if a.video:
        print(f"wrote {a.video}")
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
