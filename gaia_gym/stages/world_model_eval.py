"""World-model evaluation: one run, one dict; every quality number is deterministic given the models and data.

`evaluate_world_model` reads clips of ``context + max(horizons)`` real frames from a split (held-out tracks
by default), spread evenly over all of the split's non-overlapping clips, and measures:

- **teacher forcing**: next-frame token cross-entropy and accuracy (eval mode, no action dropout), on the
  first ``min(clip, wm.cfg.context)`` frames of each clip (the window the model was trained on); reward
  MAE of every block's reward head; termination AUC from the end logits, over those clips plus a window
  ending at the last step of every terminated episode of the split (evenly spread clips rarely hold one);
- **open-loop rollouts**: the context is prefilled, then the model imagines ``max(horizons)`` frames
  driven by the *real* actions (greedy or sampled); imagined frames are decoded and compared with the
  real ones (PSNR/SSIM per horizon), next to two references from the same frames: copying the last
  context frame, and the tokenizer's own reconstruction (the ceiling a token model can reach); reward
  MAE along the rollout;
- **action adherence** (given a `gaia_gym.probe.Probe` trained on real frames only): from the same
  contexts, rollouts with full-left vs full-right steering (at the context's last target speed) and with
  a 0 m/s vs ``fast_mps`` target speed (at its last steering); the probe reads the decoded pair (frame
  context-1, frame context-1+steps) and the accuracy is the fraction read back as the commanded direction;
- **throughput**: imagined steps/s at batch 64 (tokens only, bf16 autocast where fast, warm-up excluded) and, in the
  same run, the real CarRacing-v3 simulator with one process per core, giving how many times faster than
  the real simulator the world model produces driving time.

Conventions: block t = [tokens of frame t][a_t]; ``step(cache, t, tokens_t, a_t)`` returns frame t+1.
After ``prefill`` of the context, the first step is block context-1, so rollout step i (0-based) imagines
frame context+i, i.e. horizon h = i+1 is frame context-1+h. Model actions are
``ActionCodec().encode(steering, target_speed_mps)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gaia_gym.data.format import load_episode
from gaia_gym.envs.render import grid_image, text_strip
from gaia_gym.data.loader import ClipDataset, EpisodeIndex
from gaia_gym.metrics import psnr_uint8, ssim_uint8
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.world_model import DEFAULT_TOP_K, KVCache, WorldModel, make_sampler
from gaia_gym.probe import IGNORE, pair_labels
from gaia_gym.readback import turn_deg
from gaia_gym.precision import autocast, precision_name

EVAL_FIELDS = ("frames", "steering", "target_speed_mps", "speed_mps", "reward", "terminated")
SIM_HZ = 50.0  # CarRacing-v3 simulates at 50 frames per second
DEFAULT_FAST_MPS = 80.0
STEER_ROWS = (("left", -1.0), ("straight", 0.0), ("right", 1.0))


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
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
    # average 1-based rank over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sampler(temperature: float, seed: int, device: torch.device):
    gen = torch.Generator(device=device).manual_seed(int(seed)) if temperature > 0 else None
    return make_sampler(temperature, DEFAULT_TOP_K, generator=gen)


@torch.no_grad()
def _chunked(fn, x: torch.Tensor, item_dims: int, bf16: bool, device: torch.device, chunk: int = 256):
    """Apply `fn` to x's items (its last `item_dims` dims) in chunks of `chunk`, keeping leading dims."""
    lead = x.shape[: x.dim() - item_dims]
    flat = x.reshape(-1, *x.shape[x.dim() - item_dims :])
    with autocast(device, bf16):
        out = torch.cat([fn(flat[i : i + chunk].to(device)) for i in range(0, len(flat), chunk)])
    return out.reshape(*lead, *out.shape[1:])


def _encode(tokenizer, frames: torch.Tensor, bf16: bool, chunk: int = 256) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> tokens (..., g, g) on the tokenizer's device."""
    return _chunked(tokenizer.encode, frames, 3, bf16, _device(tokenizer), chunk)


def _decode(tokenizer, tokens: torch.Tensor, bf16: bool, chunk: int = 256) -> torch.Tensor:
    """tokens (..., g, g) -> uint8 frames (..., H, W, 3) on the CPU."""
    return _chunked(lambda t: tokenizer.decode(t).cpu(), tokens, 2, bf16, _device(tokenizer), chunk)


def _model_actions(steering: torch.Tensor, target_speed_mps: torch.Tensor, codec: ActionCodec) -> torch.Tensor:
    return torch.from_numpy(codec.encode(steering.numpy(), target_speed_mps.numpy()))


def _check_compatible(wm: WorldModel, tokenizer) -> None:
    tc = tokenizer.cfg
    if tc.grid != wm.cfg.grid or tc.vocab_size != wm.cfg.vocab:
        raise ValueError(f"the tokenizer ({tc.grid}x{tc.grid} tokens, {tc.vocab_size} codes) does not match the "
                         f"world model ({wm.cfg.grid}x{wm.cfg.grid}, vocab {wm.cfg.vocab})")


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


def _end_windows(data: str | Path, split: str, length: int, max_windows: int | None) -> list[dict]:
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


def _stack(clips: list[dict], codec: ActionCodec) -> dict[str, torch.Tensor]:
    b = {f: torch.stack([c[f] for c in clips]) for f in EVAL_FIELDS}
    b["actions"] = _model_actions(b["steering"], b["target_speed_mps"], codec)
    return b


# ----------------------------------------------------------------------------------------------
# rollouts
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def branch_rollout(wm: WorldModel, ctx_tokens: torch.Tensor, ctx_actions: torch.Tensor,
                   branch_actions: torch.Tensor, steps: int, sample, bf16: bool = True) -> torch.Tensor:
    """Imagine `steps` frames after a real context, for V action branches that share it.

    ctx_tokens (B, C, g, g), ctx_actions (B, C, A) (the last context action is replaced by the branch's);
    branch_actions (B, V, A) held constant, or (B, V, steps, A). The context is prefilled once and its
    cache copied to the B*V rows. Returns tokens (B, V, steps, g, g): frames C .. C-1+steps.
    """
    dev = _device(wm)
    B, C = ctx_tokens.shape[:2]
    V = branch_actions.shape[1]
    ctx_tokens, ctx_actions = ctx_tokens.to(dev), ctx_actions.to(dev)
    acts = branch_actions.to(dev).reshape(B * V, *branch_actions.shape[2:])
    with autocast(dev, bf16):
        cache = KVCache()
        wm.prefill(cache, ctx_tokens, ctx_actions)
        if cache.length:
            cache = cache.select(torch.arange(B, device=dev).repeat_interleave(V))
        cur = ctx_tokens[:, C - 1].repeat_interleave(V, dim=0)
        out = []
        for i in range(steps):
            a = acts if acts.dim() == 2 else acts[:, i]
            cur, _mem, _r, _e = wm.step(cache, C - 1 + i, cur, a, sample)
            out.append(cur)
    toks = torch.stack(out, dim=1)
    return toks.reshape(B, V, steps, *toks.shape[-2:])


def _steer_speed_branches(ctx_actions: torch.Tensor, fast_action: float, straight: bool) -> tuple[torch.Tensor, list[str]]:
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


def _probe_read(probe, start: torch.Tensor, imagined: torch.Tensor) -> dict[str, torch.Tensor]:
    """Probe on (start frame, last imagined frame); imagined (N, steps, H, W, 3)."""
    if getattr(probe.cfg, "frames", 2) == 4:
        return probe.predict(start, imagined[:, -1], imagined[:, 0], imagined[:, -2] if imagined.shape[1] > 1 else start)
    return probe.predict(start, imagined[:, -1])


# ----------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_imagination_speed(wm: WorldModel, batch_size: int = 64, steps: int = 24, warmup: int = 3,
                              bf16: bool = True, temperature: float = 1.0, seed: int = 0,
                              top_k: int = DEFAULT_TOP_K) -> float:
    """Imagined steps per second at `batch_size` (tokens only, nothing decoded), the context window full,
    sampling as an environment would; the first `warmup` steps are not timed."""
    dev = _device(wm)
    cfg = wm.cfg
    g = torch.Generator().manual_seed(seed)
    C = max(2, cfg.context)
    tokens = torch.randint(0, cfg.vocab, (batch_size, C, cfg.grid, cfg.grid), generator=g).to(dev)
    actions = (torch.rand(batch_size, C, cfg.action_dim, generator=g) * 2 - 1).to(dev)
    sample = make_sampler(temperature, top_k, torch.Generator(dev).manual_seed(seed))
    with autocast(dev, bf16):
        cache = KVCache()
        wm.prefill(cache, tokens, actions)
        cur, t0 = tokens[:, -1], None
        for i in range(warmup + steps):
            if i == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            cur, *_ = wm.step(cache, C - 1 + i, cur, actions[:, -1], sample)
        _sync(dev)
    return batch_size * steps / (time.perf_counter() - t0)


def measure_real_driving(seconds: float = 15.0, processes: int | None = None) -> dict:
    """The raw CarRacing-v3 simulator, one process per core (`_raw_worker`: random driving, rendering as
    it always does, resets included): simulated frames per wall second over all processes."""
    import multiprocessing as mp

    from gaia_gym.sims.carracing_collect import _raw_worker

    n = processes or os.cpu_count() or 1
    with mp.get_context("spawn").Pool(n) as pool:
        out = pool.map(_raw_worker, [(float(seconds), 7_000_000 + w) for w in range(n)])
    fps = sum(f for f, _ in out) / max(t for _, t in out)
    return {"real_sim_frames_per_s": fps, "real_sim_processes": n, "real_sim_seconds": float(seconds)}


# ----------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_world_model(
    wm: WorldModel,
    tokenizer,
    data: str | Path,
    split: str = "val",
    context: int = 4,
    horizons: Sequence[int] = (1, 2, 4, 8, 16),
    max_clips: int | None = 128,
    batch_size: int = 16,
    probe=None,
    sample_temperature: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    *,
    codec: ActionCodec | None = None,
    bf16: bool = True,
    counterfactual_steps: int = 8,
    fast_mps: float = DEFAULT_FAST_MPS,
    moving_mps: float = 10.0,
    max_end_windows: int | None = 256,
    throughput_batch: int = 64,
    throughput_steps: int = 24,
    real_sim_seconds: float = 15.0,
    real_sim_frames_per_s: float | None = None,
    real_sim_processes: int | None = None,
    grid_path: str | Path | None = None,
) -> dict:
    """Every world-model metric in one run (see the module docstring); returns a JSON-ready dict.

    `max_clips`: clips of ``context + max(horizons)`` frames, spread evenly over the split (None: all).
    `sample_temperature`: 0 = greedy rollouts (and counterfactuals), else sampled with `seed`.
    `real_sim_seconds`: how long to run the real simulator for the speed ratio (0: skip it, the ratio is
    None unless `real_sim_frames_per_s` gives a figure measured elsewhere). `throughput_steps` 0 skips the
    throughput measurement. `grid_path`: also write `counterfactual_grid` of the first clip there.

    Counterfactuals (with a `probe`) run `counterfactual_steps` steps (the probe's gap). Besides the
    headline accuracies over all contexts, ``..._steering_accuracy_moving`` keeps the contexts whose real
    speed at the last context frame exceeds `moving_mps` (a stopped car cannot turn), and
    ``..._speed_accuracy_midrange`` those between `moving_mps` and ``fast_mps - moving_mps`` (room both to
    slow down and to speed up). ``probe_*_accuracy_on_reconstructions`` is the probe on the tokenizer's
    reconstruction of the real continuation with its real labels: how far the probe itself can be trusted
    on decoded frames (needs ``max(horizons) >= counterfactual_steps``).
    """
    from tqdm import tqdm

    codec = codec or ActionCodec()
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise ValueError(f"horizons must be positive, got {horizons}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    _check_compatible(wm, tokenizer)
    wm.eval()
    tokenizer.eval()
    if probe is not None:
        probe.eval()
    dev = _device(wm)
    H = horizons[-1]
    L = context + H
    W = min(L, wm.cfg.context)  # teacher-forced window
    if W < 2:
        raise ValueError("teacher forcing needs windows of >= 2 frames")
    cf_steps = int(counterfactual_steps)
    fast_action = float(codec.encode(0.0, fast_mps)[1])

    clips = select_clips(data, split, L, max_clips)
    if not clips:
        raise ValueError(f"{data}: no {split!r} clip of {L} frames")

    ce_sum = correct = n_tok = 0.0
    r_tf_err = r_tf_n = r_ro_err = r_ro_n = 0.0
    end_scores: list[np.ndarray] = []
    end_labels: list[np.ndarray] = []
    psnr_h = {h: [] for h in horizons}
    ssim_h = {h: [] for h in horizons}
    copy_psnr_h = {h: [] for h in horizons}
    copy_ssim_h = {h: [] for h in horizons}
    ceil_psnr, ceil_ssim = [], []
    cf: dict[str, list[torch.Tensor]] = {k: [] for k in ("left", "right", "slow", "fast")}
    cf_speed: list[torch.Tensor] = []  # measured speed at the last context frame
    cf_motion: dict[str, list[torch.Tensor]] = {k: [] for k in ("left", "right", "slow", "fast")}
    ref: dict[str, list[float]] = {"steer": [], "speed": [], "rotation": []}
    cf_turn: dict[str, list[torch.Tensor]] = {"left": [], "right": []}
    ro_sample = _sampler(sample_temperature, seed, dev)
    cf_sample = _sampler(sample_temperature, seed + 1, dev)
    C = context

    def teacher_forced(b: dict, tok: torch.Tensor):
        with autocast(dev, bf16):
            out = wm(tok[:, :W], b["actions"][:, :W].to(dev))
        end_scores.append(out.end_logit.float().cpu().numpy().ravel())
        end_labels.append(b["terminated"][:, :W].numpy().ravel())
        return out

    bar = tqdm(total=len(clips), unit="clip", desc=f"eval world model ({split})", disable=not progress)
    for i in range(0, len(clips), batch_size):
        b = _stack(clips[i : i + batch_size], codec)
        frames, acts = b["frames"], b["actions"].to(dev)
        B = len(frames)
        tok = _encode(tokenizer, frames, bf16).to(dev)  # (B, L, g, g)

        # teacher forcing
        out = teacher_forced(b, tok)
        logits = wm.next_frame_logits(out).float()
        target = wm.patchify(tok[:, 1:W])
        nll, ok = wm.image_nll(logits, target)
        ce_sum += float(nll.sum())
        correct += float(ok.sum())
        n_tok += target.numel()
        r_tf_err += float((out.reward.float().cpu() - b["reward"][:, :W]).abs().sum())
        r_tf_n += B * W

        # open-loop rollout with the real actions
        real_actions = acts[:, C - 1 : C - 1 + H][:, None]  # (B, 1, H, A)
        with autocast(dev, bf16):
            cache = KVCache()
            wm.prefill(cache, tok[:, :C], acts[:, :C])
            cur, preds, rewards = tok[:, C - 1], [], []
            for s in range(H):
                cur, _mem, r, _e = wm.step(cache, C - 1 + s, cur, real_actions[:, 0, s], ro_sample)
                preds.append(cur)
                rewards.append(r.float().cpu())
        r_ro_err += float((torch.stack(rewards, 1) - b["reward"][:, C - 1 : C - 1 + H]).abs().sum())
        r_ro_n += B * H
        imagined = _decode(tokenizer, torch.stack([preds[h - 1] for h in horizons], 1), bf16)  # (B, nh, ...)
        for j, h in enumerate(horizons):
            real = frames[:, C - 1 + h]
            psnr_h[h].append(psnr_uint8(imagined[:, j], real))
            ssim_h[h].append(ssim_uint8(imagined[:, j], real))
            copy_psnr_h[h].append(psnr_uint8(frames[:, C - 1], real))
            copy_ssim_h[h].append(ssim_uint8(frames[:, C - 1], real))
        recon = _decode(tokenizer, tok[:, C:], bf16)  # (B, H, ...)
        ceil_psnr.append(psnr_uint8(recon.flatten(0, 1), frames[:, C:].flatten(0, 1)))
        ceil_ssim.append(ssim_uint8(recon.flatten(0, 1), frames[:, C:].flatten(0, 1)))

        # action adherence: counterfactual branches, read back by the track's rotation (no learned model)
        # and, when given, by the inverse-dynamics probe
        if cf_steps > 0:
            branches, names = _steer_speed_branches(acts[:, :C], fast_action, straight=False)
            cf_tok = branch_rollout(wm, tok[:, :C], acts[:, :C], branches, cf_steps, cf_sample, bf16)
            start = _decode(tokenizer, tok[:, C - 1], bf16)  # the tokenizer's view of the last real frame
            cf_frames = _decode(tokenizer, cf_tok, bf16)  # (B, V, steps, H, W, 3)
            seq = torch.cat([start[:, None, None].expand(-1, len(names), -1, -1, -1, -1), cf_frames], 2)
            for v, name in enumerate(names):
                if name in ("left", "right"):
                    cf_turn[name].append(turn_deg(seq[:, v]))
            cf_speed.append(b["speed_mps"][:, C - 1])
            # motion energy of each branch: mean absolute change between consecutive imagined frames
            motion = (seq[:, :, 1:].float() - seq[:, :, :-1].float()).abs().mean(dim=(2, 3, 4, 5))  # (B, V)
            for v, name in enumerate(names):
                cf_motion[name].append(motion[:, v])
            if cf_steps <= H:  # references: the instruments on the reconstructed real continuation
                k = cf_steps
                real_rec = _decode(tokenizer, tok[:, C - 1 : C + k], bf16)  # frames C-1 .. C-1+k
                st, sp = b["steering"][:, C - 1 : C - 1 + k], b["speed_mps"][:, C - 1]
                held = (st.sign() == st[:, :1].sign()).all(1) & (st.mean(1).abs() >= 0.3) & (sp >= moving_mps)
                if held.any():
                    t = turn_deg(real_rec[held])
                    ref["rotation"] += ((t > 0) == (st[held].mean(1) > 0)).float().tolist()
                if probe is not None:
                    p = _probe_read(probe, real_rec[:, 0], real_rec[:, 1:])
                    for r in range(B):
                        ys, yf = pair_labels(b["steering"][r, C - 1 :].numpy(), b["speed_mps"][r, C - 1 :].numpy(), k,
                                             probe.cfg)
                        if ys != IGNORE:
                            ref["steer"].append(float((p["steer_right_prob"][r] > 0.5) == (ys == 1.0)))
                        if yf != IGNORE:
                            ref["speed"].append(float((p["faster_prob"][r] > 0.5) == (yf == 1.0)))
            if probe is not None:
                for v, name in enumerate(names):
                    p = _probe_read(probe, start, cf_frames[:, v])
                    cf[name].append(p["steer_right_prob"] if name in ("left", "right") else p["faster_prob"])
        bar.update(B)
    bar.close()

    # termination: windows ending where the episodes end (evenly spread clips rarely contain an end)
    windows = _end_windows(data, split, W, max_end_windows)
    for i in range(0, len(windows), batch_size):
        b = _stack(windows[i : i + batch_size], codec)
        teacher_forced(b, _encode(tokenizer, b["frames"], bf16).to(dev))
    scores, labels = np.concatenate(end_scores), np.concatenate(end_labels)
    auc = roc_auc(scores, labels)

    def mean(xs: list[torch.Tensor]) -> float:
        return float(torch.cat(xs).float().mean())

    res: dict = {
        "split": split,
        "clips": len(clips),
        "context": C,
        "horizons": horizons,
        "sample_temperature": sample_temperature,
        "precision": precision_name(dev, bf16),
        "teacher_forced_window": W,
        "val_cross_entropy": ce_sum / n_tok,
        "token_accuracy": correct / n_tok,
        "psnr_by_horizon": {str(h): mean(psnr_h[h]) for h in horizons},
        "ssim_by_horizon": {str(h): mean(ssim_h[h]) for h in horizons},
        "copy_last_psnr_by_horizon": {str(h): mean(copy_psnr_h[h]) for h in horizons},
        "copy_last_ssim_by_horizon": {str(h): mean(copy_ssim_h[h]) for h in horizons},
        "tokenizer_ceiling_psnr": mean(ceil_psnr),
        "tokenizer_ceiling_ssim": mean(ceil_ssim),
        "reward_mae_teacher_forced": r_tf_err / r_tf_n,
        "reward_mae_rollout": r_ro_err / r_ro_n,
        "termination_auc": auc,
        "termination_positives": int(labels.sum()),
        "termination_end_windows": len(windows),
    }
    if auc is None:
        res["termination_note"] = (f"the {split!r} split has no termination in the evaluated windows: AUC undefined"
                                   if not labels.any() else "every evaluated step is a termination: AUC undefined")

    def frac(x: torch.Tensor, m: torch.Tensor | None = None) -> float | None:
        x = x if m is None else x[m]
        return float(x.float().mean()) if x.numel() else None

    if cf_steps > 0 and cf_turn["left"]:
        tl, tr = torch.cat(cf_turn["left"]), torch.cat(cf_turn["right"])
        v0 = torch.cat(cf_speed)
        moving = v0 > moving_mps
        mid = moving & (v0 < fast_mps - moving_mps)
        steer_ok = torch.stack([tl < 0, tr > 0], 1).float()  # (N, 2)
        res.update({
            "counterfactual_steps": cf_steps,
            "counterfactual_readout": "track rotation between consecutive decoded frames (gaia_gym.readback), "
                                      "summed over the steps; no learned model",
            # headline: each branch (full left, full right, from the same real context) read back as turning
            # the commanded way
            "counterfactual_steering_accuracy": frac(steer_ok),
            "counterfactual_steering_accuracy_moving": frac(steer_ok, moving),
            "counterfactual_contexts": len(tl),
            "counterfactual_contexts_moving": int(moving.sum()),
            # paired: from the same context, the right branch turns further right than the left branch
            "counterfactual_steering_paired_accuracy": frac((tr > tl).float()),
            "counterfactual_turn_deg": {"left": float(tl.mean()), "right": float(tr.mean())},
            # the instrument itself on reconstructed real continuations with held steering (its trust)
            "readback_real_accuracy": float(np.mean(ref["rotation"])) if ref["rotation"] else None,
            "readback_real_windows": len(ref["rotation"]),
            "counterfactual_speed_paired_motion_accuracy": frac(
                (torch.cat(cf_motion["fast"]) > torch.cat(cf_motion["slow"])).float()),
            "counterfactual_motion_energy": {k: float(torch.cat(v).mean()) for k, v in cf_motion.items()},
            "counterfactual_fast_mps": fast_mps,
        })
    if probe is not None and cf["left"]:
        left, right = torch.cat(cf["left"]), torch.cat(cf["right"])
        slow, fast = torch.cat(cf["slow"]), torch.cat(cf["fast"])
        steer_ok = torch.stack([left < 0.5, right > 0.5], 1).float()
        speed_ok = torch.stack([slow < 0.5, fast > 0.5], 1).float()
        res.update({
            # the inverse-dynamics probe's reading of the same branches (a learned instrument)
            "counterfactual_steering_accuracy_probe": frac(steer_ok),
            "counterfactual_steering_paired_accuracy_probe": frac((right > left).float()),
            "counterfactual_speed_accuracy": frac(speed_ok),
            "counterfactual_speed_accuracy_midrange": frac(speed_ok, mid),
            "counterfactual_right_prob_when_left": float(left.mean()),
            "counterfactual_right_prob_when_right": float(right.mean()),
            "counterfactual_faster_prob_when_slow": float(slow.mean()),
            "counterfactual_faster_prob_when_fast": float(fast.mean()),
            "probe_steering_accuracy_on_reconstructions": float(np.mean(ref["steer"])) if ref["steer"] else None,
            "probe_speed_accuracy_on_reconstructions": float(np.mean(ref["speed"])) if ref["speed"] else None,
            "probe_reference_pairs": {"steer": len(ref["steer"]), "speed": len(ref["speed"])},
        })
    elif cf_steps > 0:
        res.update({"counterfactual_speed_accuracy": None, "counterfactual_note": "no probe given (speed read-back)"})

    if grid_path is not None:
        first = clips[0]
        acts0 = _model_actions(first["steering"], first["target_speed_mps"], codec)
        counterfactual_grid(wm, tokenizer, first["frames"][:C], acts0[:C], grid_path, steps=cf_steps,
                            fast_mps=fast_mps, codec=codec, bf16=bf16, temperature=sample_temperature, seed=seed)
        res["counterfactual_grid"] = str(grid_path)

    # throughput: imagination vs the real simulator, measured in this run
    try:
        fps = EpisodeIndex(data, split=split).fps or 12.5
    except Exception:  # noqa: BLE001 - the split was read above; this is only the frame rate
        fps = 12.5
    frames_per_step = SIM_HZ / fps
    res["sim_frames_per_step"] = frames_per_step
    steps_per_s = None
    if throughput_steps > 0:
        steps_per_s = measure_imagination_speed(wm, throughput_batch, throughput_steps, bf16=bf16, seed=seed)
    res[f"imagined_frames_per_s_b{throughput_batch}"] = steps_per_s
    res["imagined_driving_s_per_s"] = None if steps_per_s is None else steps_per_s * frames_per_step / SIM_HZ
    real = None
    if real_sim_frames_per_s is not None:
        real = {"real_sim_frames_per_s": float(real_sim_frames_per_s), "real_sim_source": "given"}
    elif real_sim_seconds > 0:
        real = {**measure_real_driving(real_sim_seconds, real_sim_processes), "real_sim_source": "measured"}
    if real is not None:
        res.update(real)
        res["real_driving_s_per_s"] = real["real_sim_frames_per_s"] / SIM_HZ
    res["imagined_vs_real_driving_ratio"] = (
        None if steps_per_s is None or real is None
        else (steps_per_s * frames_per_step / SIM_HZ) / (real["real_sim_frames_per_s"] / SIM_HZ))
    res["device"] = str(dev)
    res["torch_threads"] = torch.get_num_threads()
    return res


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def counterfactual_grid(wm: WorldModel, tokenizer, context_frames, context_actions, path: str | Path,
                        steps: int = 8, fast_mps: float = DEFAULT_FAST_MPS, codec: ActionCodec | None = None,
                        bf16: bool = True, temperature: float = 0.0, seed: int = 0, scale: int = 2) -> Path:
    """PNG of what the model imagines after one real context under held actions: rows steer left /
    straight / right (at the context's last target speed) and slow (0 m/s) / fast (`fast_mps`) (at its
    last steering); the first column is the last context frame (through the tokenizer), then one column
    per imagined step.

    context_frames uint8 (C, H, W, 3); context_actions model actions (C, 2) in [-1, 1].
    """
    import imageio.v3 as iio

    codec = codec or ActionCodec()
    _check_compatible(wm, tokenizer)
    wm.eval()
    tokenizer.eval()
    dev = _device(wm)
    frames = torch.as_tensor(np.asarray(context_frames))[None]  # (1, C, H, W, 3)
    acts = torch.as_tensor(np.asarray(context_actions), dtype=torch.float32)[None]
    tok = _encode(tokenizer, frames, bf16).to(dev)
    branches, names = _steer_speed_branches(acts, float(codec.encode(0.0, fast_mps)[1]), straight=True)
    cf_tok = branch_rollout(wm, tok, acts, branches, steps, _sampler(temperature, seed, dev), bf16)
    imagined = _decode(tokenizer, cf_tok[0], bf16).numpy()  # (V, steps, H, W, 3)
    start = _decode(tokenizer, tok[0, -1:], bf16).numpy()[0]
    labels = {"slow": "slow 0", "fast": f"fast {fast_mps:g}"}
    rows = [[start] + list(imagined[v]) for v in range(len(names))]
    img = grid_image(rows, [labels.get(n, n) for n in names], ["t"] + [f"+{i + 1}" for i in range(steps)], scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)
    return path


@torch.no_grad()
def write_rollout_gif(wm: WorldModel, tokenizer, data: str | Path, path: str | Path, n_futures: int = 4,
                      split: str = "val", context: int = 4, steps: int = 16, temperature: float = 1.0,
                      clip: int = 0, seed: int = 0, codec: ActionCodec | None = None, bf16: bool = True,
                      counterfactual_temperature: float | None = None, fps: float | None = None,
                      scale: int = 2) -> Path:
    """GIF: one real context from `split` (the `clip`-th non-overlapping clip of context+steps frames),
    then the real continuation beside `n_futures` futures sampled at `temperature` (seeds seed, seed+1,
    ...) under the same real actions; below, the left / straight / right counterfactual (steering held,
    the context's last target speed). Context frames are shown through the tokenizer in the model panels.
    """
    import imageio.v3 as iio

    codec = codec or ActionCodec()
    _check_compatible(wm, tokenizer)
    wm.eval()
    tokenizer.eval()
    dev = _device(wm)
    ds = ClipDataset(data, split=split, clip_len=context + steps, fields=EVAL_FIELDS, shuffle=False)
    c = next((x for i, x in enumerate(ds) if i == clip), None)
    if c is None:
        raise ValueError(f"{data}: split {split!r} has fewer than {clip + 1} clips of {context + steps} frames")
    b = _stack([c], codec)
    frames, acts = b["frames"], b["actions"]
    C = context
    tok = _encode(tokenizer, frames, bf16).to(dev)
    real_branch = acts[:, C - 1 : C - 1 + steps][:, None]  # (1, 1, steps, A)
    futures = [branch_rollout(wm, tok[:, :C], acts[:, :C], real_branch, steps, _sampler(temperature, seed + i, dev),
                              bf16)[0, 0] for i in range(n_futures)]
    cf_t = temperature if counterfactual_temperature is None else counterfactual_temperature
    v = acts[:, C - 1, 1]
    steer = torch.stack([torch.stack([torch.full_like(v, s), v], -1) for _, s in STEER_ROWS], 1)  # (1, 3, 2)
    cf = branch_rollout(wm, tok[:, :C], acts[:, :C], steer, steps, _sampler(cf_t, seed + n_futures, dev), bf16)[0]
    ctx_recon = _decode(tokenizer, tok[0, :C], bf16).numpy()
    fut = _decode(tokenizer, torch.stack(futures), bf16).numpy()  # (n, steps, H, W, 3)
    cfd = _decode(tokenizer, cf, bf16).numpy()  # (3, steps, H, W, 3)
    real = frames[0].numpy()
    import cv2

    out = []
    tw = frames.shape[3] * scale
    for t in range(C + steps):
        def model_view(arr: np.ndarray, i: int) -> np.ndarray:
            return ctx_recon[t] if t < C else arr[i, t - C]

        row1 = [real[t]] + [model_view(fut, i) for i in range(n_futures)]
        row2 = [model_view(cfd, i) for i in range(3)]
        grid = grid_image([row1, row2], ["real act", "steer"],
                           ["real"] + [f"sample {i + 1}" for i in range(n_futures)], scale)
        y0 = 14 + frames.shape[2] * scale + 2 + 10  # second row: name each tile in its top-left corner
        for i, (name, _) in enumerate(STEER_ROWS):
            cv2.putText(grid, name, (64 + i * (tw + 2) + 2, y0), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                        cv2.LINE_AA)
        head = f"context frame {t + 1}/{C}" if t < C else f"imagined step +{t - C + 1}"
        out.append(np.concatenate([text_strip(head, grid.shape[1]), grid], 0))
    fps = fps or EpisodeIndex(data, split=split).fps or 12.5
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(out), duration=1000.0 / fps, loop=0)
    return path


__all__ = ["branch_rollout", "counterfactual_grid", "evaluate_world_model", "measure_imagination_speed",
           "measure_real_driving", "roc_auc", "select_clips", "write_rollout_gif"]
