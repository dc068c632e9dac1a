"""`gaia-gym train`: one verb per trainable stage (rerun the same command to resume)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train_config(a: argparse.Namespace, **defaults):
    """A `train` verb's TrainConfig: the stage's `defaults`, then the flags; `--preset tiny` is a smoke run of
    at most 20 steps at batch 8 (seconds, not minutes)."""
    from gaia_gym.train.loop import TrainConfig

    kw = dict(defaults)
    for k in ("steps", "batch_size", "lr", "seed"):
        if getattr(a, k, None) is not None:
            kw[k] = getattr(a, k)
    if a.minutes is not None:
        kw["max_minutes"] = a.minutes
    if a.checkpoint_minutes is not None:
        kw["checkpoint_minutes"] = a.checkpoint_minutes
    if a.preset == "tiny":
        kw.update(steps=min(kw.get("steps", 20), 20) if a.steps is None else a.steps, batch_size=8,
                  warmup_steps=2, log_every=5, image_every=10)
    if a.no_bf16:
        kw["bf16"] = False
    return TrainConfig(**kw)


def cmd_train_tokenizer(a: argparse.Namespace) -> None:
    from gaia_gym.train.tokenizer import train_tokenizer

    tc = _train_config(a, steps=6000, batch_size=64, lr=1e-3, warmup_steps=200, channels_last=True,
                       log_every=25, image_every=500)
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
                       log_every=25, image_every=500)
    r = train_decoder(Path(a.data), Path(a.tokenizer) if a.tokenizer else None, Path(a.out), a.channels, train_cfg=tc,
                      progress=not a.quiet, views=a.views)
    _print_codec_run(a.out, "decoder", r)


def cmd_train_vae(a: argparse.Namespace) -> None:
    from gaia_gym.train.vae import train_vae

    tc = _train_config(a, steps=8000, batch_size=32, lr=1e-3, warmup_steps=200, channels_last=True,
                       log_every=25, image_every=500)
    r = train_vae(Path(a.data), Path(a.out), preset=a.preset, train_cfg=tc, progress=not a.quiet)
    m = r.get("metrics") or {}
    print(f"{a.out}: VAE trained to step {r['step']} ({r['minutes']:.1f} min in total, stopped by "
          f"{r.get('stopped', 'steps')}); last metrics: "
          + ", ".join(f"{k}={m[k]:.4g}" for k in ("psnr", "l1", "kl", "latent_std") if k in m))


def cmd_train_world_model(a: argparse.Namespace) -> None:
    from gaia_gym.train.world_model import train_world_model
    from gaia_gym.sims.rig import split_names

    tc = _train_config(a, steps=4000, batch_size=16, lr=6e-4, warmup_steps=200,
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
    for key in ("d_model", "n_layers", "n_heads", "token_noise"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
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

    tc = _train_config(a, steps=3000, batch_size=16, lr=5e-4, warmup_steps=100,
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
    r = train_probe(Path(a.data), Path(a.out), minutes=a.minutes, steps=a.steps, tokenizer=tok, progress=not a.quiet,
                    checkpoint_minutes=a.checkpoint_minutes)
    v = r.get("val") or {}
    print(f"{a.out}: probe trained to step {r['step']}; validation: " + json.dumps(v)[:400])


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """`--checkpoint-minutes`, for every verb trained by gaia_gym.train.loop's Trainer."""
    from gaia_gym.train.loop import DEFAULT_CHECKPOINT_MINUTES

    p.add_argument("--checkpoint-minutes", type=float, metavar="M",
                   help=f"checkpoint at least every M minutes of training (default {DEFAULT_CHECKPOINT_MINUTES:g}; "
                        "also at the end and on Ctrl-C / SIGTERM): a kill loses at most M minutes")


def _add_train_args(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--data", required=True, help="dataset directory (its train split is used)")
    p.add_argument("--out", required=True, help="run / model directory (rerun the same command to resume)")
    p.add_argument("--preset", default="default", choices=presets, help="model preset (tiny: smoke test)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--minutes", type=float, help="total wall-clock budget in minutes (across resumes)")
    add_checkpoint_arg(p)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (default: bf16 autocast where the hardware runs it fast: CUDA, AMX or AVX-512 BF16 CPUs)")
    p.add_argument("--quiet", action="store_true")


def add_parsers(sub) -> None:
    """`train tokenizer|decoder|vae|world-model|text-encoder|flow-world-model|probe`."""
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
    tw.add_argument("--d-model", dest="d_model", type=int, help="transformer width (default 256)")
    tw.add_argument("--layers", dest="n_layers", type=int, help="transformer layers (default 4)")
    tw.add_argument("--heads", dest="n_heads", type=int, help="attention heads (default 4)")
    tw.add_argument("--token-noise", dest="token_noise", type=float,
                    help="train on context tokens replaced by random codes at a rate drawn in [0, X] per clip "
                         "(robustness to the model's own rollout errors; default 0)")
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
    add_checkpoint_arg(tp)
    tp.add_argument("--quiet", action="store_true")
    tp.set_defaults(fn=cmd_train_probe)
