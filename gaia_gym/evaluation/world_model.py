"""World-model evaluation: one run, one report; every quality number is deterministic given the models and data.

`evaluate_world_model` reads clips of ``context + max(horizons)`` real frames from a split (held-out tracks
by default), spread evenly over all of the split's non-overlapping clips, and feeds each batch to a few
accumulators, each with one job (`update(batch)`, `summary()`):

- `TeacherForcing`: next-frame token cross-entropy and accuracy (eval mode, no action dropout) on the first
  ``min(clip, wm.cfg.context)`` frames of each clip (the window the model was trained on); reward MAE of
  every block's reward head; the end logits for the termination AUC (`Termination`), over those clips
  plus a window ending at the last step of every terminated episode (evenly spread clips rarely hold one);
- `OpenLoop`: the context is started in the imagination engine, which then imagines ``max(horizons)``
  frames under the *real* actions (greedy or sampled); imagined frames are decoded and compared with the
  real ones (PSNR/SSIM per horizon) beside copying the last context frame and the tokenizer's own
  reconstruction (the ceiling a token model can reach); reward MAE along the rollout;
- `Counterfactuals`: from the same contexts, branches with full-left / full-right steering (at the
  context's last target speed) and a 0 m/s / ``fast_mps`` target speed (at its last steering), read back
  by the track's rotation (`gaia_gym.evaluation.readback`, no learned model), by motion energy, and, with
  a `gaia_gym.models.probe.Probe`, by the inverse-dynamics probe;
- throughput: `gaia_gym.evaluation.throughput` (the same measurement as `gaia-gym bench`).

Every rollout goes through `gaia_gym.imagination.Imagination` (see `common.branch_rollout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.evaluation.common import (DEFAULT_FAST_MPS, branch_rollout, decode, encode, end_windows, make_engine,
                                        roc_auc, select_clips, stack_clips, steer_speed_branches)
from gaia_gym.evaluation.readback import turn_deg
from gaia_gym.evaluation.throughput import SIM_HZ, cpu_name, imagined_steps_per_s, measure_real_driving
from gaia_gym.imagination import Imagination
from gaia_gym.metrics import psnr_uint8, ssim_uint8
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.probe import IGNORE, pair_labels
from gaia_gym.models.flow import FlowWorldModel
from gaia_gym.models.world_model import WorldModel
from gaia_gym.precision import autocast, precision_name
from gaia_gym.errors import ConfigError


def _mean(xs: list[torch.Tensor]) -> float:
    return float(torch.cat(xs).float().mean())


def _frac(x: torch.Tensor, m: torch.Tensor | None = None) -> float | None:
    x = x if m is None else x[m]
    return float(x.float().mean()) if x.numel() else None


# ----------------------------------------------------------------------------------------------
# accumulators
# ----------------------------------------------------------------------------------------------
@dataclass
class Termination:
    """End-head logits and labels, for the termination AUC."""

    scores: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def update(self, end_logit: torch.Tensor, terminated: torch.Tensor) -> None:
        self.scores.append(end_logit.float().cpu().numpy().ravel())
        self.labels.append(terminated.numpy().ravel())

    def summary(self, split: str, windows: int) -> dict:
        labels = np.concatenate(self.labels)
        auc = roc_auc(np.concatenate(self.scores), labels)
        out = {"termination_auc": auc, "termination_positives": int(labels.sum()), "termination_end_windows": windows}
        if auc is None:
            out["termination_note"] = (f"the {split!r} split has no termination in the evaluated windows: AUC undefined"
                                       if not labels.any() else "every evaluated step is a termination: AUC undefined")
        return out


class TeacherForcing:
    """Teacher-forced scores over a window of real frames, as the world model defines them
    (`teacher_forced`: token cross-entropy and accuracy for the discrete model, the flow-matching error at
    fixed flow times for the flow model); reward MAE of every step's reward head; the end logits for the
    termination AUC."""

    def __init__(self, wm, window: int, bf16: bool, termination: Termination) -> None:
        self.wm, self.W, self.bf16, self.termination = wm, window, bf16, termination
        self.dev = next(wm.parameters()).device
        self.sums: dict[str, float] = {}
        self.count = self.r_err = self.r_n = 0.0

    def forward(self, b: dict, tok: torch.Tensor):
        with autocast(self.dev, self.bf16):
            out = self.wm.teacher_forced(tok[:, : self.W], b["actions"][:, : self.W].to(self.dev))
        self.termination.update(out.end_logit, b["terminated"][:, : self.W])
        return out

    def update(self, b: dict, tok: torch.Tensor) -> None:
        out = self.forward(b, tok)
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += out.count
        self.r_err += float((out.reward.float().cpu() - b["reward"][:, : self.W]).abs().sum())
        self.r_n += len(tok) * self.W

    def summary(self) -> dict:
        scores = {k: v / self.count for k, v in self.sums.items()}
        return {"teacher_forced_window": self.W, **scores, "reward_mae_teacher_forced": self.r_err / self.r_n}


class OpenLoop:
    """Rollouts under the real actions vs the real frames, copy-last and the tokenizer's ceiling."""

    def __init__(self, engine: Imagination, context: int, horizons: Sequence[int]) -> None:
        self.engine, self.C, self.horizons = engine, context, list(horizons)
        self.psnr = {h: [] for h in horizons}
        self.ssim = {h: [] for h in horizons}
        self.copy_psnr = {h: [] for h in horizons}
        self.copy_ssim = {h: [] for h in horizons}
        self.ceil_psnr, self.ceil_ssim = [], []
        self.r_err = self.r_n = 0.0
        self.video = hasattr(engine.backend, "decode_video")  # a decoder over a window of latents (flow)
        self.flicker: dict[str, list] = {k: [] for k in ("reconstruction_per_frame", "reconstruction_windowed",
                                                         "imagined_per_frame", "imagined_windowed")}

    def update(self, b: dict, tok: torch.Tensor) -> None:
        C, H, eng = self.C, self.horizons[-1], self.engine
        frames, acts = b["frames"], b["actions"].to(eng.device)
        eng.reset(context=(tok[:, :C], acts[:, :C]))
        preds, rewards = [], []
        for s in range(H):
            o = eng.step(acts[:, C - 1 + s])
            preds.append(o.latents)
            rewards.append(o.reward.cpu())
        self.r_err += float((torch.stack(rewards, 1) - b["reward"][:, C - 1 : C - 1 + H]).abs().sum())
        self.r_n += len(frames) * H
        imagined = decode(eng, torch.stack([preds[h - 1] for h in self.horizons], 1))  # (B, nh, H, W, 3)
        for j, h in enumerate(self.horizons):
            real = frames[:, C - 1 + h]
            self.psnr[h].append(psnr_uint8(imagined[:, j], real))
            self.ssim[h].append(ssim_uint8(imagined[:, j], real))
            self.copy_psnr[h].append(psnr_uint8(frames[:, C - 1], real))
            self.copy_ssim[h].append(ssim_uint8(frames[:, C - 1], real))
        recon = decode(eng, tok[:, C:])  # (B, H, ...)
        self.ceil_psnr.append(psnr_uint8(recon.flatten(0, 1), frames[:, C:].flatten(0, 1)))
        self.ceil_ssim.append(ssim_uint8(recon.flatten(0, 1), frames[:, C:].flatten(0, 1)))
        if self.video:
            real = frames[:, C - 1 : C + H]
            seq = torch.stack(preds, 1)
            ctx = tok[:, C - 1 : C].to(seq.device)
            for name, lat in (("reconstruction", tok[:, C - 1 : C + H]), ("imagined", torch.cat([ctx, seq], 1))):
                self.flicker[f"{name}_per_frame"].append(flicker(decode(eng, lat), real))
                self.flicker[f"{name}_windowed"].append(flicker(eng.backend.decode_video(lat.to(eng.device)).cpu(), real))

    labels: list[str] | None = None  # the episode of every clip, in order (set for per-episode figures)

    def by_episode(self) -> dict[str, dict]:
        """Open-loop and copy-last PSNR per episode (`labels`: one name per clip, in update order)."""
        labels = np.asarray(self.labels)
        out = {}
        for name in dict.fromkeys(self.labels):
            m = torch.from_numpy(labels == name)
            by = lambda d: {str(h): float(torch.cat(d[h]).float()[m].mean()) for h in self.horizons}  # noqa: E731
            out[name] = {"clips": int(m.sum()), "psnr_by_horizon": by(self.psnr),
                         "copy_last_psnr_by_horizon": by(self.copy_psnr)}
        return out

    def summary(self) -> dict:
        by = lambda d: {str(h): _mean(d[h]) for h in self.horizons}  # noqa: E731
        out = {"psnr_by_horizon": by(self.psnr), "ssim_by_horizon": by(self.ssim),
               "copy_last_psnr_by_horizon": by(self.copy_psnr), "copy_last_ssim_by_horizon": by(self.copy_ssim),
               "tokenizer_ceiling_psnr": _mean(self.ceil_psnr), "tokenizer_ceiling_ssim": _mean(self.ceil_ssim),
               "reward_mae_rollout": self.r_err / self.r_n}
        if self.labels is not None:
            out["open_loop_by_episode"] = self.by_episode()
        if self.video:
            out["flicker"] = {k: _mean(v) for k, v in self.flicker.items()}
            out["flicker_definition"] = ("mean |(D_t - D_t-1) - (R_t - R_t-1)| in uint8 levels over the rollout: decoded "
                                         "frame-to-frame differences against the real ones; per_frame: each latent "
                                         "decoded alone; windowed: with the latents before it (decode_video)")
        return out


def flicker(decoded: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-clip error of frame-to-frame differences: decoded and real uint8 (B, T, H, W, 3) -> (B,)."""
    dd = decoded[:, 1:].float() - decoded[:, :-1].float()
    dr = real[:, 1:].float() - real[:, :-1].float()
    return (dd - dr).abs().flatten(1).mean(1)


def _probe_read(probe, start: torch.Tensor, imagined: torch.Tensor) -> dict[str, torch.Tensor]:
    """Probe on (start frame, last imagined frame); imagined (N, steps, H, W, 3)."""
    if getattr(probe.cfg, "frames", 2) == 4:
        return probe.predict(start, imagined[:, -1], imagined[:, 0], imagined[:, -2] if imagined.shape[1] > 1 else start)
    return probe.predict(start, imagined[:, -1])


class Counterfactuals:
    """Held-action branches from real contexts, read back by rotation, motion energy and (optionally) a probe;
    and the same instruments on the reconstructed real continuation (how far they can be trusted)."""

    NAMES = ("left", "right", "slow", "fast")

    def __init__(self, engine: Imagination, context: int, steps: int, horizon: int, codec: ActionCodec,
                 fast_mps: float, moving_mps: float, probe=None) -> None:
        self.engine, self.C, self.steps, self.H = engine, context, steps, horizon
        self.fast_mps, self.moving_mps, self.probe = fast_mps, moving_mps, probe
        self.fast_action = float(codec.encode(0.0, fast_mps)[1])
        self.turn = {"left": [], "right": []}
        self.motion = {k: [] for k in self.NAMES}
        self.probe_reads = {k: [] for k in self.NAMES}
        self.speed0: list[torch.Tensor] = []
        self.ref = {"steer": [], "speed": [], "rotation": []}

    def update(self, b: dict, tok: torch.Tensor) -> None:
        C, k, eng = self.C, self.steps, self.engine
        acts = b["actions"].to(eng.device)
        branches, names = steer_speed_branches(acts[:, :C], self.fast_action, straight=False)
        cf_tok = branch_rollout(eng, tok[:, :C], acts[:, :C], branches, k)
        start = decode(eng, tok[:, C - 1])  # the tokenizer's view of the last real frame
        cf_frames = decode(eng, cf_tok)  # (B, V, steps, H, W, 3)
        seq = torch.cat([start[:, None, None].expand(-1, len(names), -1, -1, -1, -1), cf_frames], 2)
        for v, name in enumerate(names):
            if name in self.turn:
                self.turn[name].append(turn_deg(seq[:, v]))
        self.speed0.append(b["speed_mps"][:, C - 1])
        motion = (seq[:, :, 1:].float() - seq[:, :, :-1].float()).abs().mean(dim=(2, 3, 4, 5))  # (B, V)
        for v, name in enumerate(names):
            self.motion[name].append(motion[:, v])
        if k <= self.H:
            self._references(b, tok)
        if self.probe is not None:
            for v, name in enumerate(names):
                p = _probe_read(self.probe, start, cf_frames[:, v])
                self.probe_reads[name].append(p["steer_right_prob"] if name in ("left", "right") else p["faster_prob"])

    def _references(self, b: dict, tok: torch.Tensor) -> None:
        C, k = self.C, self.steps
        real_rec = decode(self.engine, tok[:, C - 1 : C + k])  # frames C-1 .. C-1+k
        st, sp = b["steering"][:, C - 1 : C - 1 + k], b["speed_mps"][:, C - 1]
        held = (st.sign() == st[:, :1].sign()).all(1) & (st.mean(1).abs() >= 0.3) & (sp >= self.moving_mps)
        if held.any():
            t = turn_deg(real_rec[held])
            self.ref["rotation"] += ((t > 0) == (st[held].mean(1) > 0)).float().tolist()
        if self.probe is not None:
            p = _probe_read(self.probe, real_rec[:, 0], real_rec[:, 1:])
            for r in range(len(tok)):
                ys, yf = pair_labels(b["steering"][r, C - 1 :].numpy(), b["speed_mps"][r, C - 1 :].numpy(), k,
                                     self.probe.cfg)
                if ys != IGNORE:
                    self.ref["steer"].append(float((p["steer_right_prob"][r] > 0.5) == (ys == 1.0)))
                if yf != IGNORE:
                    self.ref["speed"].append(float((p["faster_prob"][r] > 0.5) == (yf == 1.0)))

    def summary(self) -> dict:
        if not self.turn["left"]:
            return {}
        tl, tr = torch.cat(self.turn["left"]), torch.cat(self.turn["right"])
        v0 = torch.cat(self.speed0)
        moving = v0 > self.moving_mps
        mid = moving & (v0 < self.fast_mps - self.moving_mps)
        steer_ok = torch.stack([tl < 0, tr > 0], 1).float()  # (N, 2)
        res = {
            "counterfactual_steps": self.steps,
            "counterfactual_readout": "track rotation between consecutive decoded frames (gaia_gym.evaluation.readback), "
                                      "summed over the steps; no learned model",
            "counterfactual_steering_accuracy": _frac(steer_ok),
            "counterfactual_steering_accuracy_moving": _frac(steer_ok, moving),
            "counterfactual_contexts": len(tl),
            "counterfactual_contexts_moving": int(moving.sum()),
            "counterfactual_steering_paired_accuracy": _frac((tr > tl).float()),
            "counterfactual_turn_deg": {"left": float(tl.mean()), "right": float(tr.mean())},
            "readback_real_accuracy": float(np.mean(self.ref["rotation"])) if self.ref["rotation"] else None,
            "readback_real_windows": len(self.ref["rotation"]),
            "counterfactual_speed_paired_motion_accuracy": _frac(
                (torch.cat(self.motion["fast"]) > torch.cat(self.motion["slow"])).float()),
            "counterfactual_motion_energy": {k: float(torch.cat(v).mean()) for k, v in self.motion.items()},
            "counterfactual_fast_mps": self.fast_mps,
        }
        if self.probe is None:
            res.update({"counterfactual_speed_accuracy": None, "counterfactual_note": "no probe given (speed read-back)"})
            return res
        left, right = torch.cat(self.probe_reads["left"]), torch.cat(self.probe_reads["right"])
        slow, fast = torch.cat(self.probe_reads["slow"]), torch.cat(self.probe_reads["fast"])
        steer_ok = torch.stack([left < 0.5, right > 0.5], 1).float()
        speed_ok = torch.stack([slow < 0.5, fast > 0.5], 1).float()
        res.update({
            "counterfactual_steering_accuracy_probe": _frac(steer_ok),
            "counterfactual_steering_paired_accuracy_probe": _frac((right > left).float()),
            "counterfactual_speed_accuracy": _frac(speed_ok),
            "counterfactual_speed_accuracy_midrange": _frac(speed_ok, mid),
            "counterfactual_right_prob_when_left": float(left.mean()),
            "counterfactual_right_prob_when_right": float(right.mean()),
            "counterfactual_faster_prob_when_slow": float(slow.mean()),
            "counterfactual_faster_prob_when_fast": float(fast.mean()),
            "probe_steering_accuracy_on_reconstructions": float(np.mean(self.ref["steer"])) if self.ref["steer"] else None,
            "probe_speed_accuracy_on_reconstructions": float(np.mean(self.ref["speed"])) if self.ref["speed"] else None,
            "probe_reference_pairs": {"steer": len(self.ref["steer"]), "speed": len(self.ref["speed"])},
        })
        return res


def throughput_report(backend, fps: float, batch: int, seconds: float, bf16: bool, seed: int,
                      real_sim_seconds: float, real_sim_frames_per_s: float | None, real_sim_processes: int | None) -> dict:
    """Imagined steps/s of `backend` at `batch` (latents only; the `bench` measurement) and the real
    simulator's speed."""
    frames_per_step = SIM_HZ / fps
    res: dict = {"sim_frames_per_step": frames_per_step}
    sps = imagined_steps_per_s(backend, batch, seconds=seconds, bf16=bf16, seed=seed) \
        if seconds > 0 else None
    res[f"imagined_frames_per_s_b{batch}"] = sps
    res["imagined_driving_s_per_s"] = None if sps is None else sps * frames_per_step / SIM_HZ
    real = None
    if real_sim_frames_per_s is not None:
        real = {"real_sim_frames_per_s": float(real_sim_frames_per_s), "real_sim_source": "given"}
    elif real_sim_seconds > 0:
        real = {**measure_real_driving(real_sim_seconds, real_sim_processes), "real_sim_source": "measured"}
    if real is not None:
        res.update(real)
        res["real_driving_s_per_s"] = real["real_sim_frames_per_s"] / SIM_HZ
    res["imagined_vs_real_driving_ratio"] = (None if sps is None or real is None
                                             else res["imagined_driving_s_per_s"] / res["real_driving_s_per_s"])
    return res


# ----------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------
@dataclass
class WorldModelReport:
    """What one evaluation measured, one section per accumulator; `to_dict()` is the flat JSON record
    (`results/world_model.json`'s keys)."""

    run: dict  # split, clips, context, horizons, temperature, precision, device, threads, cpu
    teacher_forced: dict
    open_loop: dict
    termination: dict
    counterfactual: dict
    throughput: dict
    pictures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {}
        for part in (self.run, self.teacher_forced, self.open_loop, self.termination, self.counterfactual,
                     self.pictures, self.throughput):
            out.update(part)
        return out


@torch.no_grad()
def evaluate_world_model(*args, **kwargs) -> dict:
    """`run_world_model_evaluation(...)` as its flat, JSON-ready record (same arguments)."""
    return run_world_model_evaluation(*args, **kwargs).to_dict()


def clip_episodes(data: str | Path, split: str, clips: list[dict]) -> list[str]:
    """The episode of each clip (its source video's name, else its shard file), from the clip's own index."""
    names = [e.get("meta", {}).get("video") or e["file"] for e in EpisodeIndex(data, split=split).entries]
    return [names[int(c["episode"])] for c in clips]


@torch.no_grad()
def run_world_model_evaluation(
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
    throughput_seconds: float = 4.0,
    real_sim_seconds: float = 15.0,
    real_sim_frames_per_s: float | None = None,
    real_sim_processes: int | None = None,
    grid_path: str | Path | None = None,
    backend_options: dict | None = None,
    per_episode: bool = False,
) -> WorldModelReport:
    """Every world-model metric in one run (see the module docstring), as a `WorldModelReport`.

    `max_clips`: clips of ``context + max(horizons)`` frames, spread evenly over the split (None: all).
    `sample_temperature`: 0 = greedy rollouts (and counterfactuals), else sampled with `seed`.
    `real_sim_seconds`: how long to run the real simulator for the speed ratio (0: skip it, the ratio is
    None unless `real_sim_frames_per_s` gives a figure measured elsewhere). `throughput_seconds` 0 skips the
    throughput measurement. `grid_path`: also write `counterfactual_grid` of the first clip there.
    ``..._steering_accuracy_moving`` keeps the contexts whose real speed at the last context frame exceeds
    `moving_mps`; ``..._speed_accuracy_midrange`` those between `moving_mps` and ``fast_mps - moving_mps``.
    `backend_options`: the backend's own settings, e.g. ``{"steps": 4}`` sampling steps for a flow model.
    `per_episode`: every clip of the split (`max_clips` ignored), and open-loop PSNR per episode too
    (``open_loop_by_episode``, named by the episode's video or shard file).
    """
    codec = codec or ActionCodec()
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise ConfigError(f"horizons must be positive, got {horizons}")
    if context < 1:
        raise ConfigError(f"context must be >= 1, got {context}")
    wm.eval()
    if probe is not None:
        probe.eval()
    dev = next(wm.parameters()).device
    H, C = horizons[-1], context
    W = min(C + H, wm.cfg.context)  # teacher-forced window
    if W < 2:
        raise ConfigError("teacher forcing needs windows of >= 2 frames")
    clips = select_clips(data, split, C + H, None if per_episode else max_clips)
    if not clips:
        raise ConfigError(f"{data}: no {split!r} clip of {C + H} frames")

    opts = backend_options or {}
    rollouts = make_engine(wm, tokenizer, sample_temperature, seed, bf16, **opts)  # its own generator (seed)
    branches = make_engine(wm, tokenizer, sample_temperature, seed + 1, bf16, **opts)  # and the counterfactuals'
    term = Termination()
    tf = TeacherForcing(wm, W, bf16, term)
    ol = OpenLoop(rollouts, C, horizons)
    if per_episode:
        ol.labels = clip_episodes(data, split, clips)
    cf = Counterfactuals(branches, C, int(counterfactual_steps), H, codec, fast_mps, moving_mps, probe)

    bar = tqdm(total=len(clips), unit="clip", desc=f"eval world model ({split})", disable=not progress)
    for i in range(0, len(clips), batch_size):
        b = stack_clips(clips[i : i + batch_size], codec)
        tok = encode(rollouts, b["frames"])  # (B, L, g, g)
        tf.update(b, tok)
        ol.update(b, tok)
        if cf.steps > 0:
            cf.update(b, tok)
        bar.update(len(tok))
    bar.close()
    windows = end_windows(data, split, W, max_end_windows)  # termination: windows ending where episodes end
    for i in range(0, len(windows), batch_size):
        b = stack_clips(windows[i : i + batch_size], codec)
        tf.forward(b, encode(rollouts, b["frames"]))

    run = {"split": split, "clips": len(clips), "context": C, "horizons": horizons,
           "sample_temperature": sample_temperature, "precision": precision_name(dev, bf16),
           "backend": type(rollouts.backend).__name__}
    if hasattr(rollouts.backend, "steps"):
        run["sampling_steps"] = rollouts.backend.steps
    pictures = {}
    if grid_path is not None:
        from gaia_gym.evaluation.pictures import counterfactual_grid

        first = clips[0]
        acts0 = torch.from_numpy(codec.encode(first["steering"].numpy(), first["target_speed_mps"].numpy()))
        counterfactual_grid(wm, tokenizer, first["frames"][:C], acts0[:C], grid_path, steps=cf.steps,
                            fast_mps=fast_mps, codec=codec, bf16=bf16, temperature=sample_temperature, seed=seed)
        pictures["counterfactual_grid"] = str(grid_path)
    try:
        fps = EpisodeIndex(data, split=split).fps or 12.5
    except Exception:  # noqa: BLE001 - the split was read above; this is only the frame rate
        fps = 12.5
    speed = throughput_report(rollouts.backend, fps, throughput_batch, throughput_seconds, bf16, seed,
                              real_sim_seconds, real_sim_frames_per_s, real_sim_processes)
    speed.update({"device": str(dev), "torch_threads": torch.get_num_threads(), "cpu": cpu_name()})
    return WorldModelReport(run, tf.summary(), ol.summary(), term.summary(split, len(windows)), cf.summary(), speed,
                            pictures)


@torch.no_grad()
def sampling_steps_sweep(wm, tokenizer, data: str | Path, steps: Sequence[int] = (1, 2, 4, 8, 16), split: str = "val",
                         max_clips: int | None = 64, progress: bool = True, **kwargs) -> dict:
    """Open-loop quality of a flow model against the number of sampling steps, with the shortcut step
    embedding and with the plain flow-matching one (d = 0) at the same steps, on the same clips:
    {"shortcut": {steps: psnr_by_horizon}, "flow_matching": {...}}. `kwargs` go to
    `run_world_model_evaluation` (e.g. sample_temperature)."""
    if not isinstance(wm, FlowWorldModel):
        raise ConfigError("the sampling-steps sweep needs a flow world model")
    out: dict = {"shortcut": {}, "flow_matching": {}}
    for plain, key in ((False, "shortcut"), (True, "flow_matching")):
        for k in steps:
            r = run_world_model_evaluation(wm, tokenizer, data, split=split, max_clips=max_clips, progress=progress,
                                           counterfactual_steps=0, throughput_seconds=0, real_sim_seconds=0,
                                           max_end_windows=0, backend_options={"steps": int(k), "plain": plain},
                                           **kwargs)
            out[key][str(k)] = r.open_loop["psnr_by_horizon"]
    return out


__all__ = ["Counterfactuals", "sampling_steps_sweep", "OpenLoop", "TeacherForcing", "Termination", "WorldModelReport", "evaluate_world_model",
           "run_world_model_evaluation", "throughput_report"]
