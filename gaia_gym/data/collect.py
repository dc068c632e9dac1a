"""Resumable, multi-process collection of episodes into a dataset directory.

A collection is a *plan*: episode i has a fixed seed and split, decided before anything runs, so the
same command always produces the same dataset and a rerun only records what is missing. Workers write
their shard atomically and hand back its manifest entry; the parent process alone writes the manifest.
Killing a collection at any moment loses at most the episodes in flight.

A rerun into an existing dataset must describe the same data: every manifest header field (source,
fps, frame size, the collector's config...) must match, except the ones in `RERUN_FREE` (how many
episodes, how many workers, shard compression). Anything else is refused with one line naming the
differing fields, so a dataset never mixes episodes of two specs.

Ctrl-C (SIGINT, sent by the terminal to every process of the job) and SIGTERM stop a collection
quietly: the workers ignore SIGINT and are terminated by the parent, which indexes every episode
completed so far and re-raises `KeyboardInterrupt` (the CLI prints one line).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
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


# Manifest fields a rerun may change: they say how much to record and how, not what the data is.
RERUN_FREE = ("config.episodes", "config.workers", "config.compress")


# A recorder turns a spec into (arrays, meta); it must be a picklable top-level function.
Recorder = Callable[[EpisodeSpec, object], tuple[dict, dict]]


def _init_worker() -> None:
    """Pool worker start-up: Ctrl-C is the parent's business (it terminates the pool with SIGTERM,
    whose default action ends a worker silently), so a worker never prints a KeyboardInterrupt trace."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _work(args):
    recorder, spec, cfg, out_dir, compress = args
    t0 = time.perf_counter()
    arrays, meta = recorder(spec, cfg)
    meta = dict(meta, index=spec.index, seed=spec.seed, split=spec.split)
    path = Path(out_dir) / fmt.EPISODES / fmt.episode_filename(spec.index)
    entry = fmt.write_episode(path, arrays, meta, compress=compress)
    return entry, time.perf_counter() - t0


def _sigterm_to_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _start_pool(n: int):
    """A spawn pool of `n` workers that ignore SIGINT from their first instruction: SIG_IGN is set
    while they are spawned (an ignored signal stays ignored across exec, and Python keeps it so), and
    again by the initializer (for workers the pool respawns later)."""
    ctx = mp.get_context("spawn")
    if threading.current_thread() is not threading.main_thread():
        return ctx.Pool(n, initializer=_init_worker)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return ctx.Pool(n, initializer=_init_worker)
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


def run_collection(
    recorder: Recorder,
    specs: list[EpisodeSpec],
    cfg: object,
    out_dir: Path,
    info: dict,
    workers: int = 1,
    compress: bool = True,
    progress: bool = True,
    free: tuple[str, ...] = RERUN_FREE,
) -> dict:
    """Record every planned episode not already on disk; returns the final manifest.

    `info` (source, fps, frame size, config...) goes into the manifest; rerunning into the same
    directory with an `info` that differs in any field but `free` (dotted names, default
    `RERUN_FREE`) raises `DatasetError` naming the fields, before anything is recorded.
    Ctrl-C / SIGTERM: the workers stop quietly, every completed episode is kept (and indexed), and
    `KeyboardInterrupt` is re-raised.
    """
    out_dir = Path(out_dir)
    manifest = fmt.open_for_writing(out_dir, info, free=free)
    done = {e["file"] for e in manifest["episodes"]}
    todo = [s for s in specs if f"{fmt.EPISODES}/{fmt.episode_filename(s.index)}" not in done]
    fmt.write_manifest(out_dir, manifest)

    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM) if in_main else None
    if in_main and old_term in (signal.SIG_DFL, None):  # `kill PID` stops like Ctrl-C: cleanly
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="ep", disable=not progress,
               desc=f"collect {info.get('source', '')}")
    steps = 0
    t0 = time.perf_counter()
    jobs = [(recorder, s, cfg, str(out_dir), compress) for s in todo]
    pool = None
    try:
        if workers <= 1 or len(todo) <= 1:
            results = map(_work, jobs)
        else:
            pool = _start_pool(min(workers, len(todo)))
            results = pool.imap_unordered(_work, jobs)
        for entry, _secs in results:
            manifest["episodes"].append(entry)
            fmt.write_manifest(out_dir, manifest)
            steps += entry["steps"]
            bar.update(1)
            bar.set_postfix(steps_per_s=f"{steps / (time.perf_counter() - t0):.0f}")
    except KeyboardInterrupt:
        if pool is not None:  # stop the workers first: every shard left on disk is then complete
            pool.terminate()
            pool.join()
            pool = None
            try:  # episodes finished but not yet handed back: index them now, not on the rerun
                if fmt.index_unlisted(out_dir, manifest):
                    fmt.write_manifest(out_dir, manifest)
            except Exception:  # noqa: BLE001 - never mask the interrupt; the rerun indexes them anyway
                pass
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if in_main and signal.getsignal(signal.SIGTERM) is _sigterm_to_interrupt:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
    return manifest
