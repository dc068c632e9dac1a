"""What the world-model evaluation and its pictures share: clip selection, batching, and branched rollouts
through the imagination engine.

Conventions: block t = [latents of frame t][a_t]; after a context of C frames the engine's first step
imagines frame C, so rollout step i (0-based) is frame C+i and horizon h = i+1 is frame C-1+h. Model
actions are ``ActionCodec().encode(steering, target_speed_mps)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gaia_gym.bundle import make_backend
from gaia_gym.data.format import load_episode
from gaia_gym.data.loader import ClipDataset, EpisodeIndex
from gaia_gym.imagination import Imagination
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.world_model import DEFAULT_TOP_K

EVAL_FIELDS = ("frames", "steering", "target_speed_mps", "speed_mps", "reward", "terminated")
DEFAULT_FAST_MPS = 80.0
STEER_ROWS = (("left", -1.0), ("straight", 0.0), ("right", 1.0))


def roc_auc(scores, labels) -> float | None:
    """Area under the ROC curve by ranking (Mann-Whitney U; ties get their average rank).

    None when `labels` hold a single class (the AUC is undefined)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])  # runs of equal scores
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def make_engine(wm, tokenizer, temperature: float, seed: int, bf16: bool, **backend_options) -> Imagination:
    """An engine over (world model, tokenizer) of either kind for evaluation rollouts: reset from given
    contexts only. `backend_options`: e.g. ``steps=4`` for a flow model."""
    return Imagination(make_backend(wm, tokenizer, **backend_options), n=1, temperature=float(temperature),
                       top_k=DEFAULT_TOP_K, end_threshold=1.0, seed=seed, bf16=bf16)


@torch.no_grad()
def encode(engine: Imagination, frames: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> latents (..., *L) on the engine's device, in chunks."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = torch.cat([engine.encode(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return out.reshape(*frames.shape[:-3], *out.shape[1:])


@torch.no_grad()
def decode(engine: Imagination, latents: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """latents (..., *L) -> uint8 frames (..., H, W, 3) on the CPU, in chunks."""
    L = len(engine.latent_shape)
    flat = latents.reshape(-1, *latents.shape[latents.dim() - L :])
    out = torch.cat([engine.frames(flat[i : i + chunk]).cpu() for i in range(0, len(flat), chunk)])
    return out.reshape(*latents.shape[: latents.dim() - L], *out.shape[1:])


@torch.no_grad()
def branch_rollout(engine: Imagination, ctx_latents: torch.Tensor, ctx_actions: torch.Tensor,
                   branch_actions: torch.Tensor, steps: int) -> torch.Tensor:
    """Imagine `steps` frames after a real context, for V action branches that share it.

    ctx_latents (B, C, *L), ctx_actions (B, C, A) (the last context action is replaced by the branch's);
    branch_actions (B, V, A) held constant, or (B, V, steps, A). The context is started once and its rows
    repeated V times. Returns latents (B, V, steps, *L): frames C .. C-1+steps."""
    B, V = ctx_latents.shape[0], branch_actions.shape[1]
    engine.reset(context=(ctx_latents, ctx_actions))
    if V > 1:
        engine.repeat_rows(V)
    acts = branch_actions.to(engine.device).reshape(B * V, *branch_actions.shape[2:])
    out = [engine.step(acts if acts.dim() == 2 else acts[:, i]).latents for i in range(steps)]
    lat = torch.stack(out, dim=1)
    return lat.reshape(B, V, steps, *lat.shape[2:])


def steer_speed_branches(ctx_actions: torch.Tensor, fast_action: float, straight: bool) -> tuple[torch.Tensor, list[str]]:
    """(B, V, 2) constant branch actions: steering left/(straight)/right at the last context speed action,
    then speed slow/fast at the last context steering."""
    last = ctx_actions[:, -1]  # (B, 2)
    s, v = last[:, 0], last[:, 1]
    rows, names = [], []
    for name, st in STEER_ROWS:
        if name == "straight" and not straight:
            continue
        rows.append(torch.stack([torch.full_like(v, st), v], -1))
        names.append(name)
    rows.append(torch.stack([s, torch.full_like(s, -1.0)], -1))
    names.append("slow")
    rows.append(torch.stack([s, torch.full_like(s, fast_action)], -1))
    names.append("fast")
    return torch.stack(rows, dim=1), names


def select_clips(data: str | Path, split: str, clip_len: int, max_clips: int | None,
                 fields: Sequence[str] = EVAL_FIELDS) -> list[dict[str, torch.Tensor]]:
    """`max_clips` of the split's non-overlapping clips (all with None), spread evenly over the whole
    ordered list (so over every episode), deterministically."""
    ds = ClipDataset(data, split=split, clip_len=clip_len, fields=fields, shuffle=False)
    total = ds.clips_per_epoch
    n = total if max_clips is None else min(int(max_clips), total)
    want = {i * total // n for i in range(n)} if n else set()
    out = []
    for i, clip in enumerate(ds):
        if i in want:
            out.append(clip)
            if len(out) == len(want):
                break
    return out


def end_windows(data: str | Path, split: str, length: int, max_windows: int | None) -> list[dict]:
    """A window of `length` steps ending at the last step of each terminated episode of the split."""
    idx = EpisodeIndex(data, split=split)
    chosen = [i for i, e in enumerate(idx.entries) if e.get("terminated") and idx.lengths[i] >= length]
    if max_windows is not None and len(chosen) > max_windows:
        chosen = [chosen[j * len(chosen) // max_windows] for j in range(max_windows)]
    out = []
    for i in chosen:
        ep = load_episode(idx.paths[i], fields=EVAL_FIELDS)
        out.append({f: torch.from_numpy(np.ascontiguousarray(ep[f][-length:])) for f in EVAL_FIELDS})
    return out


def stack_clips(clips: list[dict], codec: ActionCodec) -> dict[str, torch.Tensor]:
    """A batch of clips, with the model actions of their logged steering and target speed."""
    b = {f: torch.stack([c[f] for c in clips]) for f in EVAL_FIELDS}
    b["actions"] = torch.from_numpy(codec.encode(b["steering"].numpy(), b["target_speed_mps"].numpy()))
    return b
