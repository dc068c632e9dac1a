"""A 10,000-step imagined episode (truncation off) in GaiaDrive-v0: memory stays flat, nothing turns NaN.

    .venv/bin/python benchmarks/long_episode.py --steps 10000 --json results/long_episode.json

Random actions (seeded), obs_mode "tokens+features", the end head ignored (end_threshold 1.0) so the one
episode runs all the way. Resident memory is sampled every 500 steps; `rss_growth_mib` is the last sample
minus the one after the first 500 steps (allocator warm-up excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import gaia_gym  # noqa: F401  (registers GaiaDrive-v0)
from gaia_gym.errors import exit_with
from gaia_gym.fileio import atomic_write_json


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="world-model directory (default: the shipped model)")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    env = gym.make("GaiaDrive-v0", model=a.model, obs_mode="tokens+features", horizon=None, end_threshold=1.0)
    obs, _ = env.reset(seed=a.seed)
    rng = np.random.default_rng(a.seed)
    samples, nonfinite, rewards = [], 0, []
    t0 = time.perf_counter()
    for t in range(1, a.steps + 1):
        obs, r, term, trunc, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        if term or trunc:
            exit_with(f"the episode ended at step {t} (terminated={term}, truncated={trunc})")
        nonfinite += int(not np.isfinite(obs["features"]).all()) + int(not math.isfinite(r))
        rewards.append(r)
        if t % 500 == 0:
            samples.append((t, rss_mib()))
            print(f"step {t}: rss {samples[-1][1]:.1f} MiB, {t / (time.perf_counter() - t0):.0f} steps/s", flush=True)
    out = {"steps": a.steps, "seconds": time.perf_counter() - t0, "nonfinite_steps": nonfinite,
           "rss_mib_by_step": {str(s): round(m, 1) for s, m in samples},
           "rss_growth_mib": round(samples[-1][1] - samples[0][1], 1) if samples else None,
           "reward_mean": float(np.mean(rewards)), "token_range": [int(obs["tokens"].min()), int(obs["tokens"].max())],
           "command": "python benchmarks/long_episode.py " + " ".join(
               f"--{k} {v}" for k, v in vars(a).items() if v is not None and k != "json")}
    print(json.dumps({k: v for k, v in out.items() if k != "rss_mib_by_step"}, indent=1))
    if a.json:
        atomic_write_json(Path(a.json), out)


if __name__ == "__main__":
    main()
