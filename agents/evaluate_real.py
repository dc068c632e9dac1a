"""Score a driving policy in the REAL CarRacing-v3, on track seeds no training data comes from.

    python agents/evaluate_real.py --policy runs/agent_ppo/best.zip --json results/agents.json --key ppo
    python agents/evaluate_real.py --policy random --json results/agents.json
    python agents/evaluate_real.py --policy scripted --json results/agents.json --video results/scripted.gif

Policies:
  shipped    the agent shipped in the package (gaia_gym/assets/agents/driver.zip);
  PATH.zip   an SB3 agent (PPO or SAC) trained in imagination (agents/train_imagination.py);
  random     uniform random [steering, speed] actions;
  scripted   the privileged scripted driver.

Track seeds default to the 20 test tracks 1,000,000..1,000,019. Returns are CarRacing-v3's, zoom-in
included, the same way for all policies; `--max-steps` caps episodes (smoke tests; capped returns are
flagged and not comparable). How tracks and returns are counted: `gaia_gym.evaluation.real`, which
does the work (this is its command line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gaia_gym.errors import run_script
from gaia_gym.evaluation.costs import pipeline_costs
from gaia_gym.evaluation.real import default_key, evaluate_policy
from gaia_gym.seeds import TEST_TRACKS
from gaia_gym.fileio import merge_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="PATH.zip (an SB3 agent), 'shipped', 'random' or 'scripted'")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--episodes", type=int, default=len(TEST_TRACKS), help="number of tracks (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=TEST_TRACKS[0], help="first track seed (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="cap each episode (smoke tests only)")
    p.add_argument("--json", type=Path, default=None, help="merge the result into this JSON file")
    p.add_argument("--key", default=None, help="key in --json, dotted to nest ('baselines.random'), '.' for the "
                                               "top level (default: random / scripted / RUNDIR_STEM)")
    p.add_argument("--as-result", action="store_true",
                   help="the policy is THE result: merge at the top level of --json, with its pipeline costs "
                        "(real transitions, wall-clock per stage; see pipeline_costs)")
    p.add_argument("--video", type=Path, default=None, help="write the first episode as a .gif or .mp4")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> dict:
    from gaia_gym.errors import GaiaGymError, exit_with

    a = build_parser().parse_args(argv)
    if a.episodes < 1:
        exit_with(f"evaluate_real: --episodes must be >= 1, got {a.episodes}")

    seeds = range(a.first_seed, a.first_seed + a.episodes)
    try:
        r = evaluate_policy(a.policy, seeds, model=a.model, max_steps=a.max_steps, video=a.video,
                            device=a.device, seed=a.seed, progress=not a.no_progress)
    except (GaiaGymError, FileNotFoundError, ValueError) as e:
        exit_with(f"evaluate_real: {e}")
    print(f"{a.policy}: real return {r['real_return_mean']:.1f} +- {r['real_return_std']:.1f} over {r['episodes']} "
          f"tracks ({r['laps_finished']} laps finished, {r['steps_mean']:.0f} steps, {r['wall_seconds']:.0f} s)")
    if a.as_result:
        if a.policy in ("random", "scripted"):
            exit_with("evaluate_real: --as-result is for a trained policy")
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
    run_script("evaluate_real", main, sys.argv[1:])
