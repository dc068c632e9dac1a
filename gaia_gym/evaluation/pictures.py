"""Pictures of a world model's imagination from real contexts: the counterfactual contact sheet and the
rollout GIF (real continuation beside sampled futures and the left / straight / right counterfactual).
Every rollout goes through the imagination engine (`common.branch_rollout`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaia_gym.data.loader import ClipDataset, EpisodeIndex
from gaia_gym.evaluation.common import (DEFAULT_FAST_MPS, EVAL_FIELDS, STEER_ROWS, branch_rollout, decode, encode,
                                        make_engine, stack_clips, steer_speed_branches)
from gaia_gym.media import grid_image, label_tiles, text_strip, write_gif
from gaia_gym.models.layout import ActionCodec
from gaia_gym.errors import ConfigError


def real_clip(data: str | Path, split: str, length: int, clip: int, codec: ActionCodec | None = None):
    """The `clip`-th non-overlapping clip of `length` steps of `split`: (frames uint8 (1, L, H, W, 3),
    model actions (1, L, 2))."""
    ds = ClipDataset(data, split=split, clip_len=length, fields=EVAL_FIELDS, shuffle=False)
    c = next((x for i, x in enumerate(ds) if i == clip), None)
    if c is None:
        raise ConfigError(f"{data}: split {split!r} has fewer than {clip + 1} clips of {length} frames")
    b = stack_clips([c], codec or ActionCodec())
    return b["frames"], b["actions"]


@torch.no_grad()
def counterfactual_grid(wm, tokenizer, context_frames, context_actions, path: str | Path, steps: int = 8,
                        fast_mps: float = DEFAULT_FAST_MPS, codec: ActionCodec | None = None, bf16: bool = True,
                        temperature: float = 0.0, seed: int = 0, scale: int = 2) -> Path:
    """PNG of what the model imagines after one real context under held actions: rows steer left /
    straight / right (at the context's last target speed) and slow (0 m/s) / fast (`fast_mps`) (at its
    last steering); the first column is the last context frame (through the tokenizer), then one column
    per imagined step. context_frames uint8 (C, H, W, 3); context_actions model actions (C, 2) in [-1, 1]."""
    import imageio.v3 as iio

    codec = codec or ActionCodec()
    eng = make_engine(wm, tokenizer, temperature, seed, bf16)
    frames = torch.as_tensor(np.asarray(context_frames))[None]  # (1, C, H, W, 3)
    acts = torch.as_tensor(np.asarray(context_actions), dtype=torch.float32)[None]
    tok = encode(eng, frames)
    branches, names = steer_speed_branches(acts, float(codec.encode(0.0, fast_mps)[1]), straight=True)
    imagined = decode(eng, branch_rollout(eng, tok, acts, branches, steps)[0]).numpy()  # (V, steps, H, W, 3)
    start = decode(eng, tok[0, -1:]).numpy()[0]
    labels = {"slow": "slow 0", "fast": f"fast {fast_mps:g}"}
    rows = [[start] + list(imagined[v]) for v in range(len(names))]
    img = grid_image(rows, [labels.get(n, n) for n in names], ["t"] + [f"+{i + 1}" for i in range(steps)], scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)
    return path


@torch.no_grad()
def write_rollout_gif(wm, tokenizer, data: str | Path, path: str | Path, n_futures: int = 4, split: str = "val",
                      context: int = 4, steps: int = 16, temperature: float = 1.0, clip: int = 0, seed: int = 0,
                      codec: ActionCodec | None = None, bf16: bool = True,
                      counterfactual_temperature: float | None = None, fps: float | None = None,
                      scale: int = 2) -> Path:
    """GIF: one real context from `split` (the `clip`-th non-overlapping clip of context+steps frames),
    then the real continuation beside `n_futures` futures sampled at `temperature` (seeds seed, seed+1,
    ...) under the same real actions; below, the left / straight / right counterfactual (steering held,
    the context's last target speed). Context frames are shown through the tokenizer in the model panels."""
    (frames, acts), C = real_clip(data, split, context + steps, clip, codec), context
    eng = make_engine(wm, tokenizer, temperature, seed, bf16)
    tok = encode(eng, frames)
    real_branch = acts[:, C - 1 : C - 1 + steps][:, None]  # (1, 1, steps, A)
    futures = []
    for i in range(n_futures):
        eng.seed(seed + i)
        futures.append(branch_rollout(eng, tok[:, :C], acts[:, :C], real_branch, steps)[0, 0])
    cf_eng = make_engine(wm, tokenizer, temperature if counterfactual_temperature is None else counterfactual_temperature,
                         seed + n_futures, bf16)
    v = acts[:, C - 1, 1]
    steer = torch.stack([torch.stack([torch.full_like(v, s), v], -1) for _, s in STEER_ROWS], 1)  # (1, 3, 2)
    cf = branch_rollout(cf_eng, tok[:, :C], acts[:, :C], steer, steps)[0]
    ctx_recon = decode(eng, tok[0, :C]).numpy()
    fut = decode(eng, torch.stack(futures)).numpy()  # (n, steps, H, W, 3)
    cfd = decode(eng, cf).numpy()  # (3, steps, H, W, 3)
    real = frames[0].numpy()
    out = []
    for t in range(C + steps):
        view = lambda arr, i: ctx_recon[t] if t < C else arr[i, t - C]  # noqa: E731
        row1 = [real[t]] + [view(fut, i) for i in range(n_futures)]
        row2 = [view(cfd, i) for i in range(3)]
        grid = grid_image([row1, row2], ["real act", "steer"], ["real"] + [f"sample {i + 1}" for i in range(n_futures)],
                          scale)
        label_tiles(grid, row=1, names=[n for n, _ in STEER_ROWS], tile=frames.shape[2] * scale)
        head = f"context frame {t + 1}/{C}" if t < C else f"imagined step +{t - C + 1}"
        out.append(np.concatenate([text_strip(head, grid.shape[1]), grid], 0))
    return write_gif(out, path, fps or EpisodeIndex(data, split=split).fps or 12.5)


@torch.no_grad()
def compare_models_picture(models: dict, data: str | Path, path: str | Path, split: str = "val", context: int = 4,
                           steps: int = 8, clip: int = 0, temperature: float = 0.0, seed: int = 0,
                           codec: ActionCodec | None = None, bf16: bool = True, scale: int = 2) -> Path:
    """PNG (and a GIF beside it): one real context from `split`, then the real continuation above each
    model's imagined future under the same real actions. `models`: name -> (world model, tokenizer), any
    kind (discrete or flow). Each model encodes the real context with its own tokenizer."""
    import imageio.v3 as iio

    (frames, acts), C = real_clip(data, split, context + steps, clip, codec), context
    real = frames[0].numpy()
    rows, names = [list(real[C - 1 :])], ["real"]
    for name, (wm, tok) in models.items():
        eng = make_engine(wm, tok, temperature, seed, bf16)
        lat = encode(eng, frames)
        fut = branch_rollout(eng, lat[:, :C], acts[:, :C], acts[:, C - 1 : C - 1 + steps][:, None], steps)[0, 0]
        rows.append([decode(eng, lat[0, C - 1 : C]).numpy()[0]] + list(decode(eng, fut).numpy()))
        names.append(name)
    img = grid_image(rows, names, ["t"] + [f"+{i + 1}" for i in range(steps)], scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)
    gif = [grid_image([[r[t]] for r in rows], names, ["t" if t == 0 else f"+{t}"], scale) for t in range(steps + 1)]
    write_gif(gif, path.with_suffix(".gif"), EpisodeIndex(data, split=split).fps or 12.5)
    return path


__all__ = ["compare_models_picture", "counterfactual_grid", "real_clip", "write_rollout_gif"]
