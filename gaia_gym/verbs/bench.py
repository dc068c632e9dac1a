"""`gaia-gym bench`: imagination throughput against the real simulator, measured side by side in one run.

For each batch size, `gaia_gym.evaluation.throughput.imagined_steps_per_s` (the same measurement the
world-model evaluation reports) resets the engine from the prompt bank and steps it with random actions
(sampling as an environment would; warm-up steps not timed): tokens only, then with every frame decoded. Each figure
is turned into driving time per wall second (an imagined step stands for `step_seconds` of driving: 4
CarRacing frames at 50 Hz) and divided by the real CarRacing-v3's, measured in the same run with one
process per core. Absolute speeds drift on shared machines; the ratios are the result.
"""

from __future__ import annotations

import math
import os
import resource

import torch

from gaia_gym.bundle import WorldBundle
from gaia_gym.evaluation import throughput
from gaia_gym.evaluation.throughput import SIM_HZ, cpu_name, imagined_steps_per_s
from gaia_gym.precision import bf16_is_fast, precision_name
HEADLINE_BATCH = 64  # the batch size the one-line summary quotes (when measured)


def _figure(x) -> float | None:
    """A measured figure as a float, or None where it is missing or not finite (JSON null, printed n/a)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def ratio(num, den) -> float | None:
    """num / den, or None (never NaN or inf) where either figure is missing or not finite, or den <= 0."""
    num, den = _figure(num), _figure(den)
    return None if num is None or den is None or den <= 0 else num / den


def fmt(x, spec: str = ".1f", suffix: str = "") -> str:
    """A figure formatted with `spec` (and `suffix`), or "n/a" where it is missing / not finite."""
    x = _figure(x)
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def summary_line(r: dict, batch: int = HEADLINE_BATCH) -> str:
    """The one-line summary of a `run_bench` result: the real simulator's driving s/s and the imagined
    tokens / frames ratios at `batch`, or at the largest measured batch when `batch` was not measured
    (missing figures read "n/a", never "nan")."""
    measured = sorted(int(b) for b in r.get("batches", {}))
    b = batch if batch in measured or not measured else measured[-1]
    procs = r.get("real_sim_processes")
    return (f"real CarRacing-v3: {fmt(r.get('real_driving_s_per_s'), '.2f')} driving s/s "
            f"({procs if procs is not None else 'n/a'} processes); imagined at batch {b}: "
            f"tokens {fmt(r.get(f'tokens_b{b}_vs_real'), '.1f', 'x')}, "
            f"frames {fmt(r.get(f'frames_b{b}_vs_real'), '.1f', 'x')}")


def tokens_per_step(bundle: WorldBundle) -> int | None:
    """Transformer positions per imagined step (image positions + action tokens), where the model says."""
    layout = getattr(bundle.world_model, "layout", None)
    return None if layout is None else int(layout.block)


def decoder_widths(bundle: WorldBundle) -> list[int] | None:
    widths = getattr(bundle.tokenizer.cfg, "dec_channels", None)
    return None if widths is None else [int(c) for c in widths]


def run_bench(bundle: WorldBundle, batch_sizes=(1, 16, 64, 256), seconds: float = 4.0, real_seconds: float = 15.0,
              real_processes: int | None = None, progress: bool = True) -> dict:
    procs = real_processes or os.cpu_count() or 1
    real = throughput.measure_real_driving(real_seconds, procs)
    real_fps = _figure(real.get("real_sim_frames_per_s"))
    real_drive = ratio(real_fps, SIM_HZ)  # None where the simulator gave no figure
    out = {"device": str(bundle.device), "torch_threads": torch.get_num_threads(),
           "precision": precision_name(bundle.device), "cpu": cpu_name(), "bf16_fast": bf16_is_fast(bundle.device),
           "model": str(bundle.path), "int8": bool(getattr(bundle.backend, "int8", False)),
           "tokens_per_step": tokens_per_step(bundle), "decoder": decoder_widths(bundle),
           "step_seconds": bundle.step_seconds,
           "real_sim_frames_per_s": real_fps, "real_sim_processes": procs,
           "real_driving_s_per_s": real_drive, "batches": {}}
    for b in batch_sizes:
        row = {}
        for frames in (False, True):
            sps = _figure(imagined_steps_per_s(bundle, b, frames, seconds))
            key = "frames" if frames else "tokens"
            drive = None if sps is None else _figure(sps * bundle.step_seconds)
            row[f"{key}_steps_per_s"] = sps
            row[f"{key}_driving_s_per_s"] = drive
            row[f"{key}_vs_real"] = ratio(drive, real_drive)
            if progress:
                print(f"batch {b:4d} {key:6s}: {fmt(sps, '9.1f')} steps/s = {fmt(drive, '8.1f')} driving s/s = "
                      f"{fmt(row[f'{key}_vs_real'], '6.1f', 'x')} the real simulator", flush=True)
        out["batches"][str(b)] = row
    for b in batch_sizes:
        for key in ("tokens", "frames"):
            out[f"{key}_b{b}_vs_real"] = out["batches"][str(b)][f"{key}_vs_real"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if bundle.device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(bundle.device) / 2**20
    return out
