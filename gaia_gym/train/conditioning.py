"""The conditioning comparison (`gaia-gym eval highway --compare`): world models trained side by side
on the same highway-env data with different conditioning (cross-attention vs adaLN), measured side by
side in one run: validation cross-entropy with and without their conditions (over the validation split
encoded as training encodes it), agent placement, and the cost of an imagined step."""

from __future__ import annotations

from pathlib import Path

import torch

from gaia_gym.evaluation.highway import evaluate_agent_placement, split_frames
from gaia_gym.imagination import Imagination, SceneRows
from gaia_gym.train.world_model import SceneClips, tokenize_split


@torch.no_grad()
def conditioned_cross_entropy(bundle, data: Path, cache: Path, stride: int = 4, batch: int = 32, seed: int = 0) -> dict:
    """Teacher-forced next-frame cross-entropy (nats per token) and token accuracy on the validation split,
    with every condition given (the clip's metadata, its boxes, a description embedded by the model's
    text encoder) and with all of them dropped: what the conditions are worth to the model."""
    from gaia_gym.models.conditions import Conditions

    tok_dir = bundle.path / "tokenizer"
    path = tokenize_split(Path(data), tok_dir, "val", Path(cache), bundle.codec, progress=False)
    wm = bundle.world_model
    clips = SceneClips(path, wm.cfg.context, bundle.conditions, bundle.text_encoder, seed=seed)
    starts = clips.starts[::stride]
    sums = {"given": [0.0, 0.0], "dropped": [0.0, 0.0]}
    n = 0
    for i in range(0, len(starts), batch):
        b = clips.batch(starts[i : i + batch])
        full = Conditions(metadata=b["metadata"], agents=b["agents"], text=b.get("text"))
        none = full.without(bundle.conditions.names)
        for name, c in (("given", full), ("dropped", none)):
            tf = wm.teacher_forced(b["tokens"], b["actions"], cond=c)
            sums[name][0] += tf.sums["val_cross_entropy"]
            sums[name][1] += tf.sums["token_accuracy"]
        n += tf.count
    return {k: {"val_cross_entropy": round(v[0] / n, 4), "token_accuracy": round(v[1] / n, 4)} for k, v in sums.items()} | {
        "val_clips": int(len(starts)), "tokens": int(n)}


def compare_conditioning(models: dict, data: Path, cache_dir: Path, seed: int = 0, placements: int = 48) -> dict:
    """Side by side, one run: for each conditioned model (name -> directory), the validation cross-entropy
    with and without its conditions, agent placement from validation boxes, training steps and minutes,
    and the cost of an imagined step (ms per step of 16 rows, conditions given)."""
    import time as _time

    from gaia_gym.bundle import load_bundle
    from gaia_gym.checkpoint import read_model_info

    val = split_frames(data, "val", every=4)
    out = {}
    for name, d in models.items():
        b = load_bundle(d)
        meta = read_model_info(d)["meta"]
        r = {"mode": b.conditions.mode, "train_steps": meta.get("step"), "train_minutes": meta.get("minutes")}
        r.update(conditioned_cross_entropy(b, data, Path(cache_dir) / f"{name}_val.npz", seed=seed))
        r["agent_placement"] = evaluate_agent_placement(b, val, n=placements, seed=seed)
        eng = Imagination(b, n=16, seed=seed)
        C = b.prompts.context
        eng.reset(prompt=torch.arange(16) % len(b.prompts), scene=SceneRows.empty(b.conditions, 16, b.device))
        a = torch.zeros(16, 2)
        for _ in range(3):
            eng.step(a)
        t0 = _time.perf_counter()
        for _ in range(10):
            eng.step(a)
        r["ms_per_step_16_rows"] = round((_time.perf_counter() - t0) / 10 * 1000, 2)
        r["params"] = int(sum(p.numel() for p in b.world_model.parameters()))
        out[name] = r
    return out
