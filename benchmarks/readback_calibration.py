"""How well the model-free turn read-back (gaia_gym.evaluation.readback) reads REAL frames: windows of
8 steps of held steering (|mean| >= 0.3, one sign, moving >= 10 m/s) from the validation tracks; the
fraction whose measured turn has the logged steering's sign. This is the instrument's own accuracy, the
yardstick for the world model's counterfactual figures.

    .venv/bin/python benchmarks/readback_calibration.py --data data/carracing --windows 100 --json results/readback.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gaia_gym.fileio import atomic_write_json
from gaia_gym.evaluation.readback import calibrate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/carracing")
    p.add_argument("--split", default="val")
    p.add_argument("--windows", type=int, default=100)
    p.add_argument("--json")
    a = p.parse_args()
    t0 = time.perf_counter()
    r = calibrate(a.data, split=a.split, windows=a.windows)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    r["command"] = f"python benchmarks/readback_calibration.py --data {a.data} --split {a.split} --windows {a.windows}"
    print(json.dumps(r, indent=1))
    if a.json:
        atomic_write_json(Path(a.json), r)


if __name__ == "__main__":
    main()
