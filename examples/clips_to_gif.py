"""Stream random clips from a dataset and write them side by side as a GIF.

    python examples/clips_to_gif.py data/carracing --split val --clips 4 --len 24 --out clips.gif
"""

from __future__ import annotations

import argparse

import imageio.v3 as iio
import numpy as np
import torch

from gaia_gym.errors import run_script
from gaia_gym.data.loader import ClipDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset directory")
    p.add_argument("--split", default="val", choices=["train", "val", "all"])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--len", type=int, default=24, help="frames per clip")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", default="clips.gif")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    ds = ClipDataset(a.data, split=a.split, clip_len=a.len, fields=("frames", "speed_mps"), seed=a.seed)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=a.clips)))
    frames = batch["frames"].numpy()  # (N, L, H, W, 3)
    row = np.concatenate(list(frames), axis=2)  # (L, H, N*W, 3)
    row = row.repeat(a.scale, axis=1).repeat(a.scale, axis=2)
    iio.imwrite(a.out, row, duration=80, loop=0)
    eps = batch["episode"].tolist()
    print(f"wrote {a.out}: {a.clips} clips of {a.len} frames (episodes {eps}, mean speed "
          f"{batch['speed_mps'].mean():.1f} m/s)")


if __name__ == "__main__":
    run_script("clips_to_gif", main)
