"""Each speed lever alone, side by side in one run, as ratios to the real simulator measured in the same run.

    python benchmarks/engine_ab.py \
        --variant shipped=gaia_gym/assets/world_model \
        --variant shipped+int8=gaia_gym/assets/world_model:int8 \
        --variant p4=runs/fast_p4 --variant p4+int8=runs/fast_p4:int8 \
        --variant p4+dec64=runs/fast_p4:decoder=runs/dec64 \
        --variant fast=gaia_gym/assets/world_model_fast:int8 \
        --batches 64 256 --rounds 2 --json results/engine_ab.json

A variant is NAME=MODEL_DIR[:int8][:decoder=TOKENIZER_DIR]: `int8` runs the world model's Linear layers in
int8 (`precision.int8_linears`), `decoder=` swaps in another tokenizer directory that reads the same codes
(e.g. a narrower decoder from `gaia-gym train decoder`). Every variant is timed at every batch size, tokens
only and with frames decoded (the measurement `gaia-gym bench` makes), in `--rounds` interleaved rounds
(A B C A B C: drift hits every variant alike); the figure is the median over rounds. The real CarRacing-v3
is measured once before and once after (one process per core); the ratios use their mean.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from gaia_gym.bundle import load_bundle, load_tokenizer
from gaia_gym.errors import ConfigError
from gaia_gym.evaluation.throughput import SIM_HZ, cpu_name, imagined_steps_per_s, measure_real_driving
from gaia_gym.fileio import write_json
from gaia_gym.precision import bf16_is_fast, precision_name
from gaia_gym.verbs.bench import decoder_widths, tokens_per_step


def parse_variant(text: str):
    """NAME=DIR[:int8][:decoder=DIR] -> (name, model dir, int8, decoder dir or None)."""
    if "=" not in text:
        raise ConfigError(f"--variant must be NAME=MODEL_DIR[:int8][:decoder=DIR], got {text!r}")
    name, rest = text.split("=", 1)
    parts = rest.split(":")
    model, int8, decoder = parts[0], False, None
    for p in parts[1:]:
        if p == "int8":
            int8 = True
        elif p.startswith("decoder="):
            decoder = p.split("=", 1)[1]
        else:
            raise ConfigError(f"--variant {text!r}: unknown option {p!r} (int8, decoder=DIR)")
    return name, model, int8, decoder


def build(model: str, int8: bool, decoder: str | None):
    b = load_bundle(model)
    if decoder is not None:
        b = b.with_decoder(load_tokenizer(decoder))
    return b.with_backend(int8=int8) if int8 else b.with_backend()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="NAME=MODEL_DIR[:int8][:decoder=DIR]")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--real-seconds", type=float, default=15.0)
    p.add_argument("--no-frames", action="store_true", help="tokens only")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    variants = [parse_variant(v) for v in a.variant]
    bundles = {name: build(m, q, d) for name, m, q, d in variants}
    real = [measure_real_driving(a.real_seconds)["real_sim_frames_per_s"]]
    print(f"real CarRacing-v3: {real[0]:.1f} frames/s", flush=True)
    kinds = ("tokens",) if a.no_frames else ("tokens", "frames")
    runs: dict = {name: {f"{k}_b{n}": [] for k in kinds for n in a.batches} for name in bundles}
    for r in range(a.rounds):
        for name, b in bundles.items():
            for n in a.batches:
                for k in kinds:
                    sps = imagined_steps_per_s(b, n, frames=k == "frames", seconds=a.seconds)
                    runs[name][f"{k}_b{n}"].append(sps)
                    print(f"round {r} {name:16s} b{n:<4d} {k:6s} {sps:9.1f} steps/s", flush=True)
    real.append(measure_real_driving(a.real_seconds)["real_sim_frames_per_s"])
    real_drive = statistics.mean(real) / SIM_HZ
    step_s = next(iter(bundles.values())).step_seconds
    out = {"cpu": cpu_name(), "precision": precision_name("cpu"), "bf16_fast": bf16_is_fast("cpu"),
           "real_sim_frames_per_s": real, "real_driving_s_per_s": real_drive, "step_seconds": step_s,
           "rounds": a.rounds, "seconds": a.seconds, "variants": {}}
    print(f"\nreal CarRacing-v3 {real[0]:.1f} / {real[1]:.1f} frames/s: {real_drive:.2f} driving s/s")
    print(f"{'variant':18s} " + " ".join(f"{c:>16s}" for c in runs[variants[0][0]]))
    for name, m, q, d in variants:
        med = {c: statistics.median(v) for c, v in runs[name].items()}
        ratios = {c: v * step_s / real_drive for c, v in med.items()}
        out["variants"][name] = {"model": m, "int8": q, "decoder": d, "steps_per_s": med, "vs_real": ratios,
                                 "all_rounds": runs[name],
                                 "tokens_per_step": tokens_per_step(bundles[name]),
                                 "decoder_widths": decoder_widths(bundles[name])}
        print(f"{name:18s} " + " ".join(f"{med[c]:8.0f} ={ratios[c]:5.1f}x" for c in med))
    if a.json:
        write_json(a.json, out)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
