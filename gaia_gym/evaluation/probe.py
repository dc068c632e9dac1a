"""The inverse-dynamics probe scored on held-out pairs (`evaluate_probe`); see `gaia_gym.models.probe`."""

from __future__ import annotations

from pathlib import Path

import itertools

import numpy as np
import torch
from torch import nn

from gaia_gym.models.probe import IGNORE, Probe, ProbePairs, collate_pairs, with_reconstructions
from gaia_gym.errors import ConfigError


def _head_stats(prob: np.ndarray, y: np.ndarray) -> dict:
    valid = y != IGNORE
    p, t = prob[valid], y[valid]
    if not len(t):
        return {"accuracy": None, "balanced_accuracy": None, "pairs": 0, "positive_fraction": None}
    pred = p > 0.5
    recalls = [float((pred[t == c] == bool(c)).mean()) for c in (0, 1) if (t == c).any()]
    return {"accuracy": float((pred == (t == 1)).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "pairs": int(len(t)), "positive_fraction": float((t == 1).mean())}


@torch.no_grad()
def evaluate_probe(probe: Probe, data: str | Path, split: str = "val", max_pairs: int | None = None,
                   batch_size: int = 256, tokenizer: nn.Module | None = None) -> dict:
    """Accuracy of both heads on every labelled non-overlapping pair of `split` (deterministic), overall
    and per gap k. ``steer_accuracy`` / ``speed_accuracy`` are the headline numbers. With a `tokenizer`,
    the probe reads the tokenizer's reconstructions of the frames instead."""
    probe.eval()
    ds = ProbePairs(data, split, probe.cfg, shuffle=False, augment=False)
    probs, steer, faster, ks = [], [], [], []
    it = iter(ds)
    while max_pairs is None or sum(len(x) for x in ks) < max_pairs:
        chunk = list(itertools.islice(it, batch_size))
        if not chunk:
            break
        b = collate_pairs(chunk)
        if tokenizer is not None:
            b["frames"] = with_reconstructions(tokenizer, b["frames"], 1.0)
        dev = next(probe.parameters()).device
        probs.append(torch.sigmoid(probe(b["frames"].to(dev))).cpu().numpy())
        steer.append(b["steer"].numpy())
        faster.append(b["faster"].numpy())
        ks.append(b["k"].numpy())
    if not probs:
        raise ConfigError(f"{data}: no labelled probe pairs in split {split!r}")
    P, S, V, K = np.concatenate(probs), np.concatenate(steer), np.concatenate(faster), np.concatenate(ks)
    if max_pairs is not None:
        P, S, V, K = P[:max_pairs], S[:max_pairs], V[:max_pairs], K[:max_pairs]
    steer_all, speed_all = _head_stats(P[:, 0], S), _head_stats(P[:, 1], V)
    out = {"split": split, "pairs": int(len(K)), "frames": "tokenizer reconstructions" if tokenizer is not None else "real",
           "steer_accuracy": steer_all["accuracy"], "speed_accuracy": speed_all["accuracy"],
           "steer": steer_all, "speed": speed_all, "by_k": {}}
    for k in sorted(set(K.tolist())):
        m = K == k
        out["by_k"][str(k)] = {"steer": _head_stats(P[m, 0], S[m]), "speed": _head_stats(P[m, 1], V[m])}
    return out


__all__ = ["evaluate_probe"]
