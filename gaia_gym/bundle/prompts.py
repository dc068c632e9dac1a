"""The prompt bank: GAIA-1's "video prompt" -- `n` clips of `context` real frames (as latents) with the
actions driven between them; an imagined episode starts from one of them (MODEL_DIR/prompts.npz)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.fileio import atomic_write_bytes


def stored_latents(a: np.ndarray) -> torch.Tensor:
    """Stored latents -> a tensor: uint16 tokens as int64, float latents as float32."""
    return torch.from_numpy(a.astype(np.float32 if np.issubdtype(a.dtype, np.floating) else np.int64))


@dataclass
class PromptBank:
    """Real context clips: `tokens` (N, C, *L) -- each frame's latent: int64 tokens (g, g) for the
    discrete backend, float latents for a continuous one -- and actions (N, C, A) float32 (model units),
    and optionally what really happened next (next_tokens (N, F, *L), next_actions (N, F, A)) so a demo
    can show the real continuation beside the imagined ones."""

    tokens: torch.Tensor
    actions: torch.Tensor
    next_tokens: torch.Tensor | None = None
    next_actions: torch.Tensor | None = None
    metadata: torch.Tensor | None = None  # (N, F) int64: a conditioned model's scene metadata of each clip

    def __post_init__(self) -> None:
        if self.tokens.dim() < 3 or self.actions.dim() != 3 or self.tokens.shape[:2] != self.actions.shape[:2]:
            raise ConfigError(f"prompt bank shapes do not fit: tokens {tuple(self.tokens.shape)}, "
                             f"actions {tuple(self.actions.shape)}")
        if (self.next_tokens is None) != (self.next_actions is None) or (
                self.next_tokens is not None and self.next_tokens.shape[:2] != self.next_actions.shape[:2]):
            raise ConfigError("prompt bank continuation: next_tokens and next_actions must come together")

    @property
    def continuation(self) -> int:
        return 0 if self.next_tokens is None else self.next_tokens.shape[1]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def context(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write the bank as one .npz, atomically (integer tokens as uint16, float latents as float32)."""
        def store(t: torch.Tensor) -> np.ndarray:
            return t.numpy().astype(np.float32 if t.is_floating_point() else np.uint16)

        buf = io.BytesIO()
        extra = {} if self.next_tokens is None else {"next_tokens": store(self.next_tokens),
                                                      "next_actions": self.next_actions.numpy()}
        if self.metadata is not None:
            extra["metadata"] = self.metadata.numpy().astype(np.int64)
        np.savez_compressed(buf, tokens=store(self.tokens), actions=self.actions.numpy(), **extra)
        atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PromptBank":
        path = Path(path)
        try:
            with np.load(path) as z:
                nxt = {}
                if "next_tokens" in z:
                    nxt = {"next_tokens": stored_latents(z["next_tokens"]),
                           "next_actions": torch.from_numpy(z["next_actions"].astype(np.float32))}
                if "metadata" in z:
                    nxt["metadata"] = torch.from_numpy(z["metadata"].astype(np.int64))
                bank = cls(stored_latents(z["tokens"]), torch.from_numpy(z["actions"].astype(np.float32)), **nxt)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no prompt bank (run training, or `gaia-gym pretrain`, to write one)") from None
        except Exception as e:  # zip / key / shape errors: the file is not a prompt bank
            raise ModelFileError(f"{path}: not a readable prompt bank ({type(e).__name__}: {e})") from None
        bad = [k for k in ("tokens", "actions", "next_tokens", "next_actions")
               if (t := getattr(bank, k)) is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:  # NaN actions or latents would surface later as a raw sampling error in torch
            raise ModelFileError(f"{path}: non-finite values (NaN or inf) in {', '.join(bad)}")
        return bank

    @classmethod
    def from_token_file(cls, path: str | Path, context: int, n: int = 64, seed: int = 0,
                        min_speed_action: float = -0.9, continuation: int = 16,
                        metadata: np.ndarray | None = None) -> "PromptBank":
        """`n` clips of `context` (+ `continuation`) steps from a tokenized split (`tokenize_split`'s
        file), spread over its episodes, preferring clips where the car is commanded to move (speed
        action > min_speed_action). `metadata` (steps, F): per-step scene metadata ids to keep per clip."""
        with np.load(path) as z:
            tokens, actions, starts = z["tokens"], z["actions"], z["episode_starts"]
        # short episodes (smoke runs): a shorter continuation, down to none
        continuation = max(0, min(continuation, int(np.diff(starts).max(initial=0)) - context))
        length = context + continuation
        rng = np.random.default_rng(seed)
        cands = []
        for a, b in zip(starts[:-1], starts[1:]):
            if b - a < length:
                continue
            s = np.arange(a, b - length + 1)
            moving = s[actions[s + context - 1, 1] > min_speed_action]
            cands.append(moving if len(moving) else s)
        if not cands:
            raise ConfigError(f"{path}: no episode has {length} steps")
        eps = rng.permutation(len(cands))[:n] if len(cands) >= n else rng.integers(0, len(cands), n)
        picks = np.array([rng.choice(cands[e]) for e in eps])
        idx = picks[:, None] + np.arange(length)
        t, a = stored_latents(tokens[idx]), torch.from_numpy(actions[idx].astype(np.float32))
        meta = None if metadata is None else torch.from_numpy(np.asarray(metadata)[picks].astype(np.int64))
        if not continuation:
            return cls(t, a, metadata=meta)
        return cls(t[:, :context], a[:, :context], t[:, context:], a[:, context:], metadata=meta)


    @classmethod
    def standing_starts(cls, path: str | Path, context: int, still_action) -> "PromptBank":
        """One clip per episode of a tokenized split: its first frame held for `context` steps under the
        "stand still" action `still_action` (model units) -- the situation `RealCarRacingEnv.reset`
        starts a real episode in."""
        with np.load(path) as z:
            tokens, starts = z["tokens"], z["episode_starts"]
        first = stored_latents(tokens[starts[:-1]])
        t = first[:, None].expand(-1, context, *first.shape[1:]).contiguous()
        a = torch.as_tensor(np.asarray(still_action, np.float32)).expand(len(first), context, -1).contiguous()
        return cls(t, a)

    def concat(self, other: "PromptBank") -> "PromptBank":
        """Both banks' clips (continuations are dropped unless both have the same length)."""
        if other.tokens.shape[1:] != self.tokens.shape[1:] or other.actions.shape[1:] != self.actions.shape[1:]:
            raise ConfigError(f"prompt banks do not fit together: {tuple(self.tokens.shape)} and {tuple(other.tokens.shape)}")
        t, a = torch.cat([self.tokens, other.tokens]), torch.cat([self.actions, other.actions])
        if self.continuation and self.continuation == other.continuation:
            return PromptBank(t, a, torch.cat([self.next_tokens, other.next_tokens]),
                              torch.cat([self.next_actions, other.next_actions]))
        return PromptBank(t, a)

