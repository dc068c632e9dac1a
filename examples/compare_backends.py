"""Real vs imagined, several world models side by side: one real context from a dataset's validation
tracks, the real continuation, and each model's future under the same real actions (greedy / mean
prediction unless --temperature). Works with discrete and flow models alike.

    python examples/compare_backends.py --data data/cr100 --model discrete=runs/ab_p2 --model flow=runs/flow \
        --out results/backends_futures.png --steps 8 --clip 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gaia_gym.errors import exit_with, run_script
from gaia_gym.bundle import load_bundle
from gaia_gym.errors import GaiaGymError
from gaia_gym.evaluation.pictures import compare_models_picture


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a model to show (repeat)")
    p.add_argument("--out", default="backends_futures.png", help="PNG (a GIF is written beside it)")
    p.add_argument("--split", default="val")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--clip", type=int, default=0, help="which non-overlapping clip of the split")
    p.add_argument("--temperature", type=float, default=0.0)
    a = p.parse_args()
    try:
        models = {}
        for spec in a.model:
            name, _, d = spec.partition("=")
            if not d:
                exit_with(f"compare_backends: --model wants NAME=DIR, got {spec!r}")
            b = load_bundle(d)
            models[name] = (b.world_model, b.tokenizer)
        out = compare_models_picture(models, Path(a.data), Path(a.out), split=a.split, steps=a.steps, clip=a.clip,
                                     temperature=a.temperature)
    except GaiaGymError as e:
        exit_with(f"compare_backends: {e}")
    print(f"wrote {out} and {out.with_suffix('.gif')}")


if __name__ == "__main__":
    run_script("compare_backends", main)
