"""One training loop for every trainable gaia_gym model.

A trainable model is any ``nn.Module`` with::

    compute_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]   # scalar loss, metrics to log

`train` runs it on CPU or CUDA, single-process or under ``torchrun`` (DistributedDataParallel), with
AdamW + cosine schedule, optional bf16 autocast, TensorBoard logging, a tqdm bar, and resumable
checkpoints in ``out_dir``::

    out_dir/
      model.safetensors, config.json   # the model, via gaia_gym.checkpoint.save_model (meta: step, minutes...)
      train_state.pt                   # optimizer state, step, trained seconds, RNG states (tensors and
                                       # primitives only: loads with torch.load(weights_only=True))
      tb/                              # TensorBoard event files

Rerunning `train` with the same ``out_dir`` continues where the last checkpoint left off; ``max_minutes``
is a budget for the total training time across all runs. The learning rate is a pure function of the
step and the TrainConfig (`lr_at`), so the step is the whole scheduler state.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gaia_gym.checkpoint import (
    CONFIG,
    config_to_dict,
    load_weights_into,
    read_model_info,
    read_weights,
    save_model,
    unwrap_model,
)
from gaia_gym.errors import ResumeError
from gaia_gym.fileio import atomic_write_bytes
from gaia_gym.precision import autocast

TRAIN_STATE = "train_state.pt"
TB_DIR = "tb"
STATE_VERSION = 1

Batch = dict[str, Any]
BatchFactory = Callable[[int, int, int], Iterator[Batch]]


@dataclass(frozen=True)
class TrainConfig:
    """How `train` optimises a model. Plain data: stored in every checkpoint's meta."""

    steps: int = 10_000  # total optimizer steps (across resumed runs)
    batch_size: int = 32  # per-rank batch size, for the caller's batch factory (the loop counts what arrives)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decay on >= 2-D weights (never on biases, norms, embeddings)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200  # linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping; the norm is still logged)
    max_minutes: float = 0.0  # total wall-clock training budget across resumed runs (0 = none)
    checkpoint_minutes: float = 5.0  # checkpoint this often (and always at the end)
    log_every: int = 50  # TensorBoard scalars + progress-bar loss every this many steps
    image_every: int = 1000  # call `log_images` every this many steps (0 = never; also at the end)
    bf16: bool = True  # bf16 autocast where the hardware runs it fast (gaia_gym.precision); weights stay fp32
    channels_last: bool = False  # conv models: channels_last memory format
    seed: int = 0  # torch/numpy/random seed (+ rank); the batch factory gets a seed derived from it
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step

    def __post_init__(self):
        checks = [
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two values in [0, 1), got {self.betas}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.max_minutes >= 0, f"max_minutes must be >= 0, got {self.max_minutes}"),
            (self.checkpoint_minutes > 0, f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.image_every >= 0, f"image_every must be >= 0, got {self.image_every}"),
            (self.threads >= 0, f"threads must be >= 0, got {self.threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def data_seed(seed: int, start_step: int) -> int:
    """The seed handed to the batch factory: `seed` on a fresh run, a different one per resume point."""
    return seed if start_step == 0 else (seed * 1_000_003 + start_step) % (2**31 - 1)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """Routes DDP's forward to `compute_loss`, so DDP's forward/backward hooks run as designed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch):
        return self.model.compute_loss(batch)


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> _Dist:
    """Device + process group: DDP when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        return _Dist(0, 1, device, False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on >= 2-D weights; none on biases, norm scales (1-D) and embedding tables."""
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if not isinstance(batch, dict):
        raise TypeError(f"batches must yield dict[str, Tensor], got {type(batch).__name__}")
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_len(batch: Batch) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 1


def _rng_state(device: torch.device) -> dict:
    """This process's RNG states as tensors and primitives (safe for torch.load(weights_only=True))."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]
    more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
    return ", ".join(diffs[:4]) + more


@dataclass
class _Resume:
    step: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    metrics: dict | None = None
    optimizer: dict | None = None
    rng: list | None = None


def _load_resume(out_dir: Path, model: nn.Module, kind: str, config_d: dict, main: bool) -> _Resume:
    """Load out_dir's checkpoint into `model` (if any); returns where training stands."""
    cfg_path = out_dir / CONFIG
    ts_path = out_dir / TRAIN_STATE
    if not cfg_path.exists():
        if ts_path.exists() and main:
            warnings.warn(f"{ts_path} has no model beside it; starting from step 0", stacklevel=3)
        return _Resume()
    info = read_model_info(out_dir)
    if info["kind"] != kind:
        raise ResumeError(f"{out_dir} holds a {info['kind']} checkpoint, this run trains a {kind}; use another out_dir")
    if info["config"] != config_d:
        raise ResumeError(f"{cfg_path}: the model config differs from the checkpoint's "
                          f"({_config_diff(info['config'], config_d)}); use a new out_dir or the stored config")
    load_weights_into(model, out_dir, read_weights(out_dir, info))
    meta = info["meta"]
    fallback = _Resume(step=int(meta.get("step", 0)), elapsed_s=60.0 * float(meta.get("minutes", 0.0)),
                       samples=int(meta.get("samples", 0)), metrics=meta.get("metrics"))
    if not ts_path.exists():
        if main:
            warnings.warn(f"{out_dir} has no {TRAIN_STATE}; resuming the weights at step {fallback.step} "
                          f"with a fresh optimizer", stacklevel=3)
        return fallback
    try:
        ts = torch.load(ts_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format failure means the same thing here
        raise ResumeError(f"cannot read training state {ts_path}: {type(e).__name__}: {e}") from None
    if not isinstance(ts, dict) or ts.get("version", 0) > STATE_VERSION:
        raise ResumeError(f"{ts_path} is not a gaia_gym training state this version reads")
    if ts.get("weights_sha256") != info["weights"].get("sha256"):
        if main:
            warnings.warn(f"{ts_path} belongs to other weights than {out_dir / 'model.safetensors'} (a checkpoint "
                          f"interrupted between its files); resuming the weights at step {fallback.step} "
                          f"with a fresh optimizer", stacklevel=3)
        return fallback
    return _Resume(step=int(ts["step"]), elapsed_s=float(ts["elapsed_s"]), samples=int(ts["samples"]),
                   metrics=meta.get("metrics"), optimizer=ts["optimizer"], rng=ts.get("rng"))


class _SignalFlag:
    """SIGINT/SIGTERM set a flag so the loop checkpoints at the next step boundary; a second one stops at once."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        try:
            from tqdm import tqdm

            tqdm.write(f"{signal.Signals(signum).name}: checkpointing after this step (again to stop at once)")
        except Exception:  # noqa: BLE001 - never fail inside a signal handler
            pass

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train(
    model: nn.Module,
    model_kind: str,
    model_config: Any,
    batches: BatchFactory,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    log_images: Callable[[nn.Module, Any, int], None] | None = None,
    on_checkpoint: Callable[[nn.Module, int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train `model` (has `compute_loss`) to `cfg.steps` or the `cfg.max_minutes` budget, checkpointing to out_dir.

    `batches(rank, world_size, seed)` returns an endless iterator of dict[str, Tensor] batches (CPU
    tensors, pinned if you like; leading dim = batch) for this rank: shard or seed by rank. The seed is
    `data_seed(cfg.seed, start_step)`, so a resumed run draws fresh data. `log_images(model, writer, step)`
    writes TensorBoard images/videos (rank 0, eval mode, no_grad); `on_checkpoint(model, step)` runs on
    rank 0 after each checkpoint. Returns {"step", "minutes", "metrics", "stopped"} ("steps" | "time").
    """
    if not hasattr(model, "compute_loss"):
        raise TypeError(f"{type(model).__name__} has no compute_loss(batch) method")
    ctx = _setup_distributed()
    try:
        return _train(model, model_kind, model_config, batches, cfg, Path(out_dir), ctx,
                      log_images, on_checkpoint, progress)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(model, kind, model_config, batches, cfg: TrainConfig, out_dir: Path, ctx: _Dist,
           log_images, on_checkpoint, progress) -> dict:
    from tqdm import tqdm

    device, world, main = ctx.device, ctx.world, ctx.main
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    config_d = config_to_dict(model_config)
    cfg_d = config_to_dict(cfg)
    raw = unwrap_model(model)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)

    res = _load_resume(out_dir, raw, kind, config_d, main)
    raw.to(device)
    if cfg.channels_last:
        raw.to(memory_format=torch.channels_last)

    groups = _param_groups(raw, cfg.weight_decay)
    fused = True if device.type == "cuda" else None
    opt = torch.optim.AdamW(groups, lr=lr_at(res.step, cfg), betas=cfg.betas, fused=fused)
    if res.optimizer is not None:
        try:
            opt.load_state_dict(res.optimizer)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ResumeError(f"{out_dir / TRAIN_STATE}: optimizer state does not fit this model: {e}") from None
        for g, spec in zip(opt.param_groups, groups):  # this run's hyperparameters win over the stored ones
            g.update(weight_decay=spec["weight_decay"], betas=cfg.betas, fused=fused)

    if res.rng is not None and len(res.rng) == world:
        _set_rng_state(res.rng[ctx.rank], device)
    else:
        _seed_all(cfg.seed + 1000 * ctx.rank + res.step)

    engine: nn.Module = _LossModule(raw)
    if world > 1:
        engine = nn.parallel.DistributedDataParallel(
            engine, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)
    engine.train()
    params = [p for g in groups for p in g["params"]]

    step, samples, elapsed0 = res.step, res.samples, res.elapsed_s
    last_metrics: dict = dict(res.metrics or {})
    t_run0 = time.monotonic()
    budget_s = cfg.max_minutes * 60.0

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - t_run0

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / TB_DIR))
    pbar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not (progress and main),
                desc=kind, dynamic_ncols=True, unit="step")

    # per-log-window accumulators (tensors: no device sync per step)
    win = {"loss": torch.zeros((), device=device, dtype=torch.float64),
           "grad_norm": torch.zeros((), device=device, dtype=torch.float64),
           "bad": torch.zeros((), device=device, dtype=torch.int64)}
    win_metrics: dict[str, list[float]] = {}
    win_steps, win_samples, win_t0 = 0, 0, time.monotonic()
    last_ckpt = time.monotonic()
    steps_this_run = 0
    clean = True  # model/optimizer are at a step boundary (safe to checkpoint)
    saved_at = -1
    last_image_step = -1

    def check_finite() -> None:
        if int(win["bad"].item()):
            raise FloatingPointError(f"non-finite loss or gradient before step {step}; "
                                     f"the last good checkpoint in {out_dir} is kept")

    def save(collective: bool) -> None:
        nonlocal saved_at
        check_finite()
        mine = _rng_state(device)
        if collective and world > 1:
            rngs: list = [None] * world
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if not main:
            return
        meta = {"step": step, "minutes": round(elapsed() / 60.0, 4), "samples": samples,
                "metrics": last_metrics, "world_size": world, "train": cfg_d}
        info = save_model(out_dir, raw, kind, config_d, meta)
        state = {"version": STATE_VERSION, "step": step, "elapsed_s": elapsed(), "samples": samples,
                 "optimizer": opt.state_dict(), "rng": rngs, "world_size": world,
                 "weights_sha256": info["weights"]["sha256"], "train": cfg_d}
        atomic_write_bytes(out_dir / TRAIN_STATE, lambda f: torch.save(state, f))
        saved_at = step
        if on_checkpoint is not None:
            on_checkpoint(raw, step)

    def images() -> None:
        nonlocal last_image_step
        if not (main and log_images is not None) or last_image_step == step:
            return
        was_training = raw.training
        raw.eval()
        try:
            with torch.no_grad():
                log_images(raw, writer, step)
        finally:
            raw.train(was_training)
        writer.flush()
        last_image_step = step

    def log() -> None:
        nonlocal win_metrics, win_steps, win_samples, win_t0, last_metrics
        if win_steps == 0:
            return
        check_finite()
        dt = max(1e-9, time.monotonic() - win_t0)
        local = {"loss": win["loss"].item() / win_steps, "grad_norm": win["grad_norm"].item() / win_steps}
        local.update({k: sum(v) / len(v) for k, v in win_metrics.items()})
        if world > 1:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, local)
            keys = sorted({k for d in gathered for k in d})
            local = {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}
        last_metrics = local
        if main:
            for k, v in local.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.add_scalar("opt/lr", opt.param_groups[0]["lr"], step)
            writer.add_scalar("perf/steps_per_s", win_steps / dt, step)
            writer.add_scalar("perf/samples_per_s", win_samples / dt, step)
            writer.add_scalar("perf/minutes", elapsed() / 60.0, step)
            writer.flush()
            pbar.set_postfix(loss=f"{local['loss']:.4g}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
        for t in win.values():
            t.zero_()
        win_metrics, win_steps, win_samples, win_t0 = {}, 0, 0, time.monotonic()

    stopped = "steps"
    flags = torch.zeros(3, device=device, dtype=torch.int64)  # [out of time, checkpoint due, signal]
    if budget_s and elapsed0 >= budget_s:
        stopped = "time"
    try:
        with _SignalFlag() as sig:
            it = None
            if step < cfg.steps and stopped == "steps":
                it = iter(batches(ctx.rank, world, data_seed(cfg.seed, step)))
            while it is not None and step < cfg.steps:
                lr = lr_at(step, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                try:
                    batch = next(it)
                except StopIteration:
                    raise RuntimeError("the batch iterator ended; batches() must return an endless iterator") from None
                n = _batch_len(batch)
                batch = _to_device(batch, device)
                with autocast(device, cfg.bf16):
                    loss, metrics = engine(batch)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise TypeError("compute_loss must return (scalar loss tensor, dict of metrics)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                clean = False
                opt.step()
                step += 1
                clean = True
                steps_this_run += 1
                samples += n * world

                loss_d = loss.detach().double()
                win["loss"] += loss_d
                win["grad_norm"] += gnorm.detach().double()
                win["bad"] += (~torch.isfinite(loss_d)).long() + (~torch.isfinite(gnorm.detach())).long()
                for k, v in (metrics or {}).items():
                    win_metrics.setdefault(k, []).append(float(v))
                win_steps += 1
                win_samples += n * world
                pbar.update(1)

                # one collective per step keeps every rank's stop/checkpoint decisions identical
                flags.zero_()
                if main:
                    now = time.monotonic()
                    flags[0] = int(bool(budget_s) and elapsed() >= budget_s)
                    flags[1] = int(now - last_ckpt >= cfg.checkpoint_minutes * 60.0)
                flags[2] = sig.signum
                if world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                out_of_time, ckpt_due, signum = (int(x) for x in flags.tolist())
                final = step >= cfg.steps or out_of_time or signum

                if step % cfg.log_every == 0 or final:
                    log()
                if cfg.image_every and step % cfg.image_every == 0:
                    images()
                if signum:
                    save(collective=True)
                    if signum == signal.SIGTERM:
                        raise SystemExit(128 + signum)
                    raise KeyboardInterrupt
                if out_of_time:
                    stopped = "time"
                    break
                if ckpt_due:
                    save(collective=True)
                    last_ckpt = time.monotonic()
        if steps_this_run and saved_at != step:
            save(collective=True)
        if steps_this_run and cfg.image_every:
            images()
    except KeyboardInterrupt:
        # raised outside the step-boundary path (a second Ctrl-C, or from the batch iterator): checkpoint if safe
        if main and clean and steps_this_run and saved_at != step:
            try:
                save(collective=False)
                pbar.write(f"interrupted: checkpoint at step {step} in {out_dir}")
            except Exception as e:  # noqa: BLE001 - report, but let the interrupt through
                pbar.write(f"interrupted: could not checkpoint ({type(e).__name__}: {e})")
        raise
    finally:
        pbar.close()
        if writer is not None:
            writer.close()
    return {"step": step, "minutes": elapsed() / 60.0, "metrics": last_metrics, "stopped": stopped}


__all__ = ["ResumeError", "TrainConfig", "data_seed", "lr_at", "train"]
