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
file written for another limit is refused too (a budget cannot be raised by reopening it). Writes are
atomic: a crash leaves the previous ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gaia_gym.errors import ConfigError, GaiaGymError
from gaia_gym.fileio import atomic_write_json

FORMAT = "gaia_gym.real_budget"


class BudgetExceeded(GaiaGymError):
    """A real-simulator step beyond the budget was asked for."""


@dataclass
class RealBudget:
    path: Path | None
    limit: int
    entries: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path | None, limit: int) -> "RealBudget":
        """The ledger at `path` (created empty if absent; None: in memory only) for `limit` real steps."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"a real-step budget must be an integer >= 0, got {limit!r}")
        if path is None:
            return cls(None, limit)
        p = Path(path)
        if not p.exists():
            return cls(p, limit)
        try:
            d = json.loads(p.read_text())
            ok = d.get("format") == FORMAT and isinstance(d.get("entries"), list)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"{p}: not a real-step ledger ({FORMAT})")
        if int(d["limit"]) != limit:
            raise ConfigError(f"{p} was kept for a budget of {d['limit']} real steps, not {limit}")
        return cls(p, limit, list(d["entries"]))

    @property
    def used(self) -> int:
        return sum(int(e["steps"]) for e in self.entries)

    @property
    def left(self) -> int:
        return self.limit - self.used

    def cap(self, steps: int) -> int:
        """How many of `steps` may still be taken (0 when the budget is spent)."""
        return max(0, min(int(steps), self.left))

    def spend(self, steps: int, purpose: str, **info) -> int:
        """Record `steps` real steps taken for `purpose` (e.g. "dataset", "round", "checkpoint_eval"), with
        any JSON-able `info`; returns what is left. Over the budget: `BudgetExceeded`, nothing written."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"real steps must be an integer >= 0, got {steps!r}")
        if not purpose or not isinstance(purpose, str):
            raise ConfigError("a real-step entry needs a purpose (e.g. 'dataset', 'round', 'checkpoint_eval')")
        if steps > self.left:
            raise BudgetExceeded(f"{steps} real steps for {purpose!r} exceed the budget: {self.used} of "
                                 f"{self.limit} used, {self.left} left")
        self.entries.append({"purpose": purpose, "steps": steps, **info})
        self._write()
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

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"format": FORMAT, "limit": self.limit, "entries": self.entries})


__all__ = ["RealBudget", "BudgetExceeded"]
