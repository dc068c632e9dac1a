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
      (anything else: sources.json, tokens/, prompts.npz... is the caller's and never touched)

A checkpoint is those three files, written as one transaction by `save_model(..., extra=...)` (see
gaia_gym.checkpoint and gaia_gym.fileio.atomic_write_files): a kill at any point of a save leaves the
previous checkpoint or the new one, complete, and the rerun resumes from it (rolling an interrupted
publish forward first). The out_dir stays a plain model directory that `checkpoint.load_model` reads.

Rerunning `train` with the same ``out_dir`` continues where the last checkpoint left off; ``max_minutes``
is a budget for the total training time across all runs. The learning rate is a pure function of the
step and the TrainConfig (`lr_at`), so the step is the whole scheduler state.

A non-finite loss or gradient norm stops training at once with a `TrainingError` naming the step; the
last good checkpoint stays as it was (a checkpoint is never written from non-finite weights).

`Trainer` holds one run's state (setup/resume, `train_step`, `log`, `checkpoint`, `run`); `train` builds
one and runs it.
"""

from __future__ import annotations

import io
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from gaia_gym.checkpoint import (
    CONFIG,
    WEIGHTS,
    config_to_dict,
    load_weights_into,
    read_model_info,
    read_weights,
    save_model,
    unwrap_model,
)
from gaia_gym.errors import ConfigError, ResumeError, TrainingError
from gaia_gym.fileio import exists_current, read_current, recover_files
from gaia_gym.precision import autocast
from gaia_gym.train.runtime import (Batch, Dist, LossModule, Resume, SignalFlag, batch_len, config_diff, is_number, one_line,
                                    param_groups, rng_state, seed_all, set_rng_state, setup_distributed, to_device)

TRAIN_STATE = "train_state.pt"
TB_DIR = "tb"
STATE_VERSION = 1

BatchFactory = Callable[[int, int, int], Iterator[Batch]]
# A kill loses at most this much training: a checkpoint of the shipped models takes well under a second.
DEFAULT_CHECKPOINT_MINUTES = 1.0


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
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES  # checkpoint this often (and always at the end)
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
                raise ConfigError(f"TrainConfig: {msg}")


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
class Trainer:
    """One training run of `model` into `out_dir` (see `train` for the arguments): state on self.

    `run()` = `setup()` (device, process group, resume from out_dir's checkpoint, optimizer, DDP, logging),
    then `train_step` per batch, `log` every `log_every` steps, `checkpoint` when due / at the end / on a
    signal, and `close()`. Every rank runs the same decisions: one small all-reduce per step.
    """

    def __init__(
        self,
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
    ):
        if not hasattr(model, "compute_loss"):
            raise TypeError(f"{type(model).__name__} has no compute_loss(batch) method")
        self.raw = unwrap_model(model)
        self.kind = model_kind
        self.config_d = config_to_dict(model_config)
        self.cfg = cfg
        self.cfg_d = config_to_dict(cfg)
        self.batches = batches
        self.out_dir = Path(out_dir)
        self.log_images = log_images
        self.on_checkpoint = on_checkpoint
        self.progress = progress

        self.ctx: Dist | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.engine: nn.Module | None = None
        self.params: list[torch.Tensor] = []
        self.writer = None
        self.pbar = None

        self.step = 0
        self.samples = 0
        self.elapsed0 = 0.0  # seconds trained by earlier runs
        self.metrics: dict = {}  # the last logged window's metrics (all ranks averaged)
        self.saved_step: int | None = None  # step of the last good checkpoint in out_dir (None: none)
        self.steps_this_run = 0
        self.clean = True  # model/optimizer are at a step boundary (safe to checkpoint)
        self.last_image_step = -1
        self.t_run0 = time.monotonic()
        self.last_ckpt = time.monotonic()
        self.budget_s = cfg.max_minutes * 60.0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # this rank's last (loss, grad norm)

    # -- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def world(self) -> int:
        return self.ctx.world

    @property
    def main(self) -> bool:
        return self.ctx.main

    def elapsed(self) -> float:
        """Seconds trained in total (earlier runs + this one)."""
        return self.elapsed0 + time.monotonic() - self.t_run0

    # -- setup / resume --------------------------------------------------------------------------
    def setup(self) -> None:
        """Device and process group, out_dir's checkpoint (if any) loaded, optimizer, DDP wrapper, logging."""
        from tqdm import tqdm

        cfg = self.cfg
        self.ctx = setup_distributed()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            recover_files(self.out_dir)  # finish a checkpoint publish a kill interrupted (readers cope meanwhile)

        res = self.read_checkpoint()
        self.step, self.samples, self.elapsed0 = res.step, res.samples, res.elapsed_s
        self.metrics = dict(res.metrics or {})
        self.saved_step = res.step if res.loaded else None

        raw = self.raw
        raw.to(self.device)
        if cfg.channels_last:
            raw.to(memory_format=torch.channels_last)
        self._build_optimizer(res.optimizer)
        self._restore_rng(res.rng)

        engine: nn.Module = LossModule(raw)
        if self.world > 1:
            engine = nn.parallel.DistributedDataParallel(
                engine, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        engine.train()
        self.engine = engine

        self.t_run0 = self.last_ckpt = time.monotonic()
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / TB_DIR))
        self.pbar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), disable=not (self.progress and self.main),
                         desc=self.kind, dynamic_ncols=True, unit="step")
        # [out of time, checkpoint due, signal, non-finite]: the one per-step collective (and device sync)
        self._flags = torch.zeros(4, device=self.device, dtype=torch.int64)
        self._reset_window()

    def read_checkpoint(self) -> Resume:
        """Load out_dir's checkpoint into the model (if any); returns where training stands."""
        out_dir, main = self.out_dir, self.main
        cfg_path, ts_path = out_dir / CONFIG, out_dir / TRAIN_STATE
        if not exists_current(out_dir, CONFIG):
            if exists_current(out_dir, TRAIN_STATE) and main:
                warnings.warn(f"{ts_path} has no model beside it; starting from step 0", stacklevel=5)
            return Resume()
        info = read_model_info(out_dir)
        if info["kind"] != self.kind:
            raise ResumeError(f"{out_dir} holds a {info['kind']} checkpoint, this run trains a {self.kind}; "
                              f"use another out_dir")
        if info["config"] != self.config_d:
            raise ResumeError(f"{cfg_path}: the model config differs from the checkpoint's "
                              f"({config_diff(info['config'], self.config_d)}); "
                              f"use a new out_dir or the stored config")
        load_weights_into(self.raw, out_dir, read_weights(out_dir, info))
        meta = info["meta"]
        step, minutes, samples = meta.get("step", 0), meta.get("minutes", 0.0), meta.get("samples", 0)
        if not (isinstance(step, int) and is_number(minutes) and isinstance(samples, int)) or min(step, samples) < 0:
            raise ResumeError(f"{cfg_path}: meta step/minutes/samples are not valid "
                              f"(step={step!r}, minutes={minutes!r}, samples={samples!r})")
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else None
        fallback = Resume(step=step, elapsed_s=60.0 * float(minutes), samples=samples, metrics=metrics, loaded=True)
        try:
            data = read_current(out_dir, TRAIN_STATE)
        except FileNotFoundError:
            if main:
                warnings.warn(f"{out_dir} has no {TRAIN_STATE}; resuming the weights at step {fallback.step} "
                              f"with a fresh optimizer", stacklevel=5)
            return fallback
        except OSError as e:
            raise ResumeError(f"cannot read training state {ts_path}: {e.strerror or e}") from None
        hint = "delete it to resume the weights with a fresh optimizer"
        try:
            ts = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling/format failure means the same thing here
            raise ResumeError(f"cannot read training state {ts_path} ({one_line(e)}); {hint}") from None
        del data
        version = ts.get("version", 0) if isinstance(ts, dict) else None
        if not isinstance(version, int) or version > STATE_VERSION:
            raise ResumeError(f"{ts_path} is not a gaia_gym training state this version reads; {hint}")
        if ts.get("weights_sha256") != info["weights"].get("sha256"):
            if main:
                warnings.warn(f"{ts_path} belongs to other weights than {out_dir / WEIGHTS}; resuming the weights "
                              f"at step {fallback.step} with a fresh optimizer", stacklevel=5)
            return fallback
        ok = (isinstance(ts.get("step"), int) and ts["step"] >= 0 and is_number(ts.get("elapsed_s"))
              and isinstance(ts.get("samples"), int) and isinstance(ts.get("optimizer"), dict)
              and isinstance(ts.get("rng"), (list, type(None))))
        if not ok:
            raise ResumeError(f"{ts_path} is incomplete or malformed (step, elapsed_s, samples, optimizer, "
                              f"rng); {hint}")
        return Resume(step=ts["step"], elapsed_s=float(ts["elapsed_s"]), samples=ts["samples"], metrics=metrics,
                       optimizer=ts["optimizer"], rng=ts["rng"], loaded=True)

    def _build_optimizer(self, state: dict | None) -> None:
        cfg = self.cfg
        groups = param_groups(self.raw, cfg.weight_decay)
        fused = True if self.device.type == "cuda" else None
        opt = torch.optim.AdamW(groups, lr=lr_at(self.step, cfg), betas=cfg.betas, fused=fused)
        if state is not None:
            try:
                opt.load_state_dict(state)
            except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
                raise ResumeError(f"{self.out_dir / TRAIN_STATE}: optimizer state does not fit this model: "
                                  f"{one_line(e)}") from None
            for g, spec in zip(opt.param_groups, groups):  # this run's hyperparameters win over the stored ones
                g.update(weight_decay=spec["weight_decay"], betas=cfg.betas, fused=fused)
        self.opt = opt
        self.params = [p for g in groups for p in g["params"]]

    def _restore_rng(self, rng: list | None) -> None:
        if rng is not None and len(rng) == self.world:
            try:
                set_rng_state(rng[self.ctx.rank], self.device)
                return
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
                raise ResumeError(f"{self.out_dir / TRAIN_STATE}: malformed RNG state ({one_line(e)}); "
                                  f"delete it to resume the weights with a fresh optimizer") from None
        seed_all(self.cfg.seed + 1000 * self.ctx.rank + self.step)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step on `batch`; returns a device bool scalar: was its loss or grad norm non-finite
        (no device sync here)."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        n = batch_len(batch)
        batch = to_device(batch, self.device)
        with autocast(self.device, cfg.bf16):
            loss, metrics = self.engine(batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise TypeError("compute_loss must return (scalar loss tensor, dict of metrics)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.clean = False
        self.opt.step()
        self.step += 1
        self.clean = True
        self.steps_this_run += 1
        self.samples += n * self.world

        loss_d, gnorm_d = loss.detach().double(), gnorm.detach().double()
        self._last = (loss_d, gnorm_d)
        self._win_loss += loss_d
        self._win_gnorm += gnorm_d
        for k, v in (metrics or {}).items():
            self._win_metrics.setdefault(k, []).append(float(v))
        self._win_steps += 1
        self._win_samples += n * self.world
        self.pbar.update(1)
        return ~(torch.isfinite(loss_d) & torch.isfinite(gnorm_d))

    def _decide(self, signum: int, bad: torch.Tensor) -> tuple[int, int, int, int]:
        """(out of time, checkpoint due, signal, non-finite), identical on every rank (MAX all-reduce)."""
        flags = self._flags
        flags.zero_()
        if self.main:
            flags[0] = int(bool(self.budget_s) and self.elapsed() >= self.budget_s)
            flags[1] = int(time.monotonic() - self.last_ckpt >= self.cfg.checkpoint_minutes * 60.0)
        flags[2] = signum
        flags[3] = bad.to(torch.int64)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        out_of_time, ckpt_due, sig, nonfinite = (int(x) for x in flags.tolist())
        return out_of_time, ckpt_due, sig, nonfinite

    def _non_finite_error(self, what: str = "") -> TrainingError:
        loss, gnorm = (float(t) for t in self._last) if self._last is not None else (math.nan, math.nan)
        if not what:
            what = ("loss" if not math.isfinite(loss) else "gradient norm" if not math.isfinite(gnorm)
                    else "loss or gradient norm (on another rank)")
        kept = (f"the last good checkpoint (step {self.saved_step}) in {self.out_dir} is kept"
                if self.saved_step is not None else f"nothing was saved to {self.out_dir}")
        return TrainingError(f"the {what} became non-finite at step {self.step} (loss {loss:.4g}, grad norm "
                             f"{gnorm:.4g}, lr {lr_at(self.step - 1, self.cfg):.3g}); training stopped and {kept}; "
                             f"lower the learning rate or check the data")

    # -- logging ---------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        z = dict(device=self.device, dtype=torch.float64)
        self._win_loss, self._win_gnorm = torch.zeros((), **z), torch.zeros((), **z)
        self._win_metrics: dict[str, list[float]] = {}
        self._win_steps, self._win_samples, self._win_t0 = 0, 0, time.monotonic()

    def log(self) -> None:
        """This log window's mean loss / grad norm / metrics (averaged over ranks) to TensorBoard and the bar."""
        steps = self._win_steps
        if steps == 0:
            return
        dt = max(1e-9, time.monotonic() - self._win_t0)
        local = {"loss": self._win_loss.item() / steps, "grad_norm": self._win_gnorm.item() / steps}
        local.update({k: sum(v) / len(v) for k, v in self._win_metrics.items()})
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, local)
            keys = sorted({k for d in gathered for k in d})
            local = {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}
        self.metrics = local
        if self.main:
            w, lr = self.writer, self.opt.param_groups[0]["lr"]
            for k, v in local.items():
                w.add_scalar(f"train/{k}", v, self.step)
            w.add_scalar("opt/lr", lr, self.step)
            w.add_scalar("perf/steps_per_s", steps / dt, self.step)
            w.add_scalar("perf/samples_per_s", self._win_samples / dt, self.step)
            w.add_scalar("perf/minutes", self.elapsed() / 60.0, self.step)
            w.flush()
            self.pbar.set_postfix(loss=f"{local['loss']:.4g}", lr=f"{lr:.2e}", refresh=False)
        self._reset_window()

    def images(self) -> None:
        """`log_images(model, writer, step)` on rank 0, in eval mode without grad (once per step)."""
        if not (self.main and self.log_images is not None) or self.last_image_step == self.step:
            return
        raw = self.raw
        was_training = raw.training
        raw.eval()
        try:
            with torch.no_grad():
                self.log_images(raw, self.writer, self.step)
        finally:
            raw.train(was_training)
        self.writer.flush()
        self.last_image_step = self.step

    # -- checkpoint ------------------------------------------------------------------------------
    def checkpoint(self, collective: bool) -> None:
        """Save model + training state into out_dir as one transaction (rank 0 writes). `collective`: every
        rank calls this (their RNG states are gathered). Refuses non-finite weights (TrainingError)."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.params]).all() if self.params else None
        if finite is not None and not bool(finite):
            raise self._non_finite_error("weights")
        mine = rng_state(self.device)
        if collective and self.world > 1:
            rngs: list = [None] * self.world
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        step, elapsed = self.step, self.elapsed()
        self.last_ckpt = time.monotonic()
        if not self.main:
            self.saved_step = step  # every rank agrees on what is saved (the final save is collective)
            return
        meta = {"step": step, "minutes": round(elapsed / 60.0, 4), "samples": self.samples,
                "metrics": self.metrics, "world_size": self.world, "train": self.cfg_d}

        def train_state(info: dict) -> dict:
            state = {"version": STATE_VERSION, "step": step, "elapsed_s": elapsed, "samples": self.samples,
                     "optimizer": self.opt.state_dict(), "rng": rngs, "world_size": self.world,
                     "weights_sha256": info["weights"]["sha256"], "train": self.cfg_d}
            return {TRAIN_STATE: lambda f: torch.save(state, f)}

        save_model(self.out_dir, self.raw, self.kind, self.config_d, meta, extra=train_state)
        self.saved_step = step
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.raw, step)

    def _checkpoint_on_interrupt(self) -> None:
        """A KeyboardInterrupt outside the step-boundary path (a second Ctrl-C, or from the batch iterator):
        checkpoint on rank 0 if the model is at a step boundary."""
        if not (self.ctx is not None and self.main and self.clean and self.steps_this_run
                and self.saved_step != self.step):
            return
        try:
            self.checkpoint(collective=False)
            self.pbar.write(f"interrupted: checkpoint at step {self.step} in {self.out_dir}")
        except Exception as e:  # noqa: BLE001 - report, but let the interrupt through
            self.pbar.write(f"interrupted: could not checkpoint ({type(e).__name__}: {e})")

    # -- the run ---------------------------------------------------------------------------------
    def _loop(self) -> str:
        """Train to cfg.steps or the time budget; returns why it stopped ("steps" | "time")."""
        cfg = self.cfg
        if self.budget_s and self.elapsed0 >= self.budget_s:
            return "time"
        stopped = "steps"
        with SignalFlag() as sig:
            it = iter(self.batches(self.ctx.rank, self.world, data_seed(cfg.seed, self.step))) \
                if self.step < cfg.steps else None
            while it is not None and self.step < cfg.steps:
                try:
                    batch = next(it)
                except StopIteration:
                    raise RuntimeError("the batch iterator ended; batches() must return an endless iterator") from None
                bad = self.train_step(batch)
                out_of_time, ckpt_due, signum, nonfinite = self._decide(sig.signum, bad)
                if nonfinite:
                    raise self._non_finite_error()
                final = self.step >= cfg.steps or out_of_time or signum
                if self.step % cfg.log_every == 0 or final:
                    self.log()
                if cfg.image_every and self.step % cfg.image_every == 0:
                    self.images()
                if signum:
                    self.checkpoint(collective=True)
                    if signum == signal.SIGTERM:
                        raise SystemExit(128 + signum)
                    raise KeyboardInterrupt
                if out_of_time:
                    stopped = "time"
                    break
                if ckpt_due:
                    self.checkpoint(collective=True)
        if self.steps_this_run and self.saved_step != self.step:
            self.checkpoint(collective=True)
        if self.steps_this_run and cfg.image_every:
            self.images()
        return stopped

    def close(self, finished: bool = False) -> None:
        """Close the progress bar and TensorBoard writer; leave a process group this run created (after a
        barrier when the run `finished` normally, so no rank hangs up on a peer still in a collective)."""
        if self.pbar is not None:
            self.pbar.close()
        if self.writer is not None:
            self.writer.close()
        if self.ctx is not None and self.ctx.owns_group and dist.is_initialized():
            if finished:  # every rank gets here before any tears its connections down: a gloo rank whose
                dist.barrier()  # peer left first can abort on exit ("terminate called without an active exception")
            dist.destroy_process_group()

    def run(self) -> dict:
        """setup, train, checkpoint; returns {"step", "minutes", "metrics", "stopped"}."""
        finished = False
        try:
            self.setup()
            stopped = self._loop()
            finished = True
        except KeyboardInterrupt:
            self._checkpoint_on_interrupt()
            raise
        finally:
            self.close(finished)
        return {"step": self.step, "minutes": self.elapsed() / 60.0, "metrics": self.metrics, "stopped": stopped}


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
    Raises `TrainingError` when the loss or gradient norm becomes non-finite (the model then holds the
    non-finite weights; out_dir keeps the last good checkpoint), `ResumeError` / `ModelFileError` when
    out_dir's checkpoint cannot be resumed.
    """
    return Trainer(model, model_kind, model_config, batches, cfg, out_dir, log_images=log_images,
                   on_checkpoint=on_checkpoint, progress=progress).run()


__all__ = ["DEFAULT_CHECKPOINT_MINUTES", "ResumeError", "Trainer", "TrainConfig", "TrainingError", "data_seed", "lr_at",
           "train"]
