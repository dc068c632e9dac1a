"""`gaia-gym eval`: one verb per evaluated stage; --json writes the metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaia_gym.errors import ConfigError
from gaia_gym.fileio import merge_json, write_json


def cmd_eval_tokenizer(a: argparse.Namespace) -> None:
    from gaia_gym.evaluation.tokenizer import evaluate_tokenizer, recon_grid
    from gaia_gym.bundle import load_tokenizer

    model = load_tokenizer(a.model)
    r = evaluate_tokenizer(model, Path(a.data), split=a.split, max_frames=a.max_frames, bf16=not a.no_bf16,
                           progress=not a.quiet)
    r["model"] = str(a.model or "default (gaia_gym/assets/tokenizer)")
    r["data"] = str(a.data)
    print(f"tokenizer on {r['frames']} {a.split} frames of {a.data}:")
    print(f"  PSNR {r['psnr_db']:.2f} dB (p10 {r['psnr_db_p10']:.2f}), SSIM {r['ssim']:.4f}")
    print(f"  codes used {r['codes_used']}/{r['vocab_size']} ({100 * r['codebook_usage']:.1f}%), "
          f"perplexity {r['code_perplexity']:.0f}")
    print(f"  {r['tokens_per_frame']} tokens/frame, {r['bits_per_frame']:.0f} bits/frame, "
          f"compression {r['compression_ratio']:.1f}x")
    print(f"  encode {r['encode_frames_per_s']:.0f} frames/s, decode {r['decode_frames_per_s']:.0f} frames/s "
          f"(batch 64, {r['device']}, {r['torch_threads']} threads, {r['precision']})")
    if a.recon:
        print(f"  reconstructions: {recon_grid(model, Path(a.data), Path(a.recon), split=a.split)}")
    if a.json:
        merge_json(Path(a.json), ".", r) if a.merge else write_json(Path(a.json), r)
        print(f"wrote {a.json}")


def cmd_eval_vae(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import VAE_KIND, load_tokenizer
    from gaia_gym.evaluation.vae import evaluate_vae

    r = evaluate_vae(load_tokenizer(a.model, kind=VAE_KIND), Path(a.data), split=a.split, max_clips=a.max_clips,
                     bf16=not a.no_bf16, progress=not a.quiet)
    r.update(model=str(a.model), data=str(a.data))
    for k, v in r.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    if a.json:
        merge_json(Path(a.json), a.key or ".", r) if a.merge or a.key else write_json(Path(a.json), r)
        print(f"wrote {a.json}")


def cmd_eval_world_model(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import DEFAULT_WORLD_MODEL, load_bundle
    from gaia_gym.models.probe import load_probe
    from gaia_gym.evaluation.world_model import evaluate_world_model

    bundle = load_bundle(a.model, tokenizer=a.tokenizer)  # the tokenizer's sha256 is checked here
    wm, tok = bundle.world_model, bundle.tokenizer
    if a.int8:  # every figure from the int8 model: teacher forcing, rollouts, counterfactuals
        from gaia_gym.precision import int8_linears

        wm = int8_linears(wm)
    tok_path = a.tokenizer or "(the model directory's)"
    probe = load_probe(a.probe) if a.probe else None
    opts = {}
    if (a.sampling_steps is not None or a.plain_flow or a.steps_sweep) and bundle.kind != "flow_world_model":
        raise ConfigError("--sampling-steps / --plain-flow / --steps-sweep apply to a flow world model only")
    if a.sampling_steps is not None or a.plain_flow:
        opts = {"steps": a.sampling_steps or wm.cfg.sampling_steps, "plain": True if a.plain_flow else None}
    r = evaluate_world_model(wm, tok, Path(a.data), split=a.split, max_clips=a.max_clips, probe=probe, codec=bundle.codec,
                             sample_temperature=a.temperature, progress=not a.quiet,
                             real_sim_seconds=a.real_seconds, throughput_seconds=a.throughput_seconds, grid_path=a.grid,
                             backend_options=opts, per_episode=a.per_episode)
    if a.steps_sweep:
        from gaia_gym.evaluation.world_model import sampling_steps_sweep

        r["quality_by_sampling_steps"] = sampling_steps_sweep(wm, tok, Path(a.data), a.steps_sweep, split=a.split,
                                                              max_clips=a.max_clips, progress=not a.quiet,
                                                              codec=bundle.codec, sample_temperature=a.temperature)
    r.update(model=str(a.model or DEFAULT_WORLD_MODEL), tokenizer=str(tok_path), data=str(a.data), int8=bool(a.int8))
    keys = ("val_cross_entropy", "token_accuracy", "val_flow_loss", "flicker", "quality_by_sampling_steps",
            "psnr_by_horizon", "copy_last_psnr_by_horizon",
            "tokenizer_ceiling_psnr", "reward_mae_teacher_forced", "termination_auc",
            "counterfactual_steering_accuracy", "counterfactual_steering_paired_accuracy", "readback_real_accuracy",
            "counterfactual_steering_accuracy_probe", "counterfactual_speed_accuracy", "imagined_frames_per_s_b64",
            "imagined_vs_real_driving_ratio")
    for k in keys:
        if k in r:
            v = r[k]
            print(f"  {k}: " + (json.dumps(_rounded(v)) if isinstance(v, dict)
                               else f"{v:.4g}" if isinstance(v, float) else str(v)))
    if a.gif:
        from gaia_gym.evaluation.pictures import write_rollout_gif

        print(f"  rollouts: {write_rollout_gif(wm, tok, Path(a.data), Path(a.gif), split=a.split, clip=a.gif_clip)}")
    if a.json:
        merge_json(Path(a.json), ".", r) if a.merge else write_json(Path(a.json), r)
        print(f"wrote {a.json}")


def _rounded(v):
    return {h: _rounded(x) for h, x in v.items()} if isinstance(v, dict) else round(v, 2) if isinstance(v, float) else v


def cmd_eval_multiview(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import load_bundle
    from gaia_gym.evaluation.multiview import evaluate_multiview, rig_cost
    from gaia_gym.evaluation.throughput import cpu_name

    bundle = load_bundle(a.model, device=a.device)
    single = load_bundle(a.single, device=a.device) if a.single else None
    cmd = "gaia-gym eval " + " ".join(a.argv_tail)
    r = {"model": str(a.model), "data": str(a.data), "cpu": cpu_name()}
    if a.max_clips:
        r.update(command=cmd, single_camera_model=a.single)
        r.update(evaluate_multiview(bundle, Path(a.data), single, split=a.split, max_clips=a.max_clips,
                                    seed=a.seed, progress=not a.quiet))
        c = r["cross_view_consistency"]
        for k in ("real_rig", "reconstructed_rig", "joint", "isolated", "independent"):
            if k in c:
                print(f"  cross-view consistency (dB), {k}: {json.dumps(c[k])}")
        for n, v in r["per_view_psnr"].items():
            print(f"  PSNR {n}: joint {json.dumps(v['joint'])}  copy-last {json.dumps(v['copy_last'])}")
        for n, v in r["counterfactual_steering"]["per_view"].items():
            print(f"  steering read back, {n}: {json.dumps(v)}")
    if a.picture:
        from gaia_gym.evaluation.multiview import rig_picture

        print("  wrote " + " and ".join(rig_picture(bundle, Path(a.data), a.picture, single, split=a.split, clip=a.clip)))
    if a.cost:
        key = "cost_int8" if a.int8 else "cost"  # both can live in one results file
        r[key] = rig_cost(bundle, view_counts=tuple(a.views), seconds=a.cost_seconds, real_seconds=a.real_seconds,
                          int8=a.int8)
        r[key]["command"] = cmd
        for k, v in r[key]["per_views"].items():
            print(f"  {k} view(s): tokens {v['tokens_vs_real']}x, frames {v['frames_vs_real']}x the real rig "
                  f"({v['real_rig_steps_per_s']} real steps/s)")
    if a.json:
        merge_json(Path(a.json), ".", r)
        print(f"wrote {a.json}")


def cmd_eval_highway(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL, load_bundle
    from gaia_gym.evaluation.highway import evaluate_highway, highway_picture
    from gaia_gym.evaluation.throughput import cpu_name

    r = {"model": str(a.model or "shipped"), "data": str(a.data), "cpu": cpu_name(),
         "command": "gaia-gym eval " + " ".join(a.argv_tail)}
    if a.compare:
        import tempfile

        from gaia_gym.train.conditioning import compare_conditioning

        models = dict(kv.split("=", 1) if "=" in kv else (Path(kv).name, kv) for kv in a.compare.split(","))
        with tempfile.TemporaryDirectory() as tmp:
            cmp = compare_conditioning(models, Path(a.data), Path(tmp), seed=a.seed)
        for k, v in cmp.items():
            print(f"  {k}: {json.dumps(v)[:600]}")
        if a.json:
            key = a.key or "conditioning_comparison"
            merge_json(Path(a.json), key, {"cpu": cpu_name(), "command": r["command"], **cmp})
            print(f"wrote {a.json} under {key}")
        return
    bundle = load_bundle(a.model or HIGHWAY_WORLD_MODEL, device=a.device)
    if bundle.conditions is None:
        raise ConfigError(f"{bundle.path} takes no scene conditions (train it on a highway-env dataset)")
    if not a.picture_only:
        r.update(evaluate_highway(bundle, Path(a.data), seed=a.seed, progress=not a.quiet, quick=a.quick))
        for k in ("agent_placement", "metadata_adherence", "text_adherence", "negative_prompt_effect", "fidelity"):
            print(f"  {k}: {json.dumps(r[k])[:400]}")
    if a.picture:
        print("  wrote " + " and ".join(highway_picture(bundle, Path(a.data), a.picture, clip=a.clip, seed=a.seed)))
    if a.json and not a.picture_only:
        key = a.key or "."
        merge_json(Path(a.json), key, r)
        print(f"wrote {a.json}" + (f" under {key}" if key != "." else ""))


def _add_codec_eval_args(p: argparse.ArgumentParser) -> None:
    """The arguments `eval tokenizer` and `eval vae` share."""
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="val: held-out tracks; all: a directory nobody trained on (e.g. an imported drive)")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--merge", action="store_true", help="merge into an existing --json file")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _add_run_args(p: argparse.ArgumentParser, example_json: str) -> None:
    """--device, --seed, --json and --quiet, as the scene and rig evaluations take them."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help=f"merge the record into this JSON file (e.g. {example_json})")
    p.add_argument("--quiet", action="store_true")


def add_parsers(sub) -> None:
    """`eval tokenizer|vae|world-model|highway|multiview`."""
    e = sub.add_parser("eval", help="evaluate a stage on held-out data; --json writes the metrics")
    esub = e.add_subparsers(dest="stage", metavar="STAGE", required=True)
    et = esub.add_parser("tokenizer", help="PSNR, SSIM, code usage, compression, encode/decode speed")
    et.add_argument("--model", help="tokenizer model directory (default: the shipped tokenizer)")
    et.add_argument("--max-frames", type=int, help="evaluate at most this many frames")
    et.add_argument("--recon", help="also write a PNG of real frames over their reconstructions")
    _add_codec_eval_args(et)
    et.set_defaults(fn=cmd_eval_tokenizer)
    ev = esub.add_parser("vae", help="continuous tokenizer: PSNR/SSIM per frame and windowed, flicker, speed")
    ev.add_argument("--model", required=True, help="VAE model directory (gaia-gym train vae)")
    ev.add_argument("--max-clips", type=int, default=64, help="clips of 16 frames, spread over the split")
    ev.add_argument("--key", help="merge the record under this key of --json (dotted to nest)")
    _add_codec_eval_args(ev)
    ev.set_defaults(fn=cmd_eval_vae)
    ew = esub.add_parser("world-model", help="cross-entropy, rollout PSNR vs baselines, reward/termination, "
                         "counterfactual adherence, imagination speed vs the real simulator")
    ew.add_argument("--data", required=True, help="dataset directory")
    ew.add_argument("--model", help="world model directory (default: the shipped one)")
    ew.add_argument("--tokenizer", help="tokenizer directory (default: the one the world model was trained with)")
    ew.add_argument("--probe", help="probe directory for counterfactual read-back (gaia-gym train probe)")
    ew.add_argument("--split", default="val", choices=["val", "train", "all"])
    ew.add_argument("--max-clips", type=int, default=128)
    ew.add_argument("--temperature", type=float, default=0.0, help="0: greedy rollouts")
    ew.add_argument("--real-seconds", type=float, default=15.0, help="seconds to measure the real simulator (0: skip)")
    ew.add_argument("--throughput-seconds", type=float, default=4.0,
                    help="seconds to time imagination at batch 64, as `bench` does (0: skip)")
    ew.add_argument("--grid", help="write the counterfactual picture grid here (PNG)")
    ew.add_argument("--gif", help="write a GIF: one real context, 4 sampled futures, left/straight/right")
    ew.add_argument("--gif-clip", type=int, default=0, help="which validation clip the GIF starts from")
    ew.add_argument("--sampling-steps", type=int, help="flow model: sampling steps per imagined frame (default: the "
                    "model's)")
    ew.add_argument("--plain-flow", action="store_true", help="flow model: integrate with the flow-matching step "
                    "embedding instead of the shortcut's")
    ew.add_argument("--steps-sweep", type=int, nargs="+", metavar="K",
                    help="flow model: also measure open-loop PSNR at these sampling steps (shortcut and plain flow)")
    ew.add_argument("--json", help="write the metrics here")
    ew.add_argument("--merge", action="store_true")
    ew.add_argument("--quiet", action="store_true")
    ew.add_argument("--int8", action="store_true", help="evaluate the model with its Linear layers in int8 (CPU)")
    ew.add_argument("--per-episode", action="store_true", help="every clip of the split (--max-clips ignored), "
                    "and open-loop PSNR per episode (per imported drive) too")
    ew.set_defaults(fn=cmd_eval_world_model)

    eh = esub.add_parser("highway", help="a conditioned highway-env model: agent placement, metadata / text adherence, "
                         "negative prompts, PSNR by horizon, collision AUC",
                         description="Evaluate a conditioned highway-env world model on a dataset's validation split.")
    eh.add_argument("--model", help="highway world-model directory (default: the shipped one)")
    eh.add_argument("--data", required=True, help="highway-env dataset (gaia-gym collect highway)")
    eh.add_argument("--picture", help="write one held-out context under several conditions as a PNG grid here")
    eh.add_argument("--picture-only", action="store_true", help="only the picture")
    eh.add_argument("--clip", type=int, default=0, help="which validation episode the picture starts from")
    eh.add_argument("--quick", action="store_true", help="a few scenes per measurement (smoke runs)")
    eh.add_argument("--compare", help="comma-separated name=DIR conditioned models to compare side by side (validation "
                    "cross-entropy with / without conditions, agent placement, cost); only this")
    eh.add_argument("--key", help="merge under this key of the JSON file (default: its top level; with --compare, "
                    "conditioning_comparison)")
    _add_run_args(eh, "results/highway.json")
    eh.set_defaults(fn=cmd_eval_highway)

    em = esub.add_parser("multiview", help="camera rig: cross-view consistency, per-view PSNR, steering read back "
                         "in every view, cost per number of views",
                         description="Evaluate a camera-rig world model on a rig dataset's held-out tracks.")
    em.add_argument("--model", required=True, help="rig world-model directory (gaia-gym train world-model --cameras)")
    em.add_argument("--data", required=True, help="rig dataset (gaia-gym collect carracing --cameras ...)")
    em.add_argument("--single", help="a single-camera world model to imagine each view independently (e.g. "
                    "gaia_gym/assets/world_model_fast); decoded by the rig model's tokenizer")
    em.add_argument("--split", default="val", choices=["val", "train", "all"])
    em.add_argument("--max-clips", type=int, default=64, help="clips spread over the split (0: skip the quality part)")
    em.add_argument("--picture", help="write the real rig beside the imagined rig(s) for one held-out clip: a GIF "
                    "here and a PNG contact sheet beside it")
    em.add_argument("--clip", type=int, default=0, help="which held-out clip the picture shows")
    em.add_argument("--cost", action="store_true", help="also time imagination per number of views vs the real rig")
    em.add_argument("--views", type=int, nargs="+", default=[1, 2, 4], help="rig sizes to time (the first k cameras)")
    em.add_argument("--cost-seconds", type=float, default=4.0)
    em.add_argument("--real-seconds", type=float, default=10.0)
    em.add_argument("--int8", action="store_true", help="time the world model with int8 Linear layers (recorded "
                    "under cost_int8)")
    _add_run_args(em, "results/multiview.json")
    em.set_defaults(fn=cmd_eval_multiview)
