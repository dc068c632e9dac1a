"""The real-step ledger: every real simulator step counted against one budget, across resumes."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from gaia_gym.rl.ledger import BudgetExceeded, RealBudget
from gaia_gym.errors import ConfigError


def test_spending_is_counted_by_purpose_and_survives_a_reopen(tmp_path):
    path = tmp_path / "budget.json"
    b = RealBudget.open(path, limit=1000)
    assert b.spend(600, "dataset", data="data/carracing") == 400
    assert b.cap(500) == 400 and b.cap(50) == 50
    b.spend(300, "round", round=1)
    again = RealBudget.open(path, limit=1000)  # a resumed pipeline keeps counting
    assert again.used == 900 and again.left == 100
    again.spend(40, "checkpoint_eval")
    assert again.by_purpose() == {"dataset": 600, "round": 300, "checkpoint_eval": 40}
    assert again.summary()["real_env_steps_used"] == 940
    assert json.loads(path.read_text())["entries"][1] == {"purpose": "round", "steps": 300, "round": 1}


def test_over_the_budget_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "budget.json"
    b = RealBudget.open(path, limit=100)
    b.spend(90, "dataset")
    before = path.read_text()
    with pytest.raises(BudgetExceeded, match="exceed the budget: 90 of 100 used, 10 left"):
        b.spend(11, "round")
    assert path.read_text() == before and b.used == 90
    assert b.cap(1000) == 10
    b.spend(10, "round")
    assert b.cap(1) == 0 and b.left == 0


def test_a_ledger_cannot_be_reopened_with_another_limit_or_bad_input(tmp_path):
    path = tmp_path / "budget.json"
    RealBudget.open(path, limit=100).spend(5, "dataset")
    with pytest.raises(ConfigError, match="budget of 100 real steps, not 200"):
        RealBudget.open(path, limit=200)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a real-step ledger"):
        RealBudget.open(tmp_path / "junk.json", limit=100)
    b = RealBudget.open(None, limit=10)  # in memory
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError):
            b.spend(bad, "round")
    with pytest.raises(ConfigError, match="purpose"):
        b.spend(1, "")
    with pytest.raises(ConfigError, match="integer >= 0"):
        RealBudget.open(None, limit=-5)


def _spend_many(path: str, times: int, tag: str) -> None:
    b = RealBudget.open(path, limit=100_000)
    for i in range(times):
        b.spend(5, "round", writer=tag, i=i)


def test_two_processes_writing_one_ledger_keep_every_entry(tmp_path):
    path = tmp_path / "budget.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spend_many, args=(str(path), 200, tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 400
    assert sum(e["writer"] == "a" for e in entries) == 200 and sum(e["writer"] == "b" for e in entries) == 200


def _spend_until_refused(path: str, q) -> None:
    b = RealBudget.open(path, limit=1000)
    n = 0
    while True:
        try:
            b.spend(7, "round")
        except BudgetExceeded:
            break
        n += 1
    q.put(n)


def test_two_processes_cannot_pass_the_limit_together(tmp_path):
    path = tmp_path / "budget.json"
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_spend_until_refused, args=(str(path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    counts = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert sum(counts) == 1000 // 7
    b = RealBudget.open(path, limit=1000)
    assert b.used == 7 * (1000 // 7) <= 1000 and len(b.entries) == sum(counts)


@pytest.mark.parametrize("text", [
    '{"format": "gaia_gym.real_budget", "limit": 100, "entries": [{"purpose": "round", "steps": -100000}]}',
    '{"format": "gaia_gym.real_budget", "limit": 100, "entries": [{"purpose": "round", "steps": 2.5}]}',
    '{"format": "gaia_gym.real_budget", "limit": 100, "entries": [{"purpose": "round"}]}',
    '{"format": "gaia_gym.real_budget", "limit": 100, "entries": [5]}',
    '{"format": "gaia_gym.real_budget", "limit": "100", "entries": []}',
    '{"format": "gaia_gym.real_budget", "entries": []}',
    '{"format": "gaia_gym.real_budget", "limit": 100, "entries": [{"purpose": "round", "steps": 101}]}',
    '[1, 2]',
    '',
])
def test_a_corrupted_or_negative_ledger_is_refused_with_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "budget.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        RealBudget.open(path, limit=100)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
