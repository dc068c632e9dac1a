"""One table for the two world-model backends: the discrete (GAIA-1) and the flow (GAIA-2) model, from
evaluations and benchmarks run on the same data and validation clips.

    gaia-gym eval world-model --data data/cr100 --model runs/flow --max-clips 64 --steps-sweep 1 2 4 8 16 --json runs/eval_flow.json
    gaia-gym eval world-model --data data/cr100 --model runs/ab_p2 --max-clips 64 --json runs/eval_discrete.json
    gaia-gym bench --model runs/flow --batch-sizes 64 256 --json runs/bench_flow.json   (likewise the discrete one)
    python benchmarks/backend_table.py --flow-eval runs/eval_flow.json --discrete-eval runs/eval_discrete.json \
        --flow-bench runs/bench_flow.json --discrete-bench runs/bench_discrete.json \
        --flow-model runs/flow --discrete-model runs/ab_p2 --out results/flow_world_model.json

Writes the flow model's figures at the top level (the keys the results file promises) and the discrete
model's under "discrete"; training minutes are read from the model directories (world model and its
tokenizer), speed from `gaia-gym bench` (frames decoded, batch 64, the real simulator measured in the same
run). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gaia_gym.fileio import merge_json, read_json

KEYS = ("psnr_by_horizon", "copy_last_psnr_by_horizon", "tokenizer_ceiling_psnr", "counterfactual_steering_paired_accuracy",
        "counterfactual_steering_accuracy", "reward_mae_teacher_forced", "reward_mae_rollout", "termination_auc",
        "counterfactual_speed_paired_motion_accuracy", "flicker", "quality_by_sampling_steps", "sampling_steps",
        "clips", "split")


def train_minutes(model: Path) -> dict:
    """Training minutes of a model directory's world model and of its tokenizer (from their config.json)."""
    def minutes(d: Path) -> float | None:
        meta = read_json(d / "config.json").get("meta", {})
        m = meta.get("minutes", meta.get("train_meta", {}).get("minutes"))
        return None if m is None else round(float(m), 2)

    tok = model / "tokenizer"
    return {"world_model": minutes(model), "tokenizer": minutes(tok) if (tok / "config.json").exists() else None}


def speed(bench: dict) -> dict:
    b64 = bench["batches"]["64"]
    out = {"imagined_frames_per_s_b64": b64["frames_steps_per_s"], "imagined_vs_real_driving_ratio": b64["frames_vs_real"],
           "imagined_latents_per_s_b64": b64["tokens_steps_per_s"], "imagined_latents_vs_real_b64": b64["tokens_vs_real"],
           "real_sim_frames_per_s": bench["real_sim_frames_per_s"], "cpu": bench.get("cpu"),
           "precision": bench.get("precision")}
    if "256" in bench["batches"]:
        out["imagined_frames_vs_real_b256"] = bench["batches"]["256"]["frames_vs_real"]
    return out


def record(ev: dict, bench: dict, model: Path) -> dict:
    r = {k: ev[k] for k in KEYS if k in ev}
    r.update(speed(bench))
    r["train_minutes"] = train_minutes(model)
    r["model"] = str(model)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("flow-eval", "discrete-eval", "flow-bench", "discrete-bench", "flow-model", "discrete-model"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--sweep-eval", help="a flow eval with --steps-sweep (if not the --flow-eval itself)")
    p.add_argument("--plain-sweep-eval", help="the same sweep of a flow model trained without the shortcut objective")
    p.add_argument("--flow-unseen", help="the flow model's eval on drives nobody collected (--split all)")
    p.add_argument("--discrete-unseen", help="the discrete model's eval on the same drives")
    p.add_argument("--flow-bench-variant", action="append", default=[], metavar="NAME=FILE",
                   help="another bench of the flow model (e.g. one_shortcut_step=runs/bench_flow_1step.json)")
    p.add_argument("--out", required=True, help="results JSON (merged into)")
    p.add_argument("--note", default="", help="a sentence on the conditions (data, budgets, machine)")
    a = p.parse_args()
    flow = record(read_json(Path(a.flow_eval)), read_json(Path(a.flow_bench)), Path(a.flow_model))
    disc = record(read_json(Path(a.discrete_eval)), read_json(Path(a.discrete_bench)), Path(a.discrete_model))
    if a.sweep_eval:
        flow["quality_by_sampling_steps"] = read_json(Path(a.sweep_eval))["quality_by_sampling_steps"]
    if a.plain_sweep_eval:
        flow["quality_by_sampling_steps_plain_flow_model"] = read_json(Path(a.plain_sweep_eval))["quality_by_sampling_steps"]
    for spec in a.flow_bench_variant:
        name, _, path = spec.partition("=")
        flow.setdefault("speed_variants", {})[name] = speed(read_json(Path(path)))
    for rec, path in ((flow, a.flow_unseen), (disc, a.discrete_unseen)):
        if path:
            u = read_json(Path(path))
            rec["unseen_drives"] = {k: u[k] for k in ("psnr_by_horizon", "copy_last_psnr_by_horizon", "tokenizer_ceiling_psnr",
                                                      "counterfactual_steering_paired_accuracy", "clips", "split") if k in u}
    merge_json(Path(a.out), ".", {**flow, "discrete": disc, **({"note": a.note} if a.note else {})})
    print("| figure | flow (GAIA-2) | discrete (GAIA-1) |\n|---|---|---|")
    for h in flow["psnr_by_horizon"]:
        print(f"| PSNR h{h} (dB) | {flow['psnr_by_horizon'][h]:.2f} | {disc['psnr_by_horizon'][h]:.2f} |")
    for k in ("tokenizer_ceiling_psnr", "counterfactual_steering_paired_accuracy", "counterfactual_steering_accuracy",
              "imagined_frames_per_s_b64", "imagined_vs_real_driving_ratio"):
        print(f"| {k} | {flow.get(k, float('nan')):.3g} | {disc.get(k, float('nan')):.3g} |")
    print(f"| train minutes (tokenizer + world model) | {flow['train_minutes']} | {disc['train_minutes']} |")
    if "unseen_drives" in flow and "unseen_drives" in disc:
        for h in flow["unseen_drives"]["psnr_by_horizon"]:
            f, d = flow["unseen_drives"], disc["unseen_drives"]
            print(f"| unseen drives PSNR h{h} (copy-last {f['copy_last_psnr_by_horizon'][h]:.2f}) | "
                  f"{f['psnr_by_horizon'][h]:.2f} | {d['psnr_by_horizon'][h]:.2f} |")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
