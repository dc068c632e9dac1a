"""Real-transition bookkeeping: every step taken in a real simulator, by purpose, against one budget.

An agent "trained in imagination from N real transitions" must count every real step it cost: the
dataset the world model learned from, each later round of real driving with the current policy (data
for the next world model), and every real episode driven only to pick a checkpoint. `RealBudget` is that
ledger, kept in one JSON file so that a pipeline that stops and resumes keeps counting:

    budget = RealBudget.open("runs/rounds/budget.json", limit=200_000)
    budget.spend(dataset_steps, "dataset", data="data/carracing")
    cap = budget.cap(5_000)                # at most what is left
    ... drive the real simulator for at most `cap` steps ...
    budget.spend(driven, "round", round=1)
    budget.summary()                       # {"real_env_steps_used": ..., "by_purpose": {...}, ...}

Spending past the limit is refused before anything is written (`BudgetExceeded`, a one-line error); a
file written for another limit is refused too (a budget cannot be raised by reopening it), and so is a
file whose entries are not non-negative integer step counts. Several processes may share one ledger:
each `spend` re-reads the file and appends under an exclusive lock (``<ledger>.lock``, `fcntl.flock`),
so no entry is lost and the limit holds across writers. Writes are atomic: a crash leaves the previous
ledger.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gaia_gym.errors import ConfigError, GaiaGymError
from gaia_gym.fileio import atomic_write_json

FORMAT = "gaia_gym.real_budget"


class BudgetExceeded(GaiaGymError):
    """A real-simulator step beyond the budget was asked for."""


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read(p: Path, limit: int) -> list[dict]:
    """The validated entries of the ledger at `p` (empty if absent); one-line `ConfigError` otherwise."""
    if not p.exists():
        return []
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: not a real-step ledger ({FORMAT}): {type(e).__name__}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("entries"), list):
        raise ConfigError(f"{p}: not a real-step ledger ({FORMAT})")
    if not _is_count(d.get("limit")):
        raise ConfigError(f"{p}: its limit {d.get('limit')!r} is not an integer >= 0")
    if d["limit"] != limit:
        raise ConfigError(f"{p} was kept for a budget of {d['limit']} real steps, not {limit}")
    for i, e in enumerate(d["entries"]):
        if not isinstance(e, dict) or not _is_count(e.get("steps")) or not isinstance(e.get("purpose"), str):
            raise ConfigError(f"{p}: entry {i} is not {{'purpose': str, 'steps': integer >= 0}}: {e!r}"[:300])
    if sum(e["steps"] for e in d["entries"]) > limit:
        raise ConfigError(f"{p}: its entries spend more than its limit of {limit} real steps")
    return list(d["entries"])


@dataclass
class RealBudget:
    path: Path | None
    limit: int
    entries: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path | None, limit: int) -> "RealBudget":
        """The ledger at `path` (created empty if absent; None: in memory only) for `limit` real steps."""
        if not _is_count(limit):
            raise ConfigError(f"a real-step budget must be an integer >= 0, got {limit!r}")
        if path is None:
            return cls(None, limit)
        p = Path(path)
        return cls(p, limit, _read(p, limit))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access to the ledger file across processes (a lock file beside it: the ledger itself
        is replaced by each atomic write, so a lock on it would not be shared)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def refresh(self) -> "RealBudget":
        """Re-read the file (other processes may have spent since)."""
        if self.path is not None:
            self.entries = _read(self.path, self.limit)
        return self

    @property
    def used(self) -> int:
        return sum(int(e["steps"]) for e in self.entries)

    @property
    def left(self) -> int:
        return self.limit - self.used

    def cap(self, steps: int) -> int:
        """How many of `steps` may still be taken (0 when the budget is spent)."""
        return max(0, min(int(steps), self.refresh().left))

    def spend(self, steps: int, purpose: str, **info) -> int:
        """Record `steps` real steps taken for `purpose` (e.g. "dataset", "round", "checkpoint_eval"), with
        any JSON-able `info`; returns what is left. Over the budget: `BudgetExceeded`, nothing written."""
        if not _is_count(steps):
            raise ConfigError(f"real steps must be an integer >= 0, got {steps!r}")
        if not purpose or not isinstance(purpose, str):
            raise ConfigError("a real-step entry needs a purpose (e.g. 'dataset', 'round', 'checkpoint_eval')")
        if self.path is None:
            return self._append(steps, purpose, info)
        with self._locked():  # read-modify-write as one step: another writer's entries are kept
            self.refresh()
            left = self._append(steps, purpose, info)
            atomic_write_json(self.path, {"format": FORMAT, "limit": self.limit, "entries": self.entries})
        return left

    def _append(self, steps: int, purpose: str, info: dict) -> int:
        if steps > self.left:
            raise BudgetExceeded(f"{steps} real steps for {purpose!r} exceed the budget: {self.used} of "
                                 f"{self.limit} used, {self.left} left")
        self.entries.append({"purpose": purpose, "steps": steps, **info})
        return self.left

    def by_purpose(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e["purpose"]] = out.get(e["purpose"], 0) + int(e["steps"])
        return out

    def summary(self) -> dict:
        """What a result file records: steps used, the limit, and the split by purpose."""
        return {"real_env_steps_used": self.used, "real_env_steps_limit": self.limit,
                "by_purpose": self.by_purpose(), "entries": len(self.entries)}


__all__ = ["BudgetExceeded", "RealBudget"]
