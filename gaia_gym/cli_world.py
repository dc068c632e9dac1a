"""The `gaia-gym` verbs that use a trained world model: demo, imagine, bench, play, pretrain, export, and
`eval multiview` (the camera rig).

Each is a thin shell over a library function (`gaia_gym.verbs.imagine`, `.bench`, `.pretrain`,
`.play`); `gaia_gym.cli` adds them to the parser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_DEMO_OUT = "gaia_demo.gif"


def _bundle(a: argparse.Namespace):
    from gaia_gym.bundle import load_bundle

    return load_bundle(a.model, device=a.device)


def cmd_imagine(a: argparse.Namespace) -> None:
    from gaia_gym.verbs.imagine import imagine

    r = imagine(_bundle(a), a.out, prompt=a.prompt, n_futures=a.futures, steps=a.steps, temperature=a.temperature,
                seed=a.seed, counterfactual=not a.no_counterfactual, scale=a.scale, fps=a.fps, guidance=a.guidance,
                scene=scene_options(a), scratch=a.scratch, guide=a.guide)
    print(f"imagined {len(r['rows'])} futures of {r['steps']} steps ({', '.join(r['rows'])}) from real context clip "
          f"{r['prompt']} of the model's prompt bank in {r['seconds']:.1f} s")
    print(f"wrote {r['video']}" + (f" and {r['contact_sheet']}" if "contact_sheet" in r else ""))


def scene_options(a: argparse.Namespace) -> dict:
    """The scene conditions of `imagine`'s flags: --meta k=v (repeatable), --text, --negative, --agents FILE
    (a JSON list of vehicle rows [x, y, vx, vy, ...], or an object with "vehicles"), --agent-steps."""
    from gaia_gym.errors import ConfigError

    scene: dict = {}
    if a.meta:
        meta = {}
        for kv in a.meta:
            if "=" not in kv:
                raise ConfigError(f"--meta takes key=value (e.g. lanes=3), got {kv!r}")
            k, v = kv.split("=", 1)
            meta[k.strip()] = v.strip()
        scene["metadata"] = meta
    for k in ("text", "negative"):
        if getattr(a, k):
            scene[k] = getattr(a, k)
    if a.agents:
        try:
            d = json.loads(Path(a.agents).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--agents {a.agents}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--agents {a.agents}: not JSON ({e})") from None
        scene["vehicles"] = d.get("vehicles") if isinstance(d, dict) else d
        scene["agent_steps"] = a.agent_steps
    return scene


def cmd_bench(a: argparse.Namespace) -> None:
    from gaia_gym.fileio import write_json
    from gaia_gym.verbs.bench import run_bench, summary_line

    bundle = _bundle(a)
    if a.int8:
        bundle = bundle.with_backend(int8=True)
    r = run_bench(bundle, batch_sizes=tuple(a.batch_sizes), seconds=a.seconds, real_seconds=a.real_seconds,
                  progress=not a.quiet)
    r["command"] = "gaia-gym bench " + " ".join(a.argv_tail)
    print(summary_line(r))
    if a.json:
        write_json(Path(a.json), r)
        print(f"wrote {a.json}")
    else:
        print(json.dumps(r, indent=1))


def cmd_play(a: argparse.Namespace) -> None:
    from gaia_gym.verbs.play import play

    r = play(_bundle(a), keys=a.keys, steps=a.steps, out=a.out, seed=a.seed, prompt=a.prompt, scale=a.scale)
    print(f"drove {r['steps']} imagined steps, return {r['return']:.1f}" + (f"; wrote {r['out']}" if r.get("out") else ""))


def cmd_pretrain(a: argparse.Namespace) -> None:
    from gaia_gym.verbs.pretrain import pretrain

    r = pretrain(Path(a.work), export=Path(a.export) if a.export else None, preset=a.preset, progress=not a.quiet)
    print(json.dumps(r, indent=1))


def cmd_export(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import load_tokenizer, save_bundle
    from gaia_gym.checkpoint import read_model_info
    from gaia_gym.errors import ConfigError

    bundle = _bundle(a)
    if a.decoder:
        bundle = bundle.with_decoder(load_tokenizer(a.decoder, kind=None))
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; export writes a new model directory")
    meta = {**read_model_info(bundle.path).get("meta", {}), "exported_from": str(bundle.path)}
    if a.decoder:
        meta["decoder_from"] = str(a.decoder)
    save_bundle(bundle, out, meta=meta)
    print(f"wrote {out} (world model of {bundle.path}" + (f", decoder of {a.decoder}" if a.decoder else "") + ")")


def cmd_eval_multiview(a: argparse.Namespace) -> None:
    from gaia_gym.bundle import load_bundle
    from gaia_gym.evaluation.multiview import evaluate_multiview, rig_cost
    from gaia_gym.evaluation.throughput import cpu_name
    from gaia_gym.fileio import merge_json

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
    from gaia_gym.fileio import merge_json

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
        from gaia_gym.errors import ConfigError

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


def add_eval_parsers(esub) -> None:
    """`gaia-gym eval multiview` and `eval highway` (added to the `eval` verb by gaia_gym.cli)."""
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
    eh.add_argument("--device", default="cpu")
    eh.add_argument("--seed", type=int, default=0)
    eh.add_argument("--json", help="merge the record into this JSON file (e.g. results/highway.json)")
    eh.add_argument("--quiet", action="store_true")
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
    em.add_argument("--device", default="cpu")
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--json", help="merge the record into this JSON file (e.g. results/multiview.json)")
    em.add_argument("--quiet", action="store_true")
    em.set_defaults(fn=cmd_eval_multiview)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="world-model directory (default: the shipped model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub) -> None:
    for name, default_out, helptext in (
            ("demo", DEFAULT_DEMO_OUT, "the main job: several imagined futures and a left/straight/right "
                                       "counterfactual from a real context clip, as a GIF (shipped model)"),
            ("imagine", "imagined.gif", "multi-future / counterfactual rollouts to GIF or MP4, with options")):
        d = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        _model_args(d)
        d.add_argument("--out", default=default_out, help=f"output .gif or .mp4 (default {default_out}); a PNG "
                                                          "contact sheet of the counterfactuals is written beside it")
        d.add_argument("--prompt", type=int, default=0, help="which real context clip of the prompt bank")
        d.add_argument("--futures", type=int, default=4, help="futures sampled under the real actions")
        d.add_argument("--steps", type=int, default=16, help="imagined steps (0.08 s of driving each)")
        d.add_argument("--temperature", type=float, default=1.0)
        d.add_argument("--guidance", type=float, default=1.0,
                       help="classifier-free guidance scale (1 = off) on what --guide names (default: the action)")
        d.add_argument("--guide", default="action", help="comma-separated conditions guidance contrasts: action, "
                       "metadata, agents, text (a conditioned model)")
        d.add_argument("--text", help="a conditioned model: text prompt (e.g. 'a roundabout with dense traffic')")
        d.add_argument("--negative", help="negative prompt (with --guidance > 1 and text in --guide)")
        d.add_argument("--meta", action="append", metavar="KEY=VALUE",
                       help="scene metadata, repeatable (e.g. --meta scenario=highway --meta lanes=4)")
        d.add_argument("--agents", metavar="FILE", help="JSON list of vehicles to place: rows [x, y, vx, vy, cos_h, "
                       "sin_h, length, width] relative to the ego (m, m/s; trailing fields optional)")
        d.add_argument("--agent-steps", type=int, default=1, help="steps the placed vehicles condition (default 1)")
        d.add_argument("--scratch", action="store_true", help="generate the scene from the conditions alone (the "
                       "context clip is hidden from the model)")
        d.add_argument("--no-counterfactual", action="store_true")
        d.add_argument("--scale", type=int, default=2, help="enlarge the 64x64 frames this many times")
        d.add_argument("--fps", type=float, default=6.0)
        d.set_defaults(fn=cmd_imagine)

    b = sub.add_parser("bench", help="imagined steps/s and driving-time ratios vs the real simulator (JSON)",
                       description="Throughput at several batch sizes, tokens only and with frames, each divided "
                                   "by the real CarRacing-v3 measured in the same run (one process per core).")
    _model_args(b)
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    b.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    b.add_argument("--real-seconds", type=float, default=15.0, help="seconds of the real simulator measurement")
    b.add_argument("--int8", action="store_true",
                   help="the world model's Linear layers in int8 (CPU; faster, lower precision: docs/performance.md)")
    b.add_argument("--json", help="write the figures here (e.g. results/bench.json)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(fn=cmd_bench)

    ex = sub.add_parser("export", help="write a self-contained model directory, optionally with another decoder",
                        description="Copy a world-model directory (weights, prompts, sources, tokenizer) to --out; "
                                    "--decoder swaps in a tokenizer that reads the same codes (from "
                                    "`gaia-gym train decoder`), e.g. a narrower, faster one.")
    _model_args(ex)
    ex.add_argument("--decoder", help="tokenizer directory with this model's encoder and another decoder")
    ex.add_argument("--out", required=True, help="the new model directory")
    ex.set_defaults(fn=cmd_export)

    pl = sub.add_parser("play", help="drive inside the world model with the keyboard",
                        description="Arrow keys: left/right steer, up/down change the target speed; Esc quits. "
                                    "--keys runs without a window (headless): a string of L R U D . (one per step).")
    _model_args(pl)
    pl.add_argument("--keys", help="scripted keys, one per step: L left, R right, U faster, D slower, . nothing")
    pl.add_argument("--steps", type=int, default=500, help="at most this many steps")
    pl.add_argument("--out", help="also write the drive as a GIF/MP4")
    pl.add_argument("--prompt", type=int, help="prompt-bank clip to start from (default: random)")
    pl.add_argument("--scale", type=int, default=6)
    pl.set_defaults(fn=cmd_play)

    pt = sub.add_parser("pretrain", help="the whole pipeline that rebuilds the shipped default model",
                        description="collect CarRacing-v3 -> train tokenizer -> train world model -> evaluate -> "
                                    "export, every stage resumable (rerun the same command).")
    pt.add_argument("--work", default="runs/pretrain", help="working directory (data, runs)")
    pt.add_argument("--export", help="write the finished bundle here (e.g. gaia_gym/assets/world_model)")
    pt.add_argument("--preset", default="default", choices=["default", "tiny"])
    pt.add_argument("--quiet", action="store_true")
    pt.set_defaults(fn=cmd_pretrain)
