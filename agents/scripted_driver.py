"""The privileged scripted driver in the real CarRacing-v3: the expert baseline every agent is compared to.

It reads the track centreline and the car's pose from the simulator (privileged information no learned
agent gets), steers by pure pursuit and sets its speed from the curvature ahead, through the same
[steering, speed] action interface and speed controller as the rest of gaia_gym.

    python agents/scripted_driver.py --episodes 10 --json results/scripted.json --video results/scripted_driver.gif
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from gaia_gym.errors import run_script
from gaia_gym.sims.carracing import CarRacingDrive, PursuitDriver
from gaia_gym.sims.carracing_collect import evaluate_scripted_driver
from gaia_gym.seeds import HELD_OUT_FROM


def record_video(seed: int, path: Path, every: int = 1, scale: int = 3) -> float:
    """Drive track `seed` once and write what the simulator showed (96x96 with HUD) as a GIF/MP4."""
    drive = CarRacingDrive()
    driver = PursuitDriver(drive)
    drive.reset(seed)
    frames, ret, t = [], 0.0, 0
    while True:
        s = drive.step(*driver.act())
        ret += s.reward
        if t % every == 0:
            frames.append(np.kron(drive.last_obs, np.ones((scale, scale, 1), dtype=np.uint8)))
        t += 1
        if s.terminated or s.truncated:
            break
    drive.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), duration=1000 / 12.5 * every, loop=0)
    return ret


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=10, help="number of tracks")
    p.add_argument("--seed", type=int, default=HELD_OUT_FROM, help="first track seed (held out from collection)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the returns here")
    p.add_argument("--video", type=Path, help="also write a GIF (or .mp4) of the first track")
    a = p.parse_args()
    r = evaluate_scripted_driver(range(a.seed, a.seed + a.episodes), workers=a.workers)
    print(f"mean return {r['mean']:.1f} +- {r['std']:.1f} over {a.episodes} tracks; laps finished {r['laps_finished']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1))
    if a.video:
        ret = record_video(a.seed, a.video, every=2)
        print(f"wrote {a.video} (track {a.seed}, return without the zoom-in penalty {ret:.1f})")


if __name__ == "__main__":
    run_script("scripted_driver", main)
