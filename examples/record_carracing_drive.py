"""Make a "logged drive" the way a user would have one: a video file plus a CSV log of speed and steering.

Drives real CarRacing-v3 (the scripted driver, acting every simulator frame, with a gentle weave) on a
track no collection uses (with `--weave`, `--weave-hz` and `--speed-scale` to drive unlike the collector), and writes what the simulator showed, its native 96x96 observations at 50 fps,
to a video, with a CSV log (time_s, speed_mps, steering). Import it like any drive:

    python examples/record_carracing_drive.py --out drives/cr_test --seconds 15
    gaia-gym import drives/cr_test.mp4 --log drives/cr_test.csv --out data/imported --like carracing --return-col return
    gaia-gym eval tokenizer --data data/imported --split all
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import cv2

from gaia_gym.errors import exit_with, run_script
from gaia_gym.data.frames import SIM_FPS
from gaia_gym.sims.carracing import CarRacingDrive, PursuitDriver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("drives/cr_test"), help="path stem for .mp4 and .csv")
    p.add_argument("--seed", type=int, default=2_000_000, help="track seed (outside every collected range)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--codec", default="mp4v", help="fourcc: mp4v (.mp4) or FFV1 (lossless, use --ext avi)")
    p.add_argument("--ext", default="mp4")
    p.add_argument("--weave", type=float, default=0.15, help="amplitude of the steering weave added to the driver's")
    p.add_argument("--weave-hz", type=float, default=0.4, help="frequency of the weave")
    p.add_argument("--speed-scale", type=float, default=0.9, help="the driver's target speed times this")
    a = p.parse_args()
    drive = CarRacingDrive(frame_skip=1, render_skipped=True)
    driver = PursuitDriver(drive)
    drive.reset(a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    video = a.out.with_suffix("." + a.ext)
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*a.codec), float(SIM_FPS), (96, 96))
    if not vw.isOpened():
        exit_with(f"OpenCV cannot write {a.codec} video here")
    rows = []
    ret = 0.0  # CarRacing's return so far (zoom-in excluded), logged so an import knows each step's reward
    n = int(a.seconds * SIM_FPS)
    for k in range(n):
        t = k / SIM_FPS
        steer, speed = driver.act()
        steer = max(-1.0, min(1.0, steer + a.weave * math.sin(2 * math.pi * a.weave_hz * t)))  # a weave
        rows.append((f"{t:.3f}", f"{drive.speed_mps:.3f}", f"{steer:.4f}", f"{ret:.4f}"))
        vw.write(cv2.cvtColor(drive.last_obs, cv2.COLOR_RGB2BGR))  # frame k is shown at time t
        s = drive.step(steer, speed * a.speed_scale)
        ret += s.reward
        if s.terminated or s.truncated:
            break
    vw.release()
    drive.close()
    log = a.out.with_suffix(".csv")
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "speed_mps", "steering", "return"])
        w.writerows(rows)
    print(f"wrote {video} ({len(rows)} frames at {SIM_FPS} fps) and {log}")


if __name__ == "__main__":
    run_script("record_carracing_drive", main)
