"""Drives nobody collected: record them as a user would (video + CSV log), then import them.

Ten drives by a driver unlike the collector's (`examples/record_carracing_drive.py`: pure pursuit acting
every simulator frame, 30-100 m/s, smooth steering weaves of several sizes and frequencies), on track
seeds 2,000,000+ (outside every collected range and the agents' test tracks). Each drive is written
twice, as lossless FFV1 video and as MP4 (the path a user's camera takes), and each version is imported
into its own dataset with `gaia-gym import --like carracing`:

    python benchmarks/heldout_drives.py --videos drives/heldout --data data/heldout
    gaia-gym eval world-model --data data/heldout_lossless --split all --model M --per-episode ...

Rerunning skips what exists, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gaia_gym.data.format import read_manifest
from gaia_gym.errors import run_script

ROOT = Path(__file__).resolve().parents[1]
FIRST_SEED = 2_000_000
SECONDS = 20.0
# (the driver's target speed times this, weave amplitude, weave Hz): 30-100 m/s, straight to wild
DRIVES = [
    (0.45, 0.00, 0.0), (0.60, 0.10, 0.3), (0.75, 0.20, 0.5), (0.90, 0.15, 0.8), (1.00, 0.25, 0.25),
    (1.10, 0.30, 1.0), (1.20, 0.05, 0.2), (1.30, 0.20, 0.6), (1.40, 0.35, 0.4), (1.45, 0.10, 1.2),
]
VERSIONS = {"lossless": ("FFV1", "avi"), "mp4": ("mp4v", "mp4")}


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, default=Path("drives/heldout"), help="where the videos and logs go")
    p.add_argument("--data", default="data/heldout", help="dataset path prefix: PREFIX_lossless, PREFIX_mp4")
    p.add_argument("--drives", type=int, default=len(DRIVES), help=f"how many of the {len(DRIVES)} drives")
    a = p.parse_args()
    py = sys.executable
    for version, (codec, ext) in VERSIONS.items():
        out = Path(f"{a.data}_{version}")
        done = {Path(e["meta"].get("video", "")).name for e in read_manifest(out)["episodes"]} if (out / "manifest.json").exists() else set()
        for i, (scale, weave, hz) in enumerate(DRIVES[: a.drives]):
            stem = a.videos / f"drive_{i:02d}"
            video = stem.with_suffix("." + ext)
            if not video.exists():
                run([py, "examples/record_carracing_drive.py", "--out", str(stem), "--seed", str(FIRST_SEED + i),
                     "--seconds", str(SECONDS), "--codec", codec, "--ext", ext, "--weave", str(weave),
                     "--weave-hz", str(hz), "--speed-scale", str(scale)])
            if video.name not in done:
                run([py, "-m", "gaia_gym.cli", "import", str(video), "--log", str(stem.with_suffix(".csv")),
                     "--out", str(out), "--like", "carracing", "--return-col", "return", "--split", "val", "--quiet"])
            print(f"{version} drive {i}: seed {FIRST_SEED + i}, speed x{scale}, weave {weave} at {hz} Hz -> {out}")


if __name__ == "__main__":
    run_script("heldout_drives", main)
