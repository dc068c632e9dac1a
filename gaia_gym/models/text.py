"""Text encoders: anything mapping a list of strings to embeddings (N, dim) conditions a world model.

No pretrained text encoder can be downloaded here, so the text path is pluggable: a world model records
the width of the text embeddings it was trained on (``text_dim`` of its conditions) and takes them from
any object with a ``dim`` attribute and ``__call__(list[str]) -> torch.Tensor (N, dim)`` (a CLIP or T5
text tower a user has, wrapped in a few lines). The default, `HashTextEncoder`, is small and trained here
(`gaia-gym train text-encoder`) on descriptions generated from recorded highway-env scenes
(`gaia_gym.sims.highway_scene.describe`).

What the default understands: the words and phrasings of those descriptions (road family, lane count,
traffic density, a vehicle close ahead or a clear lane, what the ego does), in any order and joined any
way, with any subset said. Words hash into buckets (unigrams and bigrams), so unseen words land in
buckets it never learned (close to no effect) or collide with learned ones (an arbitrary small effect);
it has no notion of negation ("not dense" reads as "dense"), numbers beyond "1".."4", or anything else.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from gaia_gym.errors import ConfigError


@dataclass(frozen=True)
class TextEncoderConfig:
    buckets: int = 4096  # hash buckets for unigrams and bigrams
    width: int = 128
    dim: int = 64  # embedding width handed to world models
    heads: tuple[tuple[str, int], ...] = ()  # training heads: (fact name, classes incl. "unsaid")

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple((str(n), int(k)) for n, k in self.heads))


_TOKEN = re.compile(r"[a-z0-9]+")


def word_ids(text: str, buckets: int) -> list[int]:
    """Hash bucket ids of a string's words and word bigrams (crc32: the same on every machine)."""
    if not isinstance(text, str):
        raise ConfigError(f"text prompts must be strings, got {type(text).__name__}")
    words = _TOKEN.findall(text.lower())
    grams = words + [a + "_" + b for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % (buckets - 1) + 1 for g in grams] or [0]  # 0: the empty text


class HashTextEncoder(nn.Module):
    """Bag of hashed words and bigrams -> MLP -> a unit-norm embedding of width `dim`."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.bag = nn.EmbeddingBag(cfg.buckets, cfg.width, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.dim))
        self.heads = nn.ModuleList([nn.Linear(cfg.dim, k) for _, k in cfg.heads])

    def embed(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            ids.extend(word_ids(t, self.cfg.buckets))
        dev = self.bag.weight.device
        e = self.mlp(self.bag(torch.tensor(ids, device=dev), torch.tensor(offsets, device=dev)))
        return nn.functional.normalize(e, dim=-1)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.embed(texts)

    def head_logits(self, emb: torch.Tensor) -> list[torch.Tensor]:
        return [h(emb) for h in self.heads]


def check_text_encoder(encoder, dim: int) -> None:
    """One-line errors for a user's text encoder: it must map strings to (N, dim) float embeddings."""
    if not callable(encoder):
        raise ConfigError(f"a text encoder must be callable on a list of strings, got {type(encoder).__name__}")
    with torch.no_grad():
        try:
            out = encoder(["a highway with dense traffic", "a roundabout"])
        except Exception as e:  # noqa: BLE001 - a user's module: report what it raised, on one line
            raise ConfigError(f"the text encoder failed on a list of strings: {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise ConfigError(f"a text encoder must return a (N, dim) tensor for N strings, got "
                          f"{getattr(out, 'shape', type(out).__name__)}")
    if out.shape[1] != dim:
        raise ConfigError(f"the text encoder gives {out.shape[1]}-wide embeddings; this world model was trained on "
                          f"{dim}-wide text embeddings")


__all__ = ["TextEncoderConfig", "HashTextEncoder", "word_ids", "check_text_encoder"]
