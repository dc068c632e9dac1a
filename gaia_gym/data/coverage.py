"""Coverage: does a dataset hold the driving that other drivers (and agents) will do?

Every step of a CarRacing dataset is placed in a cell of speed x steering x off-road: speed bins of
10 m/s from 0 to 110, eight steering bins over [-1, 1], and whether the car is on the grass, read from
the frame's pixels around the car (`gaia_gym.data.frames.carracing_grass_fraction`, so collected and
imported drives are measured alike). A step of another dataset is *covered* when its cell holds at
least `min_count` steps of the reference dataset; the share of covered steps says how much of that
driving the reference has seen, cell by cell rather than on average.

    gaia-gym data coverage data/carracing --against data/heldout_lossless --json results/coverage.json \\
        --plot results/coverage.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gaia_gym.data.format import DatasetError, load_episode, read_manifest
from gaia_gym.data.frames import carracing_grass_fraction

SPEED_EDGES = np.arange(0.0, 120.0, 10.0)  # m/s: 11 bins, the last one 100-110
STEER_EDGES = np.linspace(-1.0, 1.0, 9)  # 8 bins
OFFROAD_GRASS = 0.4  # grass share around the car above which the car is off the road
MIN_COUNT = 20  # reference steps a cell needs for another dataset's steps in it to count as covered


def driving_samples(directory: str | Path, split: str | None = None, progress: bool = False,
                    max_episodes: int | None = None) -> dict[str, np.ndarray]:
    """Per-step speed (m/s), steering and off-road flag of every episode of `directory` (one `split`, or
    all; the first `max_episodes` of them when given)."""
    directory = Path(directory)
    entries = [e for e in read_manifest(directory).get("episodes", []) if split in (None, e.get("split", "train"))]
    entries = entries[:max_episodes] if max_episodes else entries
    if not entries:
        raise DatasetError(f"{directory} holds no {split + ' ' if split else ''}episodes")
    speed, steer, off = [], [], []
    for e in tqdm(entries, desc=f"coverage {directory.name}", unit="ep", disable=not progress):
        ep = load_episode(directory / e["file"], fields=["frames", "speed_mps", "steering"])
        speed.append(np.asarray(ep["speed_mps"], np.float32))
        steer.append(np.asarray(ep["steering"], np.float32))
        off.append(carracing_grass_fraction(ep["frames"]) > OFFROAD_GRASS)
    return {"speed_mps": np.concatenate(speed), "steering": np.concatenate(steer), "offroad": np.concatenate(off)}


def cell_counts(samples: dict[str, np.ndarray]) -> np.ndarray:
    """(speed bins, steering bins, 2) step counts; speeds past the last edge fall in the last bin."""
    s = np.clip(samples["speed_mps"], SPEED_EDGES[0], SPEED_EDGES[-1] - 1e-3)
    st = np.clip(samples["steering"], -1.0, 1.0 - 1e-6)
    counts, _ = np.histogramdd(np.stack([s, st, samples["offroad"].astype(np.float32)], 1),
                               bins=[SPEED_EDGES, STEER_EDGES, np.array([0.0, 0.5, 1.0])])
    return counts.astype(np.int64)


def describe(samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Marginals of one dataset: speed and |steering| percentiles, the off-road share, the cells used."""
    sp, st = samples["speed_mps"], np.abs(samples["steering"])
    counts = cell_counts(samples)
    return {
        "steps": int(len(sp)),
        "speed_mps": {f"p{p}": round(float(np.percentile(sp, p)), 1) for p in (5, 50, 95, 99)} | {"max": round(float(sp.max()), 1)},
        "abs_steering": {f"p{p}": round(float(np.percentile(st, p)), 3) for p in (50, 95)},
        "share_over_70_mps": round(float((sp > 70).mean()), 4),
        "share_offroad": round(float(samples["offroad"].mean()), 4),
        "speed_hist": counts.sum((1, 2)).tolist(),
        "steering_hist": counts.sum((0, 2)).tolist(),
        "cells_used": int((counts > 0).sum()),
    }


def coverage_of(reference: np.ndarray, other: dict[str, np.ndarray], min_count: int = MIN_COUNT) -> dict[str, Any]:
    """Share of `other`'s steps whose cell holds >= `min_count` reference steps, overall and by speed bin."""
    oc = cell_counts(other)
    ok = reference >= min_count
    by_speed = {}
    for i in range(len(SPEED_EDGES) - 1):
        n = int(oc[i].sum())
        if n:
            by_speed[f"{SPEED_EDGES[i]:.0f}-{SPEED_EDGES[i + 1]:.0f}"] = round(float(oc[i][ok[i]].sum() / n), 4)
    return {"covered_share": round(float(oc[ok].sum() / max(oc.sum(), 1)), 4), "min_count": min_count,
            "covered_share_by_speed": by_speed}


def coverage(reference: str | Path, against: list[str | Path], split: str | None = "train",
             min_count: int = MIN_COUNT, progress: bool = True, max_episodes: int | None = None) -> dict[str, Any]:
    """How well `reference` (its `split`, its first `max_episodes` episodes when given) covers the driving
    in each dataset of `against` (all splits)."""
    ref = driving_samples(reference, split, progress, max_episodes)
    rc = cell_counts(ref)
    out: dict[str, Any] = {
        "reference": {"dir": str(reference), "split": split, "max_episodes": max_episodes, **describe(ref),
                      "cell_counts": rc.tolist()},
        "cells": {"speed_edges_mps": SPEED_EDGES.tolist(), "steering_edges": STEER_EDGES.round(3).tolist(),
                  "offroad_grass_share": OFFROAD_GRASS},
        "against": {},
    }
    for d in against:
        other = driving_samples(d, None, progress)
        out["against"][str(d)] = {**describe(other), **coverage_of(rc, other, min_count)}
    return out


def plot_coverage(result: dict, path: str | Path) -> Path:
    """Speed x steering heat map of the reference (log counts, on-road and off-road side by side), with
    the other datasets' covered shares in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(result["reference"]["cell_counts"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for k, (ax, name) in enumerate(zip(axes, ("on the road", "off the road"))):
        im = ax.imshow(np.log10(1 + counts[:, :, k]), origin="lower", aspect="auto", cmap="viridis",
                       extent=[-1, 1, SPEED_EDGES[0], SPEED_EDGES[-1]])
        ax.set_xlabel("steering")
        ax.set_ylabel("speed (m/s)")
        ax.set_title(f"{Path(result['reference']['dir']).name}: {name}")
        fig.colorbar(im, ax=ax, label="log10(1 + steps)")
    shares = ", ".join(f"{Path(k).name} {v['covered_share']:.1%}" for k, v in result["against"].items())
    if shares:
        fig.suptitle(f"steps covered (cell >= {MIN_COUNT} reference steps): {shares}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
