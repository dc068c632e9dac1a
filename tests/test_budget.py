"""The real-step ledger: every real simulator step counted against one budget, across resumes."""

from __future__ import annotations

import json

import pytest

from gaia_gym.budget import BudgetExceeded, RealBudget
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
