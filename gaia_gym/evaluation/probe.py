"""The inverse-dynamics probe's labelled real pairs (`ProbePairs`) and its score on held-out pairs
(`evaluate_probe`); see `gaia_gym.models.probe`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info

from gaia_gym.data.loader import ClipDataset
from gaia_gym.models.probe import IGNORE, PROBE_FIELDS, Probe, ProbeConfig, pair_labels, with_reconstructions
from gaia_gym.errors import ConfigError


class ProbePairs(IterableDataset):
    """Labelled frame pairs of one split: dicts with ``frames`` uint8 (n, H, W, 3), ``steer``, ``faster``
    (float: 1, 0 or IGNORE) and ``k``. Pairs with neither label are skipped.

    ``shuffle=True``: endless, the clip streams of the gaps interleaved at random (training).
    ``shuffle=False``: every non-overlapping clip of each gap once, the gaps interleaved (evaluation).
    """

    def __init__(self, data: str | Path, split: str, cfg: ProbeConfig, seed: int = 0, shuffle: bool = True,
                 augment: bool = False, buffer_episodes: int = 8, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.data, self.split, self.cfg = Path(data), split, cfg
        self.seed, self.shuffle, self.augment = int(seed), bool(shuffle), bool(augment)
        self.buffer_episodes, self.rank, self.world_size = buffer_episodes, rank, world_size
        self.streams = {k: ClipDataset(self.data, split=split, clip_len=k + 1, fields=PROBE_FIELDS,
                                       buffer_episodes=buffer_episodes, seed=self.seed * 101 + k, shuffle=shuffle,
                                       rank=rank, world_size=world_size) for k in cfg.ks}

    def _sample(self, clip: dict, k: int, rng: np.random.Generator) -> dict | None:
        steer, faster = pair_labels(clip["steering"].numpy(), clip["speed_mps"].numpy(), k, self.cfg)
        if steer == IGNORE and faster == IGNORE:
            return None
        frames = clip["frames"][self.cfg.offsets(k)]  # (n, H, W, 3)
        if self.augment and self.cfg.flip_augment and rng.random() < 0.5:
            frames = frames.flip(2)
            if steer != IGNORE:
                steer = 1.0 - steer
        return {"frames": frames.contiguous(), "steer": torch.tensor(steer), "faster": torch.tensor(faster),
                "k": torch.tensor(k)}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id, 0xB0BE])
        if not self.shuffle:  # the gaps' ordered streams, round-robin (a prefix covers every gap)
            streams = [zip(itertools.repeat(k), ds) for k, ds in self.streams.items()]
            for group in itertools.zip_longest(*streams):
                for item in group:
                    if item is not None:
                        s = self._sample(item[1], item[0], rng)
                        if s is not None:
                            yield s
            return
        its = {k: iter(ds) for k, ds in self.streams.items()}
        ks = list(its)
        while ks:
            k = ks[int(rng.integers(len(ks)))]
            clip = next(its[k], None)
            if clip is None:  # this worker has no episodes of that length
                ks.remove(k)
                continue
            s = self._sample(clip, k, rng)
            if s is not None:
                yield s


def collate_pairs(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}



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
