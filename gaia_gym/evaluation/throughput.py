"""Imagination throughput against the real simulator, measured side by side in one run.

`imagined_steps_per_s` is the one measurement of the engine's speed: `gaia-gym bench` and the world-model
evaluation both call it. Rows start from the prompt bank when the model has one (else from a random
context of the model's window), then step under random actions, sampling as an environment would,
warm-up steps untimed; with ``frames`` every step's frames are decoded too. `measure_real_driving` runs
the raw CarRacing-v3 simulator with one process per core in the same run, so the ratio of the two (in
driving seconds per wall second) is the result: absolute speeds drift on shared machines, ratios less.
"""

from __future__ import annotations

import os
import platform
import time

import torch

from gaia_gym.data.frames import SIM_FPS
from gaia_gym.imagination import Imagination

SIM_HZ = float(SIM_FPS)  # CarRacing-v3's frames per second (gaia_gym.data.frames)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), for the record of every speed figure."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.no_grad()
def imagined_steps_per_s(model, batch: int, frames: bool = False, seconds: float = 4.0, warmup: int = 3,
                         min_steps: int = 5, seed: int = 0, bf16: bool = True) -> float:
    """Imagined env-steps per wall second (batch rows x steps / time) of an engine over `model` (a
    `WorldBundle` or a backend)."""
    eng = Imagination(model, n=batch, seed=seed, bf16=bf16)
    if eng.prompts is not None:
        eng.reset()
    else:
        g = torch.Generator().manual_seed(seed)
        C = max(2, eng.backend.window)
        shape = (batch, C, *eng.latent_shape)
        if eng.backend.latent_dtype.is_floating_point:  # float latents: unit-scale noise
            lat = torch.randn(shape, generator=g)
        else:
            lo, hi = eng.backend.latent_range
            lat = torch.randint(int(lo), int(hi) + 1, shape, generator=g)
        eng.reset(context=(lat, torch.rand(batch, C, eng.action_dim, generator=g) * 2 - 1))
    g = torch.Generator(device=eng.device).manual_seed(seed)

    def one() -> None:
        eng.step(torch.rand(batch, eng.action_dim, generator=g, device=eng.device) * 2 - 1)
        if frames:
            eng.frames()

    for _ in range(warmup):
        one()
    _sync(eng.device)
    t0, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        one()
        steps += 1
    _sync(eng.device)
    return batch * steps / (time.perf_counter() - t0)


def measure_real_driving(seconds: float = 15.0, processes: int | None = None) -> dict:
    """The raw CarRacing-v3 simulator, one process per core (random driving, rendering as it always does,
    resets included): simulated frames per wall second over all processes."""
    import multiprocessing as mp

    from gaia_gym.sims.carracing_collect import _raw_worker

    n = processes or os.cpu_count() or 1
    with mp.get_context("spawn").Pool(n) as pool:
        out = pool.map(_raw_worker, [(float(seconds), 7_000_000 + w) for w in range(n)])
    fps = sum(f for f, _ in out) / max(t for _, t in out)
    return {"real_sim_frames_per_s": fps, "real_sim_processes": n, "real_sim_seconds": float(seconds)}


__all__ = ["SIM_HZ", "cpu_name", "imagined_steps_per_s", "measure_real_driving"]
