"""The camera-rig evaluation (`gaia-gym eval multiview`): how consistent the imagined views are with each
other, how close each is to the real rig, whether a steering counterfactual turns every view the same
way, and what the rig costs.

On held-out tracks of a rig dataset (`gaia-gym collect carracing --cameras ...`), real contexts of
`context` steps are rolled out under the logged actions (greedy decoding, as `eval world-model`) by

- **joint**: the rig world model, all views of a frame generated in one pass;
- **isolated**: the same weights shown one view at a time (the other views enter as hidden, as in view
  dropout), each view rolled out alone: what the joint pass adds over no cross-view attention;
- **independent** (optional): a single-camera world model rolling out each view from that view's own
  context, decoded by the same tokenizer: the views "imagined independently".

`cross_view_consistency` at each horizon: for every pair of cameras that overlap, the PSNR between one
view and its neighbour warped into it by the rig's exact geometry (`gaia_gym.sims.rig.overlap_psnr`,
the car left out), both directions, averaged; beside the real rig's own agreement (the ceiling: only
interpolation and the renderer's anti-aliasing differ) and the tokenizer's reconstruction of it.
Per-view PSNR by horizon is against the real view, with copy-last (the last context frame) beside it.

Counterfactual steering: left / right held for `steer_steps` from each context, the turn read back from
each view (`gaia_gym.evaluation.readback.turn_deg` with the camera's yaw); a view agrees with the front
when its turn has the same sign.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from gaia_gym.errors import ConfigError
from gaia_gym.evaluation.common import (EVAL_FIELDS, branch_rollout, decode, make_engine, select_clips,
                                        steer_speed_branches)
from gaia_gym.evaluation.readback import TURN_SIGN, turn_deg
from gaia_gym.metrics import psnr_uint8
from gaia_gym.models.layout import ActionCodec
from gaia_gym.sims.rig import Camera, dataset_rig, overlap_fraction, overlap_psnr

RIG_FIELDS = EVAL_FIELDS + ("views",)
MIN_OVERLAP = 0.05  # camera pairs sharing less of the frame than this are not compared


def rig_cameras(world_model) -> tuple[Camera, ...]:
    cams = tuple(Camera(*c) for c in world_model.cfg.cameras)
    if not cams:
        raise ConfigError("this world model has no camera rig: train one with `gaia-gym train world-model --cameras ...`")
    return cams


def overlapping_pairs(cams: Sequence[Camera]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(cams)) for j in range(i + 1, len(cams))
            if overlap_fraction(cams[i], cams[j]) >= MIN_OVERLAP]


def rig_consistency(frames: np.ndarray, cams: Sequence[Camera], pairs) -> np.ndarray:
    """(N, V, H, W, 3) uint8 rig frames -> (N,) overlap PSNR averaged over the pairs, both directions."""
    out = np.zeros(len(frames))
    for n, f in enumerate(frames):
        vals = [overlap_psnr(f[i], f[j], cams[i], cams[j]) for i, j in pairs]
        vals += [overlap_psnr(f[j], f[i], cams[j], cams[i]) for i, j in pairs]
        out[n] = float(np.mean(vals))
    return out


def _view_index(data, cams) -> list[int]:
    """Where each of the model's cameras sits in rig dataset `data`'s views."""
    have = [c.name for c in dataset_rig(data)]
    missing = [c.name for c in cams if c.name not in have]
    if missing:
        raise ConfigError(f"{data}'s rig ({', '.join(have)}) has no camera {missing[0]!r} of this model")
    return [have.index(c.name) for c in cams]


@torch.no_grad()
def encode_rig(engine, views: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(..., V, H, W, 3) uint8 -> (..., V, g, g) tokens with the engine's (rig) backend."""
    flat = views.reshape(-1, *views.shape[-4:])
    out = torch.cat([engine.encode(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return out.reshape(*views.shape[:-4], *out.shape[1:])


@torch.no_grad()
def _rollout(engine, tok: torch.Tensor, acts: torch.Tensor, C: int, H: int) -> torch.Tensor:
    """Latents (B, H, *L) of frames C .. C-1+H under the logged actions."""
    engine.reset(context=(tok[:, :C], acts[:, :C]))
    return torch.stack([engine.step(acts[:, C - 1 + s]).latents for s in range(H)], 1)


class _Scores:
    """Per-horizon lists of per-clip numbers."""

    def __init__(self, horizons) -> None:
        self.h = list(horizons)
        self.d: dict[str, dict[int, list]] = {}

    def add(self, key: str, h: int, values) -> None:
        self.d.setdefault(key, {x: [] for x in self.h})[h].extend(np.asarray(values, dtype=np.float64).ravel().tolist())

    def mean(self, key: str) -> dict[str, float]:
        return {str(h): round(float(np.mean(v)), 3) for h, v in self.d[key].items() if v}


@torch.no_grad()
def evaluate_multiview(bundle, data: str | Path, single=None, split: str = "val", context: int = 4,
                       horizons: Sequence[int] = (1, 4, 8, 16), max_clips: int | None = 64, batch_size: int = 16,
                       steer_steps: int = 8, seed: int = 0, bf16: bool = True, progress: bool = True) -> dict:
    """See the module docstring. `bundle`: a rig model's WorldBundle; `single`: an optional single-camera
    WorldBundle (its world model is run with `bundle`'s tokenizer, which must read the same codes)."""
    wm, tok = bundle.world_model, bundle.tokenizer
    cams = rig_cameras(wm)
    V, names = len(cams), [c.name for c in cams]
    pairs = overlapping_pairs(cams)
    pick = _view_index(data, cams)
    C, H = int(context), max(horizons)
    codec = bundle.codec or ActionCodec()
    joint = make_engine(wm, tok, 0.0, seed, bf16)
    indep = None
    if single is not None:
        if single.world_model.cfg.cameras:
            raise ConfigError("--single must be a single-camera world model")
        if single.world_model.cfg.grid != tok.cfg.grid:
            raise ConfigError("the single-camera model's token grid differs from the rig model's tokenizer")
        indep = make_engine(single.world_model, tok, 0.0, seed, bf16)
    clips = select_clips(data, split, C + max(H, steer_steps), max_clips, fields=RIG_FIELDS)
    if not clips:
        raise ConfigError(f"{data}: no {split} clip of {C + H} steps")
    S = _Scores(horizons)
    turns = {k: {n: [] for n in names} for k in ("left", "right")}
    real_turn_agree = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(clips), desc="eval multiview", unit="clip", disable=not progress)
    for i in range(0, len(clips), batch_size):
        part = clips[i : i + batch_size]
        views = torch.stack([c["views"][:, pick] for c in part])  # (B, T, V, h, w, 3)
        acts = torch.from_numpy(codec.encode(torch.stack([c["steering"] for c in part]).numpy(),
                                             torch.stack([c["target_speed_mps"] for c in part]).numpy()))
        lat = encode_rig(joint, views)  # (B, T, V, g, g)
        runs = {"joint": decode(joint, _rollout(joint, lat, acts, C, H)).numpy()}  # (B, H, V, h, w, 3)
        iso = []
        for v in range(V):
            with wm.seeing([v]):
                iso.append(decode(joint, _rollout(joint, lat, acts, C, H)).numpy()[:, :, v])
        runs["isolated"] = np.stack(iso, 2)
        if indep is not None:
            runs["independent"] = np.stack([decode(indep, _rollout(indep, lat[:, :, v], acts, C, H)).numpy()
                                            for v in range(V)], 2)
        real = views.numpy()
        recon = decode(joint, lat[:, C - 1 : C + H]).numpy()  # tokenizer's view of frames C-1 .. C-1+H
        for h in horizons:
            t = C - 1 + h
            S.add("consistency_real", h, rig_consistency(real[:, t], cams, pairs))
            S.add("consistency_reconstructed", h, rig_consistency(recon[:, h], cams, pairs))
            for name, fr in runs.items():
                S.add(f"consistency_{name}", h, rig_consistency(fr[:, h - 1], cams, pairs))
                for v, n in enumerate(names):
                    S.add(f"psnr_{name}_{n}", h, psnr_uint8(torch.from_numpy(fr[:, h - 1, v]), views[:, t, v]).numpy())
            for v, n in enumerate(names):
                S.add(f"psnr_copy_last_{n}", h, psnr_uint8(views[:, C - 1, v], views[:, t, v]).numpy())
                S.add(f"psnr_ceiling_{n}", h, psnr_uint8(torch.from_numpy(recon[:, h, v]), views[:, t, v]).numpy())
        # counterfactual steering, every view read back
        branches, bnames = steer_speed_branches(acts[:, :C], 0.0, straight=False)
        keep = [bnames.index("left"), bnames.index("right")]
        cf = branch_rollout(joint, lat[:, :C], acts[:, :C], branches[:, keep], steer_steps)  # (B, 2, k, V, g, g)
        start = decode(joint, lat[:, C - 1])  # (B, V, h, w, 3)
        cf_frames = decode(joint, cf)  # (B, 2, k, V, h, w, 3)
        for b_i, side in enumerate(("left", "right")):
            for v, n in enumerate(names):
                seq = torch.cat([start[:, None, v], cf_frames[:, b_i, :, v]], 1)
                turns[side][n] += turn_deg(seq, cams[v].yaw_deg).tolist()
        # the read-back on the real rig: do all views agree on the real turn?
        real_k = views[:, C - 1 : C + steer_steps]
        tr = np.stack([turn_deg(real_k[:, :, v], cams[v].yaw_deg).numpy() for v in range(V)], 1)  # (B, V)
        moving = np.abs(tr[:, 0]) >= 5.0
        real_turn_agree += (np.sign(tr[moving]) == np.sign(tr[moving, :1])).tolist()
        bar.update(len(part))
    bar.close()
    runs_names = ["joint", "isolated"] + (["independent"] if indep is not None else [])
    cons = {"pairs": [f"{names[i]}-{names[j]}" for i, j in pairs],
            "overlap_fraction": {f"{names[i]}-{names[j]}": round(overlap_fraction(cams[i], cams[j]), 3) for i, j in pairs},
            "real_rig": S.mean("consistency_real"), "reconstructed_rig": S.mean("consistency_reconstructed")}
    for r in runs_names:
        cons[r] = S.mean(f"consistency_{r}")
    per_view = {n: {"copy_last": S.mean(f"psnr_copy_last_{n}"), "tokenizer_ceiling": S.mean(f"psnr_ceiling_{n}"),
                    **{r: S.mean(f"psnr_{r}_{n}") for r in runs_names}} for n in names}
    steer = {}
    for n in names:
        left, right = np.asarray(turns["left"][n]), np.asarray(turns["right"][n])
        steer[n] = {"mean_turn_deg_left": round(float(left.mean()), 2), "mean_turn_deg_right": round(float(right.mean()), 2),
                    "right_minus_left_deg": round(float((right - left).mean()), 2),
                    "order_accuracy": round(float((right > left).mean()), 3)}
    front_l, front_r = np.asarray(turns["left"][names[0]]), np.asarray(turns["right"][names[0]])
    for n in names[1:]:
        l, r = np.asarray(turns["left"][n]), np.asarray(turns["right"][n])
        steer[n]["sign_agreement_with_front"] = round(float(np.mean(np.r_[np.sign(l) == np.sign(front_l),
                                                                           np.sign(r) == np.sign(front_r)])), 3)
        steer[n]["correlation_with_front"] = round(float(np.corrcoef(np.r_[l, r], np.r_[front_l, front_r])[0, 1]), 3)
    real_agree = np.asarray(real_turn_agree)
    return {
        "cameras": [c.__dict__ for c in cams], "split": split, "clips": len(clips), "context": C,
        "horizons": list(horizons), "decoding": "greedy", "seed": seed,
        "cross_view_consistency": cons,
        "per_view_psnr": per_view,
        "counterfactual_steering": {"steps": steer_steps, "turn_sign": TURN_SIGN, "per_view": steer,
                                    "real_rig_views_agreeing_with_front": round(float(real_agree.mean()), 3)
                                    if real_agree.size else None},
        "seconds": round(time.perf_counter() - t0, 1),
    }


@torch.no_grad()
def rig_picture(bundle, data: str | Path, out: str | Path, single=None, split: str = "val", clip: int = 0,
                context: int = 4, steps: int = 16, seed: int = 0, bf16: bool = True, fps: float = 4.0) -> list[str]:
    """The real rig beside the imagined rig (and, with `single`, each view imagined independently) for the
    same held-out context and logged actions: a GIF at `out` and a PNG contact sheet of horizons 1, 4, 8,
    16 beside it. Returns the paths written."""
    from gaia_gym.media import grid_image, rig_mosaics, text_strip, write_gif

    wm, tok = bundle.world_model, bundle.tokenizer
    cams = rig_cameras(wm)
    yaws = [c.yaw_deg for c in cams]
    pick = _view_index(data, cams)
    clips = select_clips(data, split, context + steps, None, fields=RIG_FIELDS)
    if not 0 <= clip < len(clips):
        raise ConfigError(f"clip must lie in [0, {len(clips)}): {data} has {len(clips)} {split} clips of {context + steps} steps")
    c = clips[clip]
    views = c["views"][:, pick][None]  # (1, T, V, h, w, 3)
    codec = bundle.codec or ActionCodec()
    acts = torch.from_numpy(codec.encode(c["steering"][None].numpy(), c["target_speed_mps"][None].numpy()))
    joint = make_engine(wm, tok, 0.0, seed, bf16)
    lat = encode_rig(joint, views)
    rows = {"real rig": views[0, context:].numpy(), "imagined rig": decode(joint, _rollout(joint, lat, acts, context, steps))[0].numpy()}
    if single is not None:
        ind = make_engine(single.world_model, tok, 0.0, seed, bf16)
        rows["views imagined alone"] = np.stack([decode(ind, _rollout(ind, lat[:, :, v], acts, context, steps))[0].numpy()
                                                 for v in range(len(cams))], 1)
    mos = {k: rig_mosaics(v, yaws) for k, v in rows.items()}  # (steps, H', W', 3)
    names = list(mos)
    frames = []
    for t in range(steps):
        g = grid_image([[mos[k][t] for k in names]], [""], names, 2, label_w=4)
        frames.append(np.concatenate([text_strip(f"imagined step +{t + 1} (same context and actions)", g.shape[1]), g], 0))
    out = Path(out)
    write_gif(np.stack(frames), out, fps)
    hs = [h for h in (1, 4, 8, 16) if h <= steps]
    sheet = grid_image([[mos[k][h - 1] for h in hs] for k in names], names, [f"+{h}" for h in hs], 1, label_w=130)
    import imageio.v3 as iio

    png = out.with_suffix(".png")
    iio.imwrite(png, sheet)
    return [str(out), str(png)]


# ----------------------------------------------------------------------------------------------
# cost: imagined rig steps vs the real simulator rendering the same rig, in one run
# ----------------------------------------------------------------------------------------------
def _real_rig_worker(args) -> tuple[int, float]:
    seconds, seed, cams = args
    from gaia_gym.sims.carracing import CarRacingDrive
    from gaia_gym.sims.rig import render_rig

    drive = CarRacingDrive()
    rng = np.random.default_rng(seed)
    steps, t0 = 0, time.perf_counter()
    drive.reset(seed)
    while time.perf_counter() - t0 < seconds:
        s = drive.step(float(rng.uniform(-1, 1)), float(rng.uniform(0, 60)))
        render_rig(drive.sim, cams, drive.last_obs)
        steps += 1
        if s.terminated or s.truncated:
            drive.reset(seed + steps)
    drive.close()
    return steps, time.perf_counter() - t0


def measure_real_rig(cams: Sequence[Camera], seconds: float = 10.0, processes: int | None = None) -> float:
    """gaia_gym steps (4 simulator frames, then every camera rendered) per wall second of the real
    CarRacing-v3 over `processes` processes (one per core)."""
    import multiprocessing as mp
    import os

    n = processes or os.cpu_count() or 1
    with mp.get_context("spawn").Pool(n) as pool:
        out = pool.map(_real_rig_worker, [(float(seconds), 8_000_000 + 1000 * w, tuple(cams)) for w in range(n)])
    return sum(s for s, _ in out) / max(t for _, t in out)


def rig_cost(bundle, view_counts: Sequence[int] = (1, 2, 4), batch: int = 64, seconds: float = 4.0,
             real_seconds: float = 10.0, rounds: int = 2, bf16: bool = True, int8: bool = False) -> dict:
    """Imagined steps/s at `batch` rows for the first k cameras of the rig model (the same weights over a
    smaller rig: `WorldBundle.with_cameras`), tokens only and with every view's frame decoded, each as a
    ratio to the real simulator rendering the same k cameras; rounds interleave real and imagined."""
    from gaia_gym.evaluation.throughput import cpu_name, imagined_steps_per_s

    wm = bundle.world_model
    cams = rig_cameras(wm)
    res: dict[int, dict[str, list]] = {k: {"real": [], "tokens": [], "frames": []} for k in view_counts}
    for _ in range(rounds):
        for k in view_counts:
            if k > len(cams):
                raise ConfigError(f"the rig has {len(cams)} cameras, cannot measure {k}")
            sub = bundle.with_cameras([c.name for c in cams[:k]]).with_backend(int8=int8)
            res[k]["real"].append(measure_real_rig(cams[:k], real_seconds))
            for what in ("tokens", "frames"):
                res[k][what].append(imagined_steps_per_s(sub, batch, frames=what == "frames", seconds=seconds,
                                                         bf16=bf16))
    out = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "batch": batch, "int8": int8, "rounds": rounds,
           "per_views": {}}
    for k, r in res.items():
        real = float(np.median(r["real"]))
        tok, fr = float(np.median(r["tokens"])), float(np.median(r["frames"]))
        out["per_views"][str(k)] = {"cameras": [c.name for c in cams[:k]], "real_rig_steps_per_s": round(real, 1),
                                   "imagined_steps_per_s_tokens": round(tok, 1), "imagined_steps_per_s_frames": round(fr, 1),
                                   "tokens_vs_real": round(tok / real, 2), "frames_vs_real": round(fr / real, 2)}
    return out



__all__ = ["evaluate_multiview", "rig_picture", "rig_cost", "measure_real_rig", "rig_consistency", "overlapping_pairs",
           "encode_rig", "RIG_FIELDS"]
