"""`gaia-gym pretrain`: the whole pipeline behind the shipped default model, end to end from real data.

    collect CarRacing-v3 (drivers of many styles + the v2 behaviour mix)  ->  WORK/data/carracing
    train the tokenizer                                       ->  WORK/tokenizer
    train a narrow (64-32-16) decoder for its codes           ->  WORK/decoder
    train the world model (4x4 patches, d 192, 3 layers)      ->  WORK/world_model
    evaluate it on the held-out tracks                        ->  WORK/world_model.json
    export the bundle (world model, tokenizer, prompt bank)   ->  --export DIR

Every stage resumes from its own checkpoint, so rerunning the same command after an interruption (or in
a later session) finishes the job. The recipe below is the one the shipped model was built with; wall
times on 2 CPU cores are in the model card (gaia_gym/assets/world_model/MODEL_CARD.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from gaia_gym.fileio import atomic_write_json

# the shipped model's recipe (see the model card for the wall time of each stage)
TOKENIZER_STEPS, TOKENIZER_MINUTES = 8500, 40.0
DECODER_CHANNELS, DECODER_STEPS, DECODER_MINUTES = (64, 32, 16), 3600, 20.0
WORLD_MODEL_STEPS, WORLD_MODEL_MINUTES = 25000, 90.0
# the fast design: 6 tokens per step (4 positions of 4x4 tokens + 2 actions), the per-digit input
# embedding, and context noise (docs/world_model.md)
WORLD_MODEL_DESIGN = dict(patch=4, embedding="digits", d_model=192, n_layers=3, context=12, token_noise=0.1)


def pretrain(work: Path, export: Path | None = None, preset: str = "default", progress: bool = True) -> dict:
    from gaia_gym.bundle import load_bundle, save_bundle
    from gaia_gym.config import CarRacingCollectConfig
    from gaia_gym.config import preset as make_preset
    from gaia_gym.sims.carracing_collect import collect_carracing
    from gaia_gym.train.tokenizer import train_decoder, train_tokenizer
    from gaia_gym.train.world_model import train_world_model
    from gaia_gym.evaluation.world_model import evaluate_world_model
    from gaia_gym.train.loop import TrainConfig

    tiny = preset == "tiny"
    work = Path(work)
    data, tok_dir, dec_dir = work / "data" / "carracing", work / "tokenizer", work / "decoder"
    wm_dir = work / "world_model"
    minutes: dict[str, float] = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        if progress:
            print(f"[pretrain] {name} ...", flush=True)
        r = fn()
        minutes[name] = round((time.perf_counter() - t0) / 60, 2)
        return r

    collect_cfg = make_preset(CarRacingCollectConfig, preset, **({"episodes": 10} if tiny else {}))  # tiny: 1 val track
    stage("collect", lambda: collect_carracing(collect_cfg, data, progress=progress))
    tok_cfg = TrainConfig(steps=20 if tiny else TOKENIZER_STEPS, max_minutes=0.0 if tiny else TOKENIZER_MINUTES,
                          batch_size=8 if tiny else 64, lr=1e-3, warmup_steps=2 if tiny else 200, channels_last=True,
                          checkpoint_minutes=5, log_every=25, image_every=0 if tiny else 500)
    stage("tokenizer", lambda: train_tokenizer(data, tok_dir, preset=preset, train_cfg=tok_cfg, progress=progress))
    dec_cfg = TrainConfig(steps=5 if tiny else DECODER_STEPS, max_minutes=0.0 if tiny else DECODER_MINUTES,
                          batch_size=8 if tiny else 64, lr=1e-3, warmup_steps=2 if tiny else 100, channels_last=True,
                          checkpoint_minutes=5, log_every=25, image_every=0)
    stage("decoder", lambda: train_decoder(data, tok_dir, dec_dir, (8, 8, 8) if tiny else DECODER_CHANNELS,
                                           train_cfg=dec_cfg, progress=progress))
    wm_cfg = TrainConfig(steps=20 if tiny else WORLD_MODEL_STEPS, max_minutes=0.0 if tiny else WORLD_MODEL_MINUTES,
                         batch_size=8 if tiny else 32, lr=8e-4, warmup_steps=2 if tiny else 200,
                         checkpoint_minutes=5, log_every=25, image_every=0)
    design = {} if tiny else WORLD_MODEL_DESIGN
    stage("world_model", lambda: train_world_model(data, dec_dir, wm_dir, preset=preset, train_cfg=wm_cfg,
                                                   progress=progress, **design))

    def evaluate():
        small = {"horizons": (1, 2, 4), "counterfactual_steps": 2, "throughput_batch": 4, "throughput_seconds": 0.05,
                 "real_sim_seconds": 0.0}
        b = load_bundle(wm_dir)
        r = evaluate_world_model(b.world_model, b.tokenizer, data, split="val", codec=b.codec,
                                 max_clips=8 if tiny else 128, progress=progress, **(small if tiny else {}))
        atomic_write_json(work / "world_model.json", r)
        return r

    metrics = stage("evaluate", evaluate)
    out = {"work": str(work), "stage_minutes": minutes,
           "val_cross_entropy": metrics.get("val_cross_entropy"), "psnr_by_horizon": metrics.get("psnr_by_horizon")}
    if export is not None:
        b = load_bundle(wm_dir)
        save_bundle(b, export, copy_tokenizer=True, meta={"recipe": "gaia-gym pretrain", "stage_minutes": minutes})
        out["export"] = str(export)
    return out
