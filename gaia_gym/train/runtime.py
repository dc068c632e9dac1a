"""What the `Trainer` needs around it: the process group (DDP), parameter groups, batches on the
device, RNG states to checkpoint and restore, the config diff a resume refuses, and a signal flag that
turns SIGINT / SIGTERM into "checkpoint, then stop" (one job per helper; `gaia_gym.train.loop` uses them).
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

Batch = dict[str, Any]


class LossModule(nn.Module):
    """Routes DDP's forward to `compute_loss`, so DDP's forward/backward hooks run as designed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch):
        return self.model.compute_loss(batch)


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Device + process group: DDP when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        return Dist(0, 1, device, False)
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
    return Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on >= 2-D weights; none on biases, norm scales (1-D) and embedding tables."""
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def to_device(batch: Batch, device: torch.device) -> Batch:
    if not isinstance(batch, dict):
        raise TypeError(f"batches must yield dict[str, Tensor], got {type(batch).__name__}")
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_len(batch: Batch) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 1


def rng_state(device: torch.device) -> dict:
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


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]
    more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
    return ", ".join(diffs[:4]) + more


@dataclass
class Resume:
    step: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    metrics: dict | None = None
    optimizer: dict | None = None
    rng: list | None = None
    loaded: bool = False  # a checkpoint was loaded (its step is the last good one)


def one_line(e: BaseException, limit: int = 160) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class SignalFlag:
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


__all__ = ["Batch", "batch_len", "config_diff", "Dist", "is_number", "LossModule", "one_line", "param_groups", "Resume", "rng_state", "seed_all", "set_rng_state", "setup_distributed", "SignalFlag", "to_device"]
