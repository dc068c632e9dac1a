"""Discrete bottlenecks for the tokenizer: FSQ and GAIA-1-style L2-normalised VQ.

Both map a (B, D, h, w) latent to integer tokens (B, h, w) and back, with a straight-through gradient.

- `FSQ` (finite scalar quantization): each of D channels is squashed to a few levels and rounded; the
  code is the tuple of levels, so the "codebook" is the implicit grid prod(levels). No codebook to
  collapse, no auxiliary loss.
- `L2VQ`: GAIA-1's choice: a low-dimensional latent and a learned codebook, both L2-normalised, nearest
  code by cosine similarity, codebook + commitment losses, and dead codes re-seeded from the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FSQ(nn.Module):
    """Finite scalar quantization with `levels[i]` values on channel i (vocabulary = prod(levels))."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = tuple(int(x) for x in levels)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1]), 0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        # squash channel i into (-(L-1)/2, (L-1)/2); the half-step shift keeps even L symmetric
        half = (self._levels - 1) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) -> (z_q in [-1, 1] (B, D, h, w), tokens (B, h, w), aux loss 0)."""
        z = rearrange(z.float(), "b d h w -> b h w d")
        b = self._bound(z)
        q = b + (torch.round(b) - b).detach()  # straight-through rounding
        tokens = self._to_index(torch.round(b))
        zq = q / self._half_width
        return rearrange(zq, "b h w d -> b d h w"), tokens, z.new_zeros(())

    @property
    def _half_width(self) -> torch.Tensor:
        return torch.floor(self._levels / 2)  # rounded values lie in [-half_width, L - 1 - half_width]

    def _to_index(self, q: torch.Tensor) -> torch.Tensor:
        digits = (q + self._half_width).long().clamp(min=0)
        digits = torch.minimum(digits, (self._levels - 1).long())
        return (digits * self._basis).sum(-1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w) -> z_q (B, D, h, w), the same values `forward` produced."""
        digits = (tokens.unsqueeze(-1) // self._basis) % self._levels.long()
        zq = (digits.float() - self._half_width) / self._half_width
        return rearrange(zq, "b h w d -> b d h w")


class L2VQ(nn.Module):
    """Vector quantization with L2-normalised latents and codes (cosine nearest neighbour)."""

    def __init__(self, vocab_size: int, dim: int, commit_weight: float = 0.25, restart_every: int = 200) -> None:
        super().__init__()
        self.vocab = vocab_size
        self.code_dim = dim
        self.commit_weight = commit_weight
        self.restart_every = restart_every
        self.codebook = nn.Parameter(F.normalize(torch.randn(vocab_size, dim), dim=-1))
        self.register_buffer("usage", torch.zeros(vocab_size), persistent=False)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def dim(self) -> int:
        return self.code_dim

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, D, h, w = z.shape
        flat = F.normalize(rearrange(z.float(), "b d h w -> (b h w) d"), dim=-1)
        codes = F.normalize(self.codebook.float(), dim=-1)
        tokens = (flat @ codes.t()).argmax(-1)  # (N,)
        q = codes[tokens]
        loss = F.mse_loss(q, flat.detach()) + self.commit_weight * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        if self.training:
            self._restart_dead(flat.detach(), tokens)
        zq = rearrange(q, "(b h w) d -> b d h w", b=B, h=h, w=w)
        return zq, tokens.view(B, h, w), loss

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, tokens: torch.Tensor) -> None:
        self.usage.mul_(0.99).index_add_(0, tokens, torch.ones_like(tokens, dtype=self.usage.dtype))
        self.calls += 1
        if int(self.calls) % self.restart_every:
            return
        dead = (self.usage < 1e-3).nonzero().squeeze(-1)
        if len(dead) == 0:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return  # keep replicas identical; DDP runs rely on the losses alone
        pick = torch.randint(0, len(flat), (len(dead),), device=flat.device)
        self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.codebook.float(), dim=-1)[tokens]  # (B, h, w, D)
        return rearrange(q, "b h w d -> b d h w")
