"""Resumable, multi-process collection of episodes into a dataset directory.

A collection is a *plan*: episode i has a fixed seed and split, decided before anything runs, so the
same command always produces the same dataset and a rerun only records what is missing. Workers write
their shard atomically and hand back its manifest entry; the parent process alone writes the manifest.
Killing a collection at any moment loses at most the episodes in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from gaia_gym.data import format as fmt


@dataclass(frozen=True)
class EpisodeSpec:
    """One planned episode."""

    index: int  # position in the plan; the shard is episodes/ep_{index:06d}.npz
    seed: int  # simulator seed (CarRacing: the track)
    split: str  # "train" or "val"
    extra: tuple = ()  # source-specific plan data (e.g. the highway scenario)


def plan_episodes(n: int, seed: int, val_every: int, extras: list[tuple] | None = None) -> list[EpisodeSpec]:
    """Episode i gets seed `seed + i`; every `val_every`-th (i % val_every == val_every - 1) is validation.

    The split follows the simulator seed (one seed = one track / scene), so no validation track is
    ever seen in training, not even one frame of it.
    """
    specs = []
    for i in range(n):
        split = "val" if val_every > 0 and i % val_every == val_every - 1 else "train"
        specs.append(EpisodeSpec(i, seed + i, split, extras[i] if extras else ()))
    return specs


# A recorder turns a spec into (arrays, meta); it must be a picklable top-level function.
Recorder = Callable[[EpisodeSpec, object], tuple[dict, dict]]


def _work(args):
    recorder, spec, cfg, out_dir, compress = args
    t0 = time.perf_counter()
    arrays, meta = recorder(spec, cfg)
    meta = dict(meta, index=spec.index, seed=spec.seed, split=spec.split)
    path = Path(out_dir) / fmt.EPISODES / fmt.episode_filename(spec.index)
    entry = fmt.write_episode(path, arrays, meta, compress=compress)
    return entry, time.perf_counter() - t0


def run_collection(
    recorder: Recorder,
    specs: list[EpisodeSpec],
    cfg: object,
    out_dir: Path,
    info: dict,
    workers: int = 1,
    compress: bool = True,
    progress: bool = True,
) -> dict:
    """Record every planned episode not already on disk; returns the final manifest.

    `info` (source, fps, frame size, config...) goes into the manifest; rerunning with a different
    `info["source"]` into the same directory is refused.
    """
    out_dir = Path(out_dir)
    manifest = fmt.open_for_writing(out_dir, info)
    done = {e["file"] for e in manifest["episodes"]}
    todo = [s for s in specs if f"{fmt.EPISODES}/{fmt.episode_filename(s.index)}" not in done]
    fmt.write_manifest(out_dir, manifest)

    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="ep", disable=not progress,
               desc=f"collect {info.get('source', '')}")
    steps = 0
    t0 = time.perf_counter()
    jobs = [(recorder, s, cfg, str(out_dir), compress) for s in todo]
    if workers <= 1 or len(todo) <= 1:
        results = map(_work, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(min(workers, len(todo)))
        results = pool.imap_unordered(_work, jobs)
    try:
        for entry, _secs in results:
            manifest["episodes"].append(entry)
            fmt.write_manifest(out_dir, manifest)
            steps += entry["steps"]
            bar.update(1)
            bar.set_postfix(steps_per_s=f"{steps / (time.perf_counter() - t0):.0f}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return manifest
