"""Tokens per frame and codebook: train each tokenizer setting for the same budget, measure on held-out tracks.

    python benchmarks/tokenizer_sweep.py --data data/carracing --minutes 6 --out runs/sweep \
        --json results/tokenizer_sweep.json

Every setting gets the same wall-clock budget on the same machine (run them one after another, nothing
else running). Reported per setting: validation PSNR/SSIM, code usage, compression, encode/decode
speed, and what its token count costs the world model per imagined frame. Resumable: a setting whose
run directory already reached the budget is only re-evaluated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaia_gym.fileio import atomic_write_json
from gaia_gym.bundle import load_tokenizer
from gaia_gym.evaluation.tokenizer import estimate_world_model_cost, evaluate_tokenizer
from gaia_gym.train.tokenizer import tokenizer_config, train_tokenizer
from gaia_gym.train.loop import TrainConfig

SETTINGS = ["t4x4", "t8x8", "t8x8-vq", "t16x16"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per setting")
    p.add_argument("--steps", type=int, default=3000, help="schedule length (the budget usually stops first)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--max-frames", type=int, default=6000, help="validation frames per evaluation")
    p.add_argument("--json", type=Path, default=Path("results/tokenizer_sweep.json"))
    a = p.parse_args()
    rows = json.loads(a.json.read_text()) if a.json.exists() else {}
    for name in a.settings.split(","):
        tc = TrainConfig(steps=a.steps, batch_size=64, lr=1e-3, warmup_steps=200, channels_last=True,
                         max_minutes=a.minutes, checkpoint_minutes=5, log_every=25, image_every=1000)
        r = train_tokenizer(a.data, a.out / name, preset=name, train_cfg=tc)
        ev = evaluate_tokenizer(load_tokenizer(a.out / name), a.data, split="val", max_frames=a.max_frames)
        cfg = tokenizer_config(name)
        rows[name] = {**ev, "train_steps": r["step"], "train_minutes": r["minutes"],
                      "quantizer": cfg.quantizer, "world_model_cost": estimate_world_model_cost(cfg.tokens_per_frame)}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(a.json, rows)
        print(f"{name}: {ev['psnr_db']:.2f} dB, SSIM {ev['ssim']:.3f}, usage {ev['codebook_usage']:.2f}, "
              f"{ev['compression_ratio']:.0f}x, decode {ev['decode_frames_per_s']:.0f} fps, "
              f"{r['step']} steps in {r['minutes']:.1f} min", flush=True)
    print("\n| setting | tokens | vocab | bits/frame | compression | PSNR dB | SSIM | code usage | decode fps | WM GFLOP/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['tokens_per_frame']} | {r['vocab_size']} | {r['bits_per_frame']:.0f} | "
              f"{r['compression_ratio']:.0f}x | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['codebook_usage']:.2f} | "
              f"{r['decode_frames_per_s']:.0f} | {r['world_model_cost']['gflop_per_frame']:.3f} |")


if __name__ == "__main__":
    main()
