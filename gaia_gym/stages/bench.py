"""`gaia-gym bench`: imagination throughput against the real simulator, measured side by side in one run.

For each batch size, the engine is reset from the prompt bank and stepped with random actions (sampling
as an environment would; warm-up steps not timed): tokens only, then with every frame decoded. Each figure
is turned into driving time per wall second (an imagined step stands for `step_seconds` of driving: 4
CarRacing frames at 50 Hz) and divided by the real CarRacing-v3's, measured in the same run with one
process per core. Absolute speeds drift on shared machines; the ratios are the result.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import torch

from gaia_gym.bundle import WorldBundle
from gaia_gym.imagination import Imagination
from gaia_gym.precision import precision_name

SIM_HZ = 50.0


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def imagined_steps_per_s(bundle: WorldBundle, batch: int, frames: bool, seconds: float = 4.0, warmup: int = 3,
                         min_steps: int = 5, seed: int = 0) -> float:
    """Imagined env-steps per wall second (batch rows x steps / time)."""
    eng = Imagination(bundle, n=batch, seed=seed)
    eng.reset()
    g = torch.Generator(device=eng.device).manual_seed(seed)
    for _ in range(warmup):
        eng.step(torch.rand(batch, 2, generator=g, device=eng.device) * 2 - 1)
        if frames:
            eng.frames()
    _sync(eng.device)
    t0, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        eng.step(torch.rand(batch, 2, generator=g, device=eng.device) * 2 - 1)
        if frames:
            eng.frames()
        steps += 1
        _sync(eng.device)
    return batch * steps / (time.perf_counter() - t0)


def run_bench(bundle: WorldBundle, batch_sizes=(1, 16, 64, 256), seconds: float = 4.0, real_seconds: float = 15.0,
              real_processes: int | None = None, progress: bool = True) -> dict:
    from gaia_gym.stages.world_model_eval import measure_real_driving

    procs = real_processes or os.cpu_count() or 1
    real = measure_real_driving(real_seconds, procs)
    real_drive = real["real_sim_frames_per_s"] / SIM_HZ
    out = {"device": str(bundle.device), "torch_threads": torch.get_num_threads(),
           "precision": precision_name(bundle.device), "cpu": platform.processor() or platform.machine(),
           "model": str(bundle.path), "step_seconds": bundle.step_seconds,
           "real_sim_frames_per_s": real["real_sim_frames_per_s"], "real_sim_processes": procs,
           "real_driving_s_per_s": real_drive, "batches": {}}
    for b in batch_sizes:
        row = {}
        for frames in (False, True):
            sps = imagined_steps_per_s(bundle, b, frames, seconds)
            key = "frames" if frames else "tokens"
            drive = sps * bundle.step_seconds
            row[f"{key}_steps_per_s"] = sps
            row[f"{key}_driving_s_per_s"] = drive
            row[f"{key}_vs_real"] = drive / real_drive
            if progress:
                print(f"batch {b:4d} {key:6s}: {sps:9.1f} steps/s = {drive:8.1f} driving s/s = "
                      f"{drive / real_drive:6.1f}x the real simulator", flush=True)
        out["batches"][str(b)] = row
    for b in batch_sizes:
        for key in ("tokens", "frames"):
            out[f"{key}_b{b}_vs_real"] = out["batches"][str(b)][f"{key}_vs_real"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if bundle.device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(bundle.device) / 2**20
    return out
