"""Watch the shipped agent drive the REAL CarRacing-v3.

    python examples/agent_drives_real.py                        # test track 1,000,000 -> agent_real.gif
    python examples/agent_drives_real.py --track 1000007 --out drive.gif

The agent (gaia_gym/assets/agents/driver.zip, an SB3 PPO actor-critic) reads the world model's features.
It was trained from scratch inside the world model's imagination
(examples/train_in_imagination.py): it never saw an expert's action, and never drove the real simulator
while it learned (gaia_gym/assets/agents/AGENT_CARD.md). Here it sees the real track through the same observation (real frame -> tokens -> the world model's
hidden state over the real history, `RealCarRacingEnv`). Its scores on the 20 test tracks are in
results/agents.json (`python agents/evaluate_real.py --policy shipped`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gaia_gym.errors import exit_with, run_script
from gaia_gym.evaluation.real import evaluate_policy
from gaia_gym.seeds import TEST_TRACKS


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="shipped", help="agent zip (default: the shipped agent)")
    p.add_argument("--track", type=int, default=TEST_TRACKS[0], help="track seed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("agent_real.gif"), help="GIF to write (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the episode (default: the whole lap)")
    a = p.parse_args(argv)
    from gaia_gym.errors import GaiaGymError

    try:
        r = evaluate_policy(a.policy, [a.track], max_steps=a.max_steps, video=a.out)
    except (GaiaGymError, FileNotFoundError, ValueError) as e:
        exit_with(f"agent_drives_real: {e}")
    print(f"track {a.track}: real return {r['real_return_mean']:.1f} in {r['steps_mean']:.0f} steps "
          f"({'lap finished' if r['laps_finished'] else 'lap not finished'}); wrote {a.out}")
    return r


if __name__ == "__main__":
    run_script("agent_drives_real", main, sys.argv[1:])
