"""Rounds of real driving (gaia_gym.rl.rounds): a round adds the agent's real episodes to a dataset and
spends them in the ledger, which refuses an overdraft; fine-tuning the heads moves only the heads, and an
agent trained on the old model still loads on the new one (its inputs are the same)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from gaia_gym.bundle import load_bundle
from gaia_gym.data.format import load_episode, read_manifest
from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.envs import GaiaDriveVecEnv
from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.rl.agent import load_agent, save_agent
from gaia_gym.rl.extractor import HEAD_PREFIXES, policy_kwargs, world_model_sha
from gaia_gym.rl.ledger import BudgetExceeded, RealBudget
from gaia_gym.rl.rounds import drive_round, finetune_heads
from gaia_gym.seeds import HELD_OUT_FROM, round_tracks
from gaia_gym.testing import tiny_bundle

OBS = "tokens+features"


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_bundle(model_dir)


@pytest.fixture(scope="module")
def agent(loaded):
    venv = GaiaDriveVecEnv(num_envs=2, bundle=loaded, obs_mode=OBS, horizon=8)
    return PPO("MultiInputPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu",
               policy_kwargs=policy_kwargs(loaded, net_arch=[16]))


@pytest.fixture(scope="module")
def drives(tmp_path_factory, loaded, agent):
    out = tmp_path_factory.mktemp("round") / "drives"
    budget = RealBudget.open(out.parent / "budget.json", limit=20)
    summary = drive_round(agent, loaded, out, round_tracks(1, 2), budget, 1, progress=False, max_steps=5)
    return out, budget, summary


def test_round_tracks_are_training_tracks():
    r = round_tracks(1, 20) + round_tracks(2, 20)
    assert len(set(r)) == 40 and max(r) < HELD_OUT_FROM  # never a validation or test track
    with pytest.raises(ConfigError, match="round >= 1"):
        round_tracks(0, 5)


def test_a_round_adds_episodes_and_the_ledger_refuses_an_overdraft(drives, loaded, agent):
    out, budget, summary = drives
    idx = EpisodeIndex(out, split="train")
    assert len(idx) == 2 and idx.total_steps == 10 and summary["episodes_in_dataset"] == 2
    ep = load_episode(idx.paths[0])
    assert ep["frames"].shape == (5, 64, 64, 3) and ep["frames"].dtype == np.uint8
    assert ep["raw_action"].shape == (5, 3) and ep["truncated"][-1]  # capped: the last step is a cut
    assert (np.abs(ep["steering"]) <= 1).all() and (ep["target_speed_mps"] >= 0).all()
    assert ep["meta"]["round"] == 1 and ep["meta"]["behaviour"] == "agent"
    assert budget.summary()["by_purpose"] == {"round": 10}
    # a rerun drives nothing again and spends nothing
    again = drive_round(agent, loaded, out, round_tracks(1, 2), budget, 1, progress=False, max_steps=5)
    assert again["driven"] == [] and budget.refresh().used == 10
    # 10 steps left: two more 5-step episodes fit, the third is refused before it starts
    with pytest.raises(BudgetExceeded, match="budget has 0 of 20"):
        drive_round(agent, loaded, out, round_tracks(2, 3), budget, 2, progress=False, max_steps=5)
    assert budget.refresh().used == 20 and len(read_manifest(out)["episodes"]) == 4
    with pytest.raises(BudgetExceeded):
        budget.spend(1, "round")


def test_finetune_heads_moves_only_the_heads_and_the_agent_still_loads(drives, loaded, agent, model_dir, tmp_path):
    out, _, _ = drives
    rec = finetune_heads(loaded, [out, out], tmp_path / "model", steps=60, batch_size=8, lr=3e-3, progress=False)
    tuned = load_bundle(tmp_path / "model")
    mine, theirs = loaded.world_model.state_dict(), tuned.world_model.state_dict()
    moved = {k for k in mine if not torch.equal(mine[k], theirs[k])}
    assert moved and all(k.startswith(HEAD_PREFIXES) for k in moved)
    assert rec["held_out_after"]["reward_loss"] < rec["held_out_before"]["reward_loss"]
    assert world_model_sha(tuned) != world_model_sha(loaded)
    assert world_model_sha(tuned, heads=False) == world_model_sha(loaded, heads=False)
    # an agent saved on the old model loads on the tuned one; not on a model with another trunk
    save_agent(agent, tmp_path / "a.zip", world_model=loaded)
    assert load_agent(tmp_path / "a.zip", world_model=tuned, device="cpu") is not None
    with pytest.raises(ModelFileError, match="was trained on the world model"):
        load_agent(tmp_path / "a.zip", world_model=tiny_bundle(seed=1), device="cpu")
    # done already: returned as recorded, nothing trained again
    assert finetune_heads(loaded, [out, out], tmp_path / "model", steps=60, progress=False) == rec


def test_the_rounds_command_runs_a_round_and_resumes(drives, agent, loaded, model_dir, tmp_path):
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "agents" / "rounds.py"))["main"]
    data, _, _ = drives
    save_agent(agent, tmp_path / "a.zip", world_model=loaded)
    argv = ["--agent", str(tmp_path / "a.zip"), "--model", str(model_dir), "--data", str(data), "--out",
            str(tmp_path / "r"), "--rounds", "1", "--tracks", "1", "--max-steps", "5", "--head-steps", "5",
            "--limit", "2000", "--no-progress", "--", "--timesteps", "64", "--envs", "2", "--horizon", "8",
            "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1", "--net-arch", "16", "--eval-every", "64",
            "--eval-episodes", "1", "--eval-max-steps", "3", "--no-progress"]
    summary = main(argv)
    r = summary["rounds"][0]
    assert r["drives"]["episodes_in_dataset"] == 1 and (tmp_path / "r" / "round_1" / "agent" / "best.zip").exists()
    used = summary["budget"]["by_purpose"]
    # the dataset once, the round's 5 steps, two 3-step evaluations (the start and the end)
    assert used == {"dataset": EpisodeIndex(data, split="all").total_steps, "round": 5, "checkpoint_eval": 6}
    again = main(argv)  # a rerun: every stage done, nothing driven or spent again
    assert again["budget"]["by_purpose"] == used
