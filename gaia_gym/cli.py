"""`gaia-gym`: the command-line entry point. Each verb is a thin shell over a library function.

Run `gaia-gym --help`, or `gaia-gym VERB --help` for any verb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gaia_gym.errors import ConfigError, GaiaGymError
from gaia_gym.fileio import merge_json, write_json


class CLIError(GaiaGymError):
    """A user-facing error of the command line itself: printed as one line, exit code 2."""


def _add_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", choices=["default", "tiny"],
                   help="configuration preset (tiny: a few short episodes, for smoke tests)")


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------
def cmd_collect_carracing(a: argparse.Namespace) -> None:
    from gaia_gym.config import CarRacingCollectConfig, preset
    from gaia_gym.sims.carracing_collect import collect_carracing
    from gaia_gym.sims.rig import split_names

    cfg = preset(CarRacingCollectConfig, a.preset, episodes=a.episodes, seed=a.seed, workers=a.workers,
                 frame_size=a.frame_size, frame_skip=a.frame_skip, max_steps=a.max_steps,
                 cameras=split_names(a.cameras) if a.cameras else None)
    m = collect_carracing(cfg, Path(a.out), progress=not a.quiet)
    print(f"{a.out}: {m['num_episodes']} episodes, {m['num_steps']} steps "
          f"(train {sum(e['steps'] for e in m['episodes'] if e['split'] == 'train')}, "
          f"val {sum(e['steps'] for e in m['episodes'] if e['split'] == 'val')})")


def cmd_collect_highway(a: argparse.Namespace) -> None:
    from gaia_gym.config import HighwayCollectConfig, preset
    from gaia_gym.sims.highway import collect_highway

    scen = tuple(a.scenarios.split(",")) if a.scenarios else None
    cfg = preset(HighwayCollectConfig, a.preset, episodes=a.episodes, seed=a.seed, workers=a.workers,
                 frame_size=a.frame_size, max_steps=a.max_steps, scenarios=scen,
                 scenario_order=a.scenario_order)
    m = collect_highway(cfg, Path(a.out), progress=not a.quiet)
    print(f"{a.out}: {m['num_episodes']} episodes, {m['num_steps']} steps")


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------
def cmd_import(a: argparse.Namespace) -> None:
    from gaia_gym.data.importer import import_drive

    m = import_drive(
        a.video, a.log, Path(a.out), like=a.like, fps=a.fps, frame_size=a.frame_size,
        time_col=a.time_col, speed_col=a.speed_col, steering_col=a.steering_col,
        speed_scale=a.speed_scale, steering_scale=a.steering_scale, video_fps=a.video_fps,
        trim_start_s=a.trim_start, split=a.split, progress=not a.quiet, allow_duplicate=a.allow_duplicate,
    )
    e = m["episodes"][-1]
    print(f"{a.out}: imported {e['steps']} steps from {a.video} as {e['file']} "
          f"({m['num_episodes']} episodes in the dataset)")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def cmd_data_stats(a: argparse.Namespace) -> None:
    from gaia_gym.data.stats import dataset_stats, format_stats

    s = dataset_stats(Path(a.dir), sheet=Path(a.sheet) if a.sheet else None, json_path=a.json)
    print(format_stats(s))


def cmd_data_verify(a: argparse.Namespace) -> None:
    from gaia_gym.data.stats import verify_dataset

    n = verify_dataset(Path(a.dir), progress=not a.quiet)
    print(f"{a.dir}: {n} shards read back intact")


def cmd_data_scripted(a: argparse.Namespace) -> None:
    from gaia_gym.sims.carracing_collect import evaluate_scripted_driver

    r = evaluate_scripted_driver(seeds=range(a.seed, a.seed + a.episodes), workers=a.workers,
                                 frame_skip=a.frame_skip, progress=not a.quiet)
    print(f"scripted driver on {len(r['returns'])} tracks (seeds {a.seed}..{a.seed + a.episodes - 1}): "
          f"mean return {r['mean']:.1f} +- {r['std']:.1f}, laps finished {r['laps_finished']}")
    if a.json:
        merge_json(Path(a.json), ".", {"scripted_driver_return_mean": r["mean"], "scripted_driver": r})
        print(f"wrote {a.json}")


def cmd_bench_collect(a: argparse.Namespace) -> None:
    from gaia_gym.sims.carracing_collect import bench_collection

    r = bench_collection(seconds=a.seconds, workers=a.workers, frame_skip=a.frame_skip)
    print(json.dumps(r, indent=1))
    if a.json:
        merge_json(Path(a.json), ".", {"collect_vs_raw_speed_ratio": r["collect_vs_raw_speed_ratio"],
                                   "collect_bench": r})
        print(f"wrote {a.json}")


# ---------------------------------------------------------------------------------------------
# train / eval
# ---------------------------------------------------------------------------------------------
def _train_config(a: argparse.Namespace, **defaults):
    from gaia_gym.train.loop import TrainConfig

    kw = dict(defaults)
    for k in ("steps", "batch_size", "lr", "seed"):
        if getattr(a, k, None) is not None:
            kw[k] = getattr(a, k)
    if a.minutes is not None:
        kw["max_minutes"] = a.minutes
    if a.preset == "tiny":
        kw.update(steps=min(kw.get("steps", 20), 20) if a.steps is None else a.steps, batch_size=8,
                  warmup_steps=2, log_every=5, image_every=10)
    if a.no_bf16:
        kw["bf16"] = False
    return TrainConfig(**kw)


def cmd_train_tokenizer(a: argparse.Namespace) -> None:
    from gaia_gym.train.tokenizer import train_tokenizer

    tc = _train_config(a, steps=6000, batch_size=64, lr=1e-3, warmup_steps=200, channels_last=True,
                       checkpoint_minutes=5, log_every=25, image_every=500)
    r = train_tokenizer(Path(a.data), Path(a.out), preset=a.preset, train_cfg=tc, progress=not a.quiet,
                        init=Path(a.init) if getattr(a, "init", None) else None)
    _print_codec_run(a.out, "tokenizer", r)


def _print_codec_run(out, what: str, r: dict) -> None:
    print(f"{out}: {what} trained to step {r['step']} ({r['minutes']:.1f} min in total, stopped by "
          f"{r.get('stopped', 'steps')}); last metrics: "
          + ", ".join(f"{k}={v:.4g}" for k, v in (r.get("metrics") or {}).items() if k in ("psnr", "l1", "l2")))


def cmd_train_decoder(a: argparse.Namespace) -> None:
    from gaia_gym.train.tokenizer import train_decoder

    tc = _train_config(a, steps=4000, batch_size=64, lr=1e-3, warmup_steps=100, channels_last=True,
                       checkpoint_minutes=5, log_every=25, image_every=500)
    r = train_decoder(Path(a.data), Path(a.tokenizer) if a.tokenizer else None, Path(a.out), a.channels, train_cfg=tc,
                      progress=not a.quiet, views=a.views)
    _print_codec_run(a.out, "decoder", r)


def cmd_train_vae(a: argparse.Namespace) -> None:
    from gaia_gym.train.vae import train_vae

    tc = _train_config(a, steps=8000, batch_size=32, lr=1e-3, warmup_steps=200, channels_last=True,
                       checkpoint_minutes=5, log_every=25, image_every=500)
    r = train_vae(Path(a.data), Path(a.out), preset=a.preset, train_cfg=tc, progress=not a.quiet)
    m = r.get("metrics") or {}
    print(f"{a.out}: VAE trained to step {r['step']} ({r['minutes']:.1f} min in total, stopped by "
          f"{r.get('stopped', 'steps')}); last metrics: "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("psnr", "l1", "kl", "latent_std") if k in m))


def cmd_train_world_model(a: argparse.Namespace) -> None:
    from gaia_gym.train.world_model import train_world_model
    from gaia_gym.sims.rig import split_names

    tc = _train_config(a, steps=4000, batch_size=16, lr=6e-4, warmup_steps=200, checkpoint_minutes=5,
                       log_every=25, image_every=0)
    overrides = {"decoding": a.decoding} if a.decoding else {}
    if a.patch:
        overrides["patch"] = a.patch
    if a.embedding:
        overrides["embedding"] = a.embedding
    if a.view_dropout is not None:
        overrides["view_dropout"] = a.view_dropout
    if a.context:
        overrides["context"] = a.context
    cams = split_names(a.cameras) if a.cameras else ()
    r = train_world_model(Path(a.data), Path(a.tokenizer), Path(a.out), preset=a.preset, train_cfg=tc,
                          progress=not a.quiet, head=a.head, cameras=cams, init=Path(a.init) if a.init else None,
                          conditions=a.conditions, text_encoder=Path(a.text_encoder) if a.text_encoder else None,
                          agent_map=not a.no_agent_map,
                          **overrides)
    m = r.get("metrics") or {}
    print(f"{a.out}: world model trained to step {r['step']} ({r['minutes']:.1f} min in total); "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("ce", "token_acc", "reward_mae") if k in m))


def cmd_train_text_encoder(a: argparse.Namespace) -> None:
    from gaia_gym.train.text import train_text_encoder

    m = train_text_encoder(Path(a.data), Path(a.out), steps=a.steps, seed=a.seed, progress=not a.quiet)
    acc = {k: v["said_accuracy"] for k, v in m["val"].items()}
    held = {k: v["said_accuracy"] for k, v in m["val_held_out_phrasings"].items()}
    print(f"{a.out}: text encoder trained ({m['steps']} steps, {m['minutes']:.1f} min); validation accuracy of "
          "the facts said: " + ", ".join(f"{k}={v:.3f}" for k, v in acc.items())
          + "; in phrasings held out of training: " + ", ".join(f"{k}={v:.3f}" for k, v in held.items()))


def cmd_train_flow_world_model(a: argparse.Namespace) -> None:
    from gaia_gym.train.flow import train_flow_world_model

    tc = _train_config(a, steps=3000, batch_size=16, lr=5e-4, warmup_steps=100, checkpoint_minutes=5,
                       log_every=25, image_every=0)
    overrides = {k: v for k, v in (("shortcut_fraction", a.shortcut_fraction), ("sampling_steps", a.sampling_steps))
                 if v is not None}
    r = train_flow_world_model(Path(a.data), Path(a.vae), Path(a.out), preset=a.preset, train_cfg=tc,
                               progress=not a.quiet, **overrides)
    m = r.get("metrics") or {}
    print(f"{a.out}: flow world model trained to step {r['step']} ({r['minutes']:.1f} min in total); "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("flow_loss", "shortcut_loss", "reward_mae") if k in m))


def cmd_train_probe(a: argparse.Namespace) -> None:
    from gaia_gym.train.probe import train_probe
    from gaia_gym.bundle import load_tokenizer

    tok = load_tokenizer(a.tokenizer) if a.tokenizer else None
    r = train_probe(Path(a.data), Path(a.out), minutes=a.minutes, steps=a.steps, tokenizer=tok, progress=not a.quiet)
    v = r.get("val") or {}
    print(f"{a.out}: probe trained to step {r['step']}; validation: " + json.dumps(v)[:400])


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
                             backend_options=opts)
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


def _add_train_args(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--data", required=True, help="dataset directory (its train split is used)")
    p.add_argument("--out", required=True, help="run / model directory (rerun the same command to resume)")
    p.add_argument("--preset", default="default", choices=presets, help="model preset (tiny: smoke test)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--minutes", type=float, help="total wall-clock budget in minutes (across resumes)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (default: bf16 autocast where the hardware runs it fast: CUDA, AMX or AVX-512 BF16 CPUs)")
    p.add_argument("--quiet", action="store_true")


def _add_codec_eval_args(p: argparse.ArgumentParser) -> None:
    """The arguments `eval tokenizer` and `eval vae` share."""
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="val: held-out tracks; all: a directory nobody trained on (e.g. an imported drive)")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--merge", action="store_true", help="merge into an existing --json file")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--quiet", action="store_true")


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gaia-gym",
        description="gaia_gym: a GAIA-style driving world model for reinforcement learning.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    # collect
    c = sub.add_parser("collect", help="record real driving from a simulator into a dataset directory",
                       description="Record real driving into DIR. Resumable: rerun the same command (only --episodes and --workers may change; other settings are refused).")
    csub = c.add_subparsers(dest="sim", metavar="SIM", required=True)
    cr = csub.add_parser("carracing", help="CarRacing-v3 with the scripted driver + behaviour mix",
                         description="Record CarRacing-v3 driven by a privileged pure-pursuit driver, "
                         "perturbed by noise, excursions, hard braking and random segments.")
    cr.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    _add_preset(cr)
    cr.add_argument("--episodes", type=int, help="number of episodes (tracks); default 840 (<= 200k steps)")
    cr.add_argument("--seed", type=int, help="track seed of episode 0 (episode i uses seed+i)")
    cr.add_argument("--workers", type=int, help="collector processes (default 2)")
    cr.add_argument("--frame-size", type=int, help="dataset frame side in pixels (default 64)")
    cr.add_argument("--frame-skip", type=int, help="simulator frames per recorded step (default 4)")
    cr.add_argument("--max-steps", type=int, help="cap on recorded steps per episode (0: none)")
    cr.add_argument("--cameras", help="a camera rig, comma-separated from front,left,rear,right (front first), "
                    "e.g. front,left,rear,right: every shard gains `views` (T, V, S, S, 3); default: front only")
    cr.add_argument("--quiet", action="store_true", help="no progress bar")
    cr.set_defaults(fn=cmd_collect_carracing)

    hw = csub.add_parser("highway", help="highway-env scenarios (highway-fast, merge, roundabout, intersection)",
                         description="Record highway-env driving with continuous actions.")
    hw.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    _add_preset(hw)
    hw.add_argument("--episodes", type=int, help="number of episodes, round-robin over scenarios")
    hw.add_argument("--scenarios", help="comma-separated env ids (default highway-fast-v0,merge-v0,roundabout-v0,intersection-v0)")
    hw.add_argument("--seed", type=int)
    hw.add_argument("--workers", type=int)
    hw.add_argument("--frame-size", type=int)
    hw.add_argument("--max-steps", type=int, help="recorded steps per episode")
    hw.add_argument("--scenario-order", choices=["interleaved", "round_robin"],
                    help="interleaved (default: every scenario in both splits) or round_robin (the shipped highway "
                         "model's dataset: its validation split holds merge and intersection only)")
    hw.add_argument("--quiet", action="store_true")
    hw.set_defaults(fn=cmd_collect_highway)

    # import
    im = sub.add_parser("import", help="turn a logged drive (video + CSV log) into a dataset episode",
                        description="Import VIDEO with its CSV log (time_s, speed_mps, steering by default) "
                        "into the dataset at --out (appends one episode).")
    im.add_argument("video", help="video file readable by OpenCV (mp4, avi, ...)")
    im.add_argument("--log", required=True, help="CSV log with a time column, speed and steering")
    im.add_argument("--out", required=True, help="dataset directory (created or appended to)")
    im.add_argument("--like", choices=["carracing"], help="apply a collector's frame conventions exactly")
    im.add_argument("--fps", type=float, help="dataset frame rate (default 12.5, or the --like source's)")
    im.add_argument("--frame-size", type=int, default=64)
    im.add_argument("--time-col", default="time_s")
    im.add_argument("--speed-col", default="speed_mps")
    im.add_argument("--steering-col", default="steering")
    im.add_argument("--speed-scale", type=float, default=1.0, help="multiply speed by this to get m/s")
    im.add_argument("--steering-scale", type=float, default=1.0,
                    help="multiply steering by this to get [-1, 1] (e.g. 1/540 for degrees of a 540-deg wheel)")
    im.add_argument("--video-fps", type=float, help="override the video's frame rate")
    im.add_argument("--trim-start", type=float, default=0.0, help="seconds to drop from the start")
    im.add_argument("--split", default="train", choices=["train", "val"])
    im.add_argument("--allow-duplicate", action="store_true",
                    help="import a drive already in the dataset (same video, log and options) again")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(fn=cmd_import)

    # data
    d = sub.add_parser("data", help="inspect and check datasets")
    dsub = d.add_subparsers(dest="what", metavar="WHAT", required=True)
    st = dsub.add_parser("stats", help="counts, action/speed distributions and a contact sheet PNG")
    st.add_argument("dir", help="dataset directory")
    st.add_argument("--sheet", help="contact sheet path (default DIR/contact_sheet.png)")
    st.add_argument("--json", help="also write the statistics as JSON here")
    st.set_defaults(fn=cmd_data_stats)
    ve = dsub.add_parser("verify", help="read back every shard and report the first corrupt one")
    ve.add_argument("dir")
    ve.add_argument("--quiet", action="store_true")
    ve.set_defaults(fn=cmd_data_verify)
    sc = dsub.add_parser("scripted", help="score the clean scripted driver in the real CarRacing-v3")
    sc.add_argument("--episodes", type=int, default=10)
    sc.add_argument("--seed", type=int, default=1_000_000,
                    help="first track seed (default 1000000: outside every collected range)")
    sc.add_argument("--workers", type=int, default=2)
    sc.add_argument("--frame-skip", type=int, default=4)
    sc.add_argument("--json", help="merge the result into this JSON file (e.g. results/data.json)")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(fn=cmd_data_scripted)
    bc = dsub.add_parser("bench", help="collection speed vs the raw simulator, measured in one run")
    bc.add_argument("--seconds", type=float, default=60.0, help="seconds for each of the two measurements")
    bc.add_argument("--workers", type=int, default=2, help="processes for each measurement")
    bc.add_argument("--frame-skip", type=int, default=4)
    bc.add_argument("--json", help="merge the result into this JSON file (e.g. results/data.json)")
    bc.set_defaults(fn=cmd_bench_collect)
    # train / eval
    from gaia_gym.models.tokenizer import TOKENIZER_PRESETS

    t = sub.add_parser("train", help="train a stage (TensorBoard logs in RUN/tb; rerun to resume)",
                       description="Train a stage. Multi-process: torchrun --nproc_per_node N -m gaia_gym.cli train ...")
    tsub = t.add_subparsers(dest="stage", metavar="STAGE", required=True)
    tt = tsub.add_parser("tokenizer", help="frames <-> tokens (GAIA-1 image tokenizer)")
    _add_train_args(tt, list(TOKENIZER_PRESETS))
    tt.add_argument("--init", help="a tokenizer directory of the same architecture to start from (e.g. a run with "
                    "another loss); ignored when OUT already holds a checkpoint")
    tt.set_defaults(fn=cmd_train_tokenizer)

    td = tsub.add_parser("decoder", help="a new (e.g. narrower, faster) decoder for a trained tokenizer",
                         description="Train a new decoder for a tokenizer: its encoder and codes are kept (frozen), "
                                     "so the result reads the tokens of every world model trained on it.")
    _add_train_args(td, ["default"])
    td.add_argument("--tokenizer", help="the tokenizer whose codes to decode (default: the shipped one)")
    td.add_argument("--channels", type=int, nargs="+", required=True,
                    help="decoder widths per resolution, token grid upwards (the shipped decoder: 128 64 32)")
    td.add_argument("--views", action="store_true", help="train on every camera of a rig dataset (its `views`), "
                    "e.g. to fine-tune a decoder for a rig model (widths equal to the tokenizer's: its decoder is the start)")
    td.set_defaults(fn=cmd_train_decoder)

    from gaia_gym.models.vae import VAE_PRESETS

    tv = tsub.add_parser("vae", help="frames <-> continuous latents (GAIA-2 video tokenizer)")
    _add_train_args(tv, list(VAE_PRESETS))
    tv.set_defaults(fn=cmd_train_vae)

    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS

    tw = tsub.add_parser("world-model", help="transformer over image + action tokens (GAIA-1 world model)")
    _add_train_args(tw, list(WORLD_MODEL_PRESETS))
    tw.add_argument("--tokenizer", required=True, help="trained tokenizer model directory")
    tw.add_argument("--decoding", choices=["parallel", "autoregressive"],
                    help="next-frame decoding scheme (default: parallel, one pass per frame)")
    tw.add_argument("--patch", type=int, choices=[1, 2, 4, 8],
                    help="image tokens grouped per transformer position (default 2: 16 positions for 8x8 tokens; "
                         "4: 4 positions, ~3x fewer tokens per step)")
    tw.add_argument("--embedding", choices=["codes", "digits"],
                    help="image input embedding: one vector per code (default) or the sum of one per FSQ digit "
                         "(far fewer parameters at --patch 4)")
    tw.add_argument("--head", choices=["digits", "codes"], default="digits",
                    help="image head: one small softmax per FSQ digit (default; cheaper to sample) or one "
                         "softmax over all codes")
    tw.add_argument("--cameras", help="a rig dataset's cameras to imagine jointly, comma-separated (e.g. "
                    "front,left,rear,right); default: the single front camera")
    tw.add_argument("--view-dropout", type=float,
                    help="share of training clips in which a random subset of the rig's views is hidden (default 0)")
    tw.add_argument("--init", help="world-model directory to start from (tensors of matching name and shape, e.g. "
                    "a single-camera model for a rig model); ignored when OUT already holds a checkpoint")
    tw.add_argument("--context", type=int, help="frames per training clip / attention window (default 16)")
    tw.add_argument("--conditions", choices=["cross", "adaln", "none"], default="cross",
                    help="a highway-env dataset's scene conditions (metadata, agent boxes, text) enter by "
                         "cross-attention (default), adaLN, or not at all")
    tw.add_argument("--text-encoder", help="text encoder directory (gaia-gym train text-encoder) for the text "
                    "condition; default: no text condition")
    tw.add_argument("--no-agent-map", action="store_true",
                    help="agent boxes enter as a set only (cross-attention / adaLN), not also drawn into the token "
                         "grid where they appear (the agent map, default on)")
    tw.set_defaults(fn=cmd_train_world_model)

    tt = tsub.add_parser("text-encoder", help="the default text encoder, trained on descriptions of a highway-env "
                         "dataset's clips", description="Train the small default text encoder: it learns to read "
                         "the facts of a recorded highway-env clip back from random descriptions of it.")
    tt.add_argument("--data", required=True, help="highway-env dataset directory (gaia-gym collect highway)")
    tt.add_argument("--out", required=True, help="text encoder model directory")
    tt.add_argument("--steps", type=int, default=1500)
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--quiet", action="store_true")
    tt.set_defaults(fn=cmd_train_text_encoder)

    from gaia_gym.models.flow import FLOW_PRESETS

    tf = tsub.add_parser("flow-world-model", help="flow-matching space-time transformer over VAE latents "
                         "(GAIA-2 world model)")
    _add_train_args(tf, list(FLOW_PRESETS))
    tf.add_argument("--vae", required=True, help="trained VAE model directory (gaia-gym train vae)")
    tf.add_argument("--shortcut-fraction", type=float,
                    help="share of each batch trained with the shortcut (few-step) target (default 0.25; 0: plain "
                         "flow matching)")
    tf.add_argument("--sampling-steps", type=int, help="default sampling steps per imagined frame (default 2)")
    tf.set_defaults(fn=cmd_train_flow_world_model)

    tp = tsub.add_parser("probe", help="inverse-dynamics probe on real frames (reads steering/speed back)")
    tp.add_argument("--data", required=True, help="dataset directory (train split to train, val to score)")
    tp.add_argument("--out", required=True, help="probe model directory")
    tp.add_argument("--minutes", type=float, default=5.0, help="training budget")
    tp.add_argument("--steps", type=int, default=3000, help="optimizer steps (the budget may stop it first)")
    tp.add_argument("--tokenizer", help="also train on this tokenizer's reconstructions of real frames")
    tp.add_argument("--quiet", action="store_true")
    tp.set_defaults(fn=cmd_train_probe)

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
    ew.set_defaults(fn=cmd_eval_world_model)

    from gaia_gym.cli_world import add_eval_parsers, add_parsers

    add_eval_parsers(esub)

    add_parsers(sub)
    return p


def _version() -> str:
    from gaia_gym import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv_tail = argv[1:]
    try:
        args.fn(args)
    except (GaiaGymError, OSError) as e:  # every one-line error; OSError (missing file, disk full...) names its file
        print(f"gaia-gym: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gaia-gym: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
