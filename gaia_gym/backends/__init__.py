"""The seam between the imagination engine and a world model: the `Backend` interface.

The engine (`gaia_gym.imagination`) never touches a model's internals; it asks a backend to

    start(latents (n, C, *L), actions (n, C, A), start_block) -> (memory, features (n, d))
    step(memory, block, current (n, *L), actions (n, A), sampler | None, guidance)
        -> next latents (n, *L), features (n, d), reward (n,), end logit (n,)
    encode(frames uint8 (n, *frame_shape)) -> latents (n, *L);   decode(latents) -> frames uint8
    sampler(temperature, top_k, generator) -> an opaque sampling policy for `step`

`memory` is the backend's per-row state over the context window (a KV cache for the transformers); the
engine only calls `clone()`, `select(index)` and `assign_rows(rows, other)` on it, so it can branch and
restore rows without knowing what it holds. ``sampler=None`` in `step` means "the next frame is
observed, do not sample" (the engine then takes the observed latents as the next frame).

A backend whose world model takes scene conditions (`gaia_gym.models.conditions`) has a `conditions`
attribute (its `ConditionSpec`; absent or None otherwise) and takes the scene keywords ``cond``,
``contrast``, ``hidden`` and ``guide_action`` in `start` (cond, hidden) and `step`; the engine passes
them only when conditions are set, so a backend without conditions needs none of this.

A frame's latent is described by `latent_shape` / `latent_dtype` / `latent_key`: integer tokens (g, g)
under the key "tokens" for the discrete GAIA-1 design (`gaia_gym.backends.tokens.TokenBackend`), or
float latents (c, h, w) under "latents" for a continuous design. Envs, agents and planners read only
these attributes, never the model class.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Memory(Protocol):
    """Per-row model state over the context window; rows can be copied, picked and overwritten."""

    def clone(self) -> "Memory": ...

    def select(self, index: torch.Tensor) -> "Memory": ...

    def assign_rows(self, rows: torch.Tensor, other: "Memory") -> None: ...


@runtime_checkable
class Backend(Protocol):
    """What the imagination engine needs from a world model (see the module docstring)."""

    latent_key: str  # observation key of a frame's latent: "tokens" (int) or "latents" (float)
    latent_shape: tuple[int, ...]  # one frame's latent, e.g. (8, 8) tokens
    latent_dtype: torch.dtype
    latent_range: tuple[float, float]  # bounds of a latent's entries (tokens: 0 .. vocab-1)
    feature_dim: int  # width of the features observed with each frame
    action_dim: int
    frame_size: int  # decoded frames are (frame_size, frame_size, 3) uint8 per camera
    frame_shape: tuple[int, ...]  # one decoded frame: (S, S, 3), or (V, S, S, 3) for a camera rig
    cameras: tuple  # () for one camera; a rig: (name, yaw_deg, anchor_x, anchor_y) per view
    window: int  # frames of context the model attends to
    # optional: `default_top_k` (int), the sampler's top_k when the user gives none (absent: 0, every code)

    @property
    def device(self) -> torch.device: ...

    def sampler(self, temperature: float, top_k: int, generator: torch.Generator) -> Callable | Any: ...

    def start(self, latents: torch.Tensor, actions: torch.Tensor, start_block: int) -> tuple[Memory, torch.Tensor]: ...

    def step(self, memory: Memory, block: int, current: torch.Tensor, actions: torch.Tensor, sampler,
             guidance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def reward_spread(self, features: torch.Tensor) -> torch.Tensor: ...  # (n, d) -> (n,) reward head's std

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


__all__ = ["Backend", "Memory"]
