"""Imagined steps/s of a world model at a few batch sizes, latents only (the measurement `gaia-gym bench`
makes, without the real simulator): for side-by-side A/B runs of two versions of the code.

    python benchmarks/flow_speed.py --label new
    git worktree add /tmp/before <commit>; PYTHONPATH=/tmp/before python benchmarks/flow_speed.py --label before

Run the two alternately, twice each, in one session (absolute speeds drift on shared machines).
Defaults to the shipped flow model.
"""

from __future__ import annotations

import argparse
import json

from gaia_gym.bundle import DEFAULT_FLOW_WORLD_MODEL, load_bundle
from gaia_gym.evaluation.throughput import cpu_name, imagined_steps_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_FLOW_WORLD_MODEL))
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--label", default="", help="a name for this version of the code, printed with the figures")
    a = p.parse_args()
    b = load_bundle(a.model)
    r = {f"b{n}": round(imagined_steps_per_s(b, n, seconds=a.seconds), 1) for n in a.batches}
    print(json.dumps({"label": a.label, "cpu": cpu_name(), **r}))


if __name__ == "__main__":
    main()
