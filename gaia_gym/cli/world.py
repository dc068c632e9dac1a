"""The `gaia-gym` verbs that use a trained world model: demo, imagine, bench, export, play, pretrain.

Each is a thin shell over a library function (`gaia_gym.verbs.imagine`, `.bench`, `.pretrain`, `.play`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaia_gym.errors import ConfigError
from gaia_gym.fileio import write_json

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


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="world-model directory (default: the shipped model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub) -> None:
    """`demo`, `imagine`, `bench`, `export`, `play`, `pretrain`."""
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
