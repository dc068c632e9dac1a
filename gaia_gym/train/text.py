"""The default text encoder's training (`gaia-gym train text-encoder`): a `HashTextEncoder` learns to
read the facts of a recorded highway-env clip back from random descriptions of it.

Each training example is a clip of the train split, its facts (`highway_scene.clip_facts`: road family,
lanes, density, a car close ahead or a clear lane, what the ego does) and a random wording of a random
subset of them (`highway_scene.describe`), with every phrasing of a fact but one: the last phrasing of
each fact is held out, to measure whether the encoder reads wordings it never saw. One classification head per fact predicts its value or
"unsaid"; the embedding before the heads is what world models are conditioned on. Validation: the
same on clips of the validation split (other episodes, other seeds), with fresh wordings, in the
training phrasings and in the held-out ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gaia_gym.bundle import TEXT_ENCODER_KIND
from gaia_gym.checkpoint import save_model
from gaia_gym.data.format import load_episode
from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.errors import DatasetError
from gaia_gym.models.text import HashTextEncoder, TextEncoderConfig
from gaia_gym.sims.highway_scene import FACTS, clip_facts, describe, episode_metadata, fact_labels



def split_facts(data: Path, split: str, clip_len: int = 8, stride: int = 4) -> list[dict]:
    """The facts of clips (every `stride` steps) of one split of a highway-env dataset."""
    idx = EpisodeIndex(data, split=split)
    if idx.manifest.get("source") != "highway":
        raise DatasetError(f"{data}: not a highway-env dataset (its manifest says source "
                           f"{idx.manifest.get('source')!r}); collect one with `gaia-gym collect highway`")
    out = []
    for path in idx.paths:
        ep = load_episode(path, fields=["others", "speed_mps", "steering"])
        meta = episode_metadata(ep["meta"], ep["others"])
        for s in range(0, max(1, len(ep["others"]) - clip_len + 1), stride):
            sl = slice(s, s + clip_len)
            out.append(clip_facts(meta, ep["others"][sl], ep["speed_mps"][sl], ep["steering"][sl]))
    return out


def _examples(facts: list[dict], n: int, rng: np.random.Generator, phrasings: str = "train") -> tuple[list[str], torch.Tensor]:
    texts, labels = [], []
    for i in rng.integers(len(facts), size=n):
        t, said = describe(facts[int(i)], rng, phrasings=phrasings)
        texts.append(t)
        labels.append(fact_labels(said))
    return texts, torch.from_numpy(np.stack(labels))


@torch.no_grad()
def evaluate_text_encoder(enc: HashTextEncoder, facts: list[dict], n: int = 4000, seed: int = 1,
                          phrasings: str = "train") -> dict:
    """Per-fact accuracy of reading the facts back from fresh descriptions (said facts and unsaid ones),
    worded with the training phrasings or with the held-out ones (never seen in training)."""
    texts, labels = _examples(facts, n, np.random.default_rng(seed), phrasings)
    logits = enc.head_logits(enc.embed(texts))
    out = {}
    for j, (name, lg) in enumerate(zip(FACTS, logits)):
        said = labels[:, j] < len(FACTS[name])
        pred = lg.argmax(-1)
        out[name] = {"said_accuracy": round(float((pred[said] == labels[said, j]).float().mean()), 4),
                     "unsaid_accuracy": round(float((pred[~said] == labels[~said, j]).float().mean()), 4)}
    return out


def train_text_encoder(data: Path, out: Path, steps: int = 1500, batch_size: int = 256, lr: float = 3e-3,
                       seed: int = 0, progress: bool = True, cfg: TextEncoderConfig | None = None) -> dict:
    """Train the default text encoder on `data`'s train split, validate on its val split, save to `out`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_facts, val_facts = split_facts(Path(data), "train"), split_facts(Path(data), "val")
    cfg = cfg or TextEncoderConfig()
    from dataclasses import replace

    cfg = replace(cfg, heads=tuple((k, len(v) + 1) for k, v in FACTS.items()))
    enc = HashTextEncoder(cfg)
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    bar = tqdm(range(steps), desc="train text encoder", disable=not progress)
    for step in bar:
        texts, labels = _examples(train_facts, batch_size, rng)
        logits = enc.head_logits(enc.embed(texts))
        loss = sum(F.cross_entropy(lg, labels[:, j]) for j, lg in enumerate(logits)) / len(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    enc.eval()
    metrics = {"val": evaluate_text_encoder(enc, val_facts),
               "val_held_out_phrasings": evaluate_text_encoder(enc, val_facts, phrasings="held_out"),
               "train_clips": len(train_facts),
               "val_clips": len(val_facts), "steps": steps, "minutes": round((time.time() - t0) / 60, 2),
               "final_loss": round(loss.item(), 4)}
    save_model(out, enc, TEXT_ENCODER_KIND, cfg, meta={"metrics": metrics, "data": str(data)})
    if progress:
        print(json.dumps(metrics["val"]))
    return metrics


