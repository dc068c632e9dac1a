"""Operator-level profile of one imagined step of the engine, at several batch sizes.

    python benchmarks/profile_step.py --batches 1 64 256 --steps 30 --json results/profile_step.json

For each batch size the engine (shipped model unless --model) is reset from the prompt bank, warmed up,
then `--steps` steps are run under torch.profiler (CPU activities): the table groups the self CPU time
by operator family (attention, matmul/linear, sampling, KV-cache copies, layout ops, decoding, other)
and lists the top operators. Wall time per step and imagined steps/s are measured in a separate,
unprofiled loop, with frames decoded (`--frames`) or not.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

FAMILIES = [  # (family, substrings of operator names), first match wins
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "attention", "softmax")),
    ("matmul / linear", ("addmm", "mm", "linear", "matmul", "bmm", "baddbmm")),
    ("sampling (topk, multinomial, argmax)", ("topk", "multinomial", "argmax", "gather", "cumsum", "exponential", "div_")),
    ("conv (decoder)", ("conv", "mkldnn_convolution", "upsample")),
    ("normalisation / activation", ("layer_norm", "gelu", "native_layer_norm", "group_norm", "silu")),
    ("copies (KV cache writes, cat, clone)", ("copy_", "cat", "clone", "index_put", "stack", "contiguous", "index", "select_backward")),
    ("elementwise", ("add", "mul", "sub", "sin", "cos", "neg", "where", "eq", "lt", "le", "or", "and", "fill_", "pow", "sum")),
    ("layout (views, reshapes, empty)", ("view", "reshape", "permute", "transpose", "slice", "expand", "unsqueeze", "squeeze",
                                         "flatten", "empty", "as_strided", "split", "chunk", "unbind", "t", "alias", "detach", "to", "_to_copy")),
]


def family(name: str) -> str:
    n = name.lower().replace("aten::", "")
    for fam, keys in FAMILIES:
        if any(k == n or k in n for k in keys):
            return fam
    return "other"


def wall(eng, batch: int, frames: bool, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        eng.step(torch.rand(batch, 2, generator=g) * 2 - 1)
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step(torch.rand(batch, 2, generator=g) * 2 - 1)
        if frames:
            eng.frames()
    return (time.perf_counter() - t0) / steps


def profile(bundle, batch: int, steps: int, frames: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile as tprofile

    from gaia_gym.imagination import Imagination

    eng = Imagination(bundle, n=batch, seed=0)
    eng.reset()
    step_s = wall(eng, batch, frames, steps)
    g = torch.Generator().manual_seed(1)
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eng.step(torch.rand(batch, 2, generator=g) * 2 - 1)
            if frames:
                eng.frames()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    fam = defaultdict(float)
    for e in events:
        fam[family(e.key)] += e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"batch": batch, "frames": frames, "wall_ms_per_step": 1000 * step_s,
            "imagined_steps_per_s": batch / step_s,
            "profiled_cpu_ms_per_step": total / 1000 / steps,
            "families_pct": {k: round(100 * v / total, 1) for k, v in sorted(fam.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 3),
                         "calls_per_step": e.count / steps} for e in top]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--frames", action="store_true", help="decode frames every step too")
    p.add_argument("--int8", action="store_true", help="the world model's Linear layers in int8")
    p.add_argument("--label", help="the JSON key to merge the profile under (default: tokens / frames)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    from gaia_gym.bundle import load_bundle
    from gaia_gym.evaluation.throughput import cpu_name
    from gaia_gym.precision import precision_name

    bundle = load_bundle(a.model)
    if a.int8:
        bundle = bundle.with_backend(int8=True)
    out = {"model": str(bundle.path), "int8": a.int8, "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "precision": precision_name(bundle.device),
           "torch": torch.__version__, "command": "python benchmarks/profile_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "runs": []}
    for b in a.batches:
        r = profile(bundle, b, a.steps, a.frames)
        out["runs"].append(r)
        print(f"batch {b:4d}: {r['wall_ms_per_step']:7.2f} ms/step = {r['imagined_steps_per_s']:7.1f} steps/s | "
              + ", ".join(f"{k} {v}%" for k, v in list(r["families_pct"].items())[:6]))
        for t in r["top_ops"][:8]:
            print(f"      {t['op']:40s} {t['self_ms_per_step']:8.3f} ms  x{t['calls_per_step']:.0f}")
    if a.json:
        from gaia_gym.fileio import merge_json

        merge_json(a.json, a.label or ("frames" if a.frames else "tokens"), out)
    return out


if __name__ == "__main__":
    main()
