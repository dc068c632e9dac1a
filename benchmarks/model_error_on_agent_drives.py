"""Where the world model is wrong: along an agent's own real drives vs along the collector's validation drives.

    python benchmarks/model_error_on_agent_drives.py --policy shipped --tracks 5 --json results/agents.json

1. The policy drives `--tracks` real CarRacing-v3 episodes (the first test tracks, 1,000,000+: the
   evaluation drives themselves, no new track); each is written as a dataset episode into `--drives`
   (same format as the collector's, so every dataset tool reads it).
2. Reward head, closed loop: each drive and each collector validation episode is replayed through the
   world model with the real frames observed (`gaia_gym.rl.prior.real_observations`, exactly what the
   real env computes) and the predicted reward of every step is compared with the real one (MAE, bias).
3. Frames: `gaia_gym.evaluation.world_model` on both sets of drives, greedy open-loop rollouts under
   the real actions from real contexts: PSNR at 1, 2, 4 and 8 steps ahead (and copy-last, the ceiling).

Writes `model_error_on_agent_drives` into --json (other keys kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gaia_gym.errors import exit_with


def drive(policy: str, bundle, tracks: list[int], out: Path, progress: bool) -> list[dict]:
    """Drive `policy` on `tracks` and write each drive as a dataset episode under `out`."""
    from tqdm import tqdm

    from gaia_gym.data import format as fmt
    from gaia_gym.envs.real import RealCarRacingEnv
    from gaia_gym.rl.agent import agent_actor, agent_obs_mode, load_agent

    agent = load_agent(policy, world_model=bundle, device="cpu")
    act = agent_actor(agent)
    env = RealCarRacingEnv(bundle=bundle, obs_mode=agent_obs_mode(agent, bundle))
    eps = []
    for track in tqdm(tracks, desc="drive", disable=not progress):
        obs, _ = env.reset(options={"track": track})
        rec = {k: [] for k in ("frames", "steering", "speed_mps", "target_speed_mps", "reward", "terminated",
                               "truncated", "model_reward")}
        done, speed = False, 0.0
        while not done:
            frame = env._frame.copy()
            obs, r, te, tr, info = env.step(act({k: v[None] for k, v in obs.items()})[0])
            for k, v in (("frames", frame), ("steering", info["steering"]), ("speed_mps", speed),
                         ("target_speed_mps", info["target_speed_mps"]), ("reward", r), ("terminated", te),
                         ("truncated", tr), ("model_reward", info["model_reward"])):
                rec[k].append(v)
            speed, done = info["speed_mps"], te or tr
        arrays = {k: np.asarray(v) for k, v in rec.items()}
        arrays["frames"] = np.stack(rec["frames"])
        arrays["last_frame"] = env._frame.copy()
        arrays["raw_action"] = np.zeros((len(rec["reward"]), 3), np.float32)  # not observed through the env
        meta = {"source": "carracing", "seed": int(track), "split": "val", "policy": str(policy), "fps": 12.5,
                "frame_skip": 4, "frame_size": int(arrays["frames"].shape[1])}
        (out / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
        fmt.write_episode(out / fmt.EPISODES / f"ep_{len(eps):06d}.npz", arrays, meta)
        eps.append(arrays)
    env.close()
    return eps


def reward_error(bundle, episodes: list[dict], progress: bool) -> dict:
    """The reward head's per-step error along `episodes`, replayed with their real frames observed."""
    from gaia_gym.rl.prior import real_observations

    obs = real_observations(bundle, episodes, rows=32, progress=progress)
    real = np.concatenate([e["reward"] for e in episodes]).astype(np.float32)
    ok = ~np.isnan(obs["model_reward"])
    err = obs["model_reward"][ok] - real[ok]
    return {"steps": int(ok.sum()), "reward_mae": round(float(np.abs(err).mean()), 4),
            "reward_bias": round(float(err.mean()), 4), "real_reward_mean": round(float(real[ok].mean()), 4)}


def frames_error(bundle, data: Path, split: str, progress: bool) -> dict:
    from gaia_gym.evaluation.world_model import evaluate_world_model

    r = evaluate_world_model(bundle.world_model, bundle.tokenizer, data, split=split, context=4, horizons=(1, 2, 4, 8),
                             max_clips=128, throughput_seconds=0, real_sim_seconds=0, progress=progress,
                             codec=bundle.codec)
    keep = ("psnr_by_horizon", "copy_last_psnr_by_horizon", "tokenizer_ceiling_psnr", "reward_mae_rollout", "clips")
    return {k: r[k] for k in keep if k in r}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="shipped", help="agent zip or 'shipped'")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--tracks", type=int, default=5, help="test tracks driven (from 1,000,000)")
    p.add_argument("--data", type=Path, default=Path("data/carracing"), help="the collector's dataset (val split)")
    p.add_argument("--drives", type=Path, default=Path("data/agent_drives"), help="where the drives are written")
    p.add_argument("--val-episodes", type=int, default=40, help="collector validation episodes for the reward head")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--key", default="model_error_on_agent_drives")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from gaia_gym.bundle import load_bundle
    from gaia_gym.data import format as fmt
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.envs.real import ZOOM_PENALTY
    from gaia_gym.fileio import merge_json
    from gaia_gym.seeds import test_tracks

    prog = not a.no_progress
    t0 = time.perf_counter()
    bundle = load_bundle(a.model, "cpu")
    if a.drives.exists() and any((a.drives / fmt.EPISODES).glob("ep_*.npz")):
        exit_with(f"model_error: {a.drives} already holds drives; remove it or pass another --drives")
    header = fmt.read_manifest(a.data, episodes=False)
    agent_eps = drive(a.policy, bundle, test_tracks(a.tracks), a.drives, prog)
    fmt.rebuild_manifest(a.drives, {k: v for k, v in header.items() if k != "episodes"})
    val_idx = EpisodeIndex(a.data, split="val")
    fields = ["frames", "steering", "target_speed_mps", "reward"]
    val_eps = [fmt.load_episode(q, fields=fields) for q in val_idx.paths[: a.val_episodes]]
    res = {
        "command": "python benchmarks/model_error_on_agent_drives.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "policy": a.policy, "tracks": a.tracks,
        "agent_drives": {"reward_head_closed_loop": reward_error(bundle, agent_eps, prog),
                         "open_loop": frames_error(bundle, a.drives, "val", prog),
                         "real_return_mean": round(float(np.mean([e["reward"].sum() + ZOOM_PENALTY for e in agent_eps])), 1)},
        "collector_val_drives": {"reward_head_closed_loop": reward_error(bundle, val_eps, prog),
                                 "open_loop": frames_error(bundle, a.data, "val", prog)},
    }
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    for k, v in res.items():
        if isinstance(v, dict):
            print(k, v)
    if a.json:
        merge_json(a.json, a.key, res)
        print(f"wrote {a.json} [{a.key}]")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
