"""The look-ahead planner (CEM / MPPI over the imagination engine)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import runpy
import types
from pathlib import Path

import pytest
import torch

from gaia_gym.bundle import save_bundle
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination
from gaia_gym.rl.planner import Planner, PlannerConfig, add_planner_args, planner_config_from_args

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TARGET = torch.tensor([0.5, -0.3])


def known_reward(tokens, actions, features):
    """A reward the planner must discover: the closer the action to TARGET, the better (0 at best)."""
    return -((actions - TARGET) ** 2).sum(-1)


@pytest.fixture(scope="module")
def examples(bundle, tmp_path_factory):
    """The planning examples' globals (`runpy.run_path`: scripts are run as files, not imported), and a
    saved tiny model for them."""
    plan_real, plan_compute_sweep, futures_and_counterfactuals = (
        types.SimpleNamespace(**runpy.run_path(str(EXAMPLES / f"{name}.py")))
        for name in ("plan_real", "plan_compute_sweep", "futures_and_counterfactuals"))
    model = save_bundle(bundle, tmp_path_factory.mktemp("plan") / "wm")
    return plan_real, plan_compute_sweep, futures_and_counterfactuals, model


def fresh_engine(bundle, n=2, seed=0):
    eng = Imagination(bundle, n=n, seed=seed)
    eng.reset(prompt=torch.arange(n))
    return eng


def drive_return(bundle, choose, steps=6):
    """Known-reward return of `steps` real decisions in an imagined episode (the planner's own reward)."""
    eng = fresh_engine(bundle, n=1)
    total = 0.0
    for _ in range(steps):
        a = choose(eng)
        total += float(known_reward(None, a[None], None)[0])
        eng.step(a[None])
    return total


def test_planner_beats_random_actions_on_a_known_reward(bundle):
    cfg = PlannerConfig(candidates=32, horizon=3, iterations=3, elites=4, low=(-1, -1), high=(1, 1))
    planner = Planner(bundle, cfg, seed=0, reward_fn=known_reward)
    planned = drive_return(bundle, lambda eng: planner.plan(eng.state(), 0))
    g = torch.Generator().manual_seed(0)
    random = [drive_return(bundle, lambda eng: torch.rand(2, generator=g) * 2 - 1) for _ in range(5)]
    assert planned > max(random)
    assert planned > -0.1 * 6  # close to the optimum 0, random is about -1.5 per step
    mppi = Planner(bundle, PlannerConfig(method="mppi", candidates=32, horizon=3, iterations=3, mppi_temperature=0.05,
                                         low=(-1, -1), high=(1, 1)), seed=0, reward_fn=known_reward)
    assert drive_return(bundle, lambda eng: mppi.plan(eng.state(), 0)) > max(random)


def test_planning_leaves_the_original_state_untouched(bundle):
    eng = fresh_engine(bundle, n=2)
    eng.step(torch.zeros(2, 2))
    before = eng.state()
    Planner(bundle, PlannerConfig(candidates=8, horizon=4, samples=2), seed=0).plan(eng.state(), row=1)
    after = eng.state()
    assert torch.equal(before.latents, after.latents) and torch.equal(before.features, after.features)
    assert torch.equal(before.rng, after.rng) and before.block == after.block
    assert torch.equal(before.steps, after.steps)
    for layer in range(len(before.memory.k)):
        assert torch.equal(before.memory.keys(layer), after.memory.keys(layer))
        assert torch.equal(before.memory.values(layer), after.memory.values(layer))
    # and the engine continues exactly as an engine that never planned
    twin = Imagination(bundle, n=2)
    twin.restore(before)
    a = torch.tensor([[0.3, 0.1], [-0.5, 0.4]])
    assert torch.equal(eng.step(a).latents, twin.step(a).latents)


def test_seeded_planning_is_reproducible(bundle):
    cfg = PlannerConfig(candidates=8, horizon=3, samples=2, iterations=2, elites=3)

    def decisions(seed):
        eng = fresh_engine(bundle, n=1)
        planner, out = Planner(bundle, cfg, seed=seed), []
        for _ in range(3):
            a = planner.plan(eng.state(), 0)
            out.append(a)
            eng.step(a[None])
        return torch.stack(out)

    first = decisions(7)
    assert torch.equal(first, decisions(7))
    assert not torch.equal(first, decisions(8))
    assert bool(((first >= torch.tensor(cfg.low)) & (first <= torch.tensor(cfg.high))).all())


def test_scores_average_sampled_futures(bundle):
    eng = fresh_engine(bundle, n=1)
    planner = Planner(bundle, PlannerConfig(candidates=4, horizon=2, samples=3, elites=2), seed=0)
    scores = planner.score(eng.state(), 0, torch.zeros(4, 2, 2))
    assert scores.shape == (4,) and bool(torch.isfinite(scores).all())
    assert planner.engine.n == 12  # K * S rows in one batched engine


def test_planner_flags_round_trip_to_a_config():
    p = argparse.ArgumentParser()
    add_planner_args(p)
    assert planner_config_from_args(p.parse_args([])) == PlannerConfig()
    a = p.parse_args(["--method", "mppi", "--candidates", "4", "--horizon", "3", "--elites", "40", "--speed-max", "0.5"])
    cfg = planner_config_from_args(a, samples=2)
    assert (cfg.method, cfg.candidates, cfg.horizon, cfg.samples) == ("mppi", 4, 3, 2)
    assert cfg.elites == 4 and cfg.high == (1.0, 0.5)  # elites capped at the candidates
    assert a.model is None and a.seed == 0
    with pytest.raises(ValueError):
        planner_config_from_args(p.parse_args(["--horizon", "2", "--execute", "3"]))


@pytest.mark.parametrize("bad", [dict(method="random"), dict(candidates=0), dict(elites=40, candidates=8),
                                 dict(low=(0.5, -1), high=(0.2, 1)), dict(mppi_temperature=0.0)])
def test_bad_planner_config_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        PlannerConfig(**bad)


def test_execute_drives_several_actions_of_one_plan(bundle):
    eng = fresh_engine(bundle, n=1)
    planner = Planner(bundle, PlannerConfig(candidates=4, horizon=4, execute=2, elites=2), seed=0)
    first = planner.act(eng.state(), 0)
    assert planner.decisions == 1 and torch.equal(first, planner.last["mean"][0].clamp(planner.low, planner.high))
    second = planner.act(eng.state(), 0)  # the plan's second action, no new decision
    assert planner.decisions == 1 and torch.equal(second, planner.last["mean"][1].clamp(planner.low, planner.high))
    planner.act(eng.state(), 0)
    assert planner.decisions == 2
    with pytest.raises(ValueError):
        PlannerConfig(horizon=3, execute=4)


def test_plan_real_example_drives_the_real_simulator_and_resumes(examples, tmp_path):
    plan_real, _, _, model = examples
    args = ["--model", str(model), "--episodes", "2", "--max-steps", "3", "--candidates", "4", "--horizon", "2",
            "--elites", "2", "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"),
            "--work", str(tmp_path / "work"), "--agents", str(tmp_path / "none.json")]
    rec = plan_real.main(args)
    assert set(rec["real_return_per_seed"]) == {"1000000", "1000001"} and rec["capped"]
    assert rec["decisions_per_s"] > 0 and (tmp_path / "p.png").stat().st_size > 0
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["real_return_per_seed"] == rec["real_return_per_seed"]
    # rerun: both tracks are read back from the work directory, nothing is driven again
    again = plan_real.main(args)
    assert again["real_return_per_seed"] == rec["real_return_per_seed"]
    assert again["wall_seconds"] == rec["wall_seconds"]
    # another run under --key leaves the top-level record alone; --replot redraws from the JSON
    other = plan_real.main(args + ["--key", "other", "--episodes", "1", "--work", str(tmp_path / "work2")])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["real_return_per_seed"] == rec["real_return_per_seed"]
    assert saved["other"]["real_return_per_seed"] == other["real_return_per_seed"] and len(other["real_return_per_seed"]) == 1
    (tmp_path / "p.png").unlink()
    plan_real.main(["--replot", "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").stat().st_size > 0


def test_sweep_and_futures_examples_write_their_records(examples, tmp_path):
    _, sweep, futures, model = examples
    out = tmp_path / "r.json"
    rows = sweep.main(["--model", str(model), "--episodes", "1", "--max-steps", "2", "--candidates", "4",
                       "--horizon", "2", "--elites", "2", "--ks", "4,8", "--hs", "2", "--ss", "1",
                       "--json", str(out), "--plot", str(tmp_path / "s.png"), "--work", str(tmp_path / "w")])
    assert [r["planner"]["candidates"] for r in rows] == [4, 8]
    rec = futures.main(["--model", str(model), "--clips", "2", "--futures", "3", "--steps", "3",
                        "--json", str(out), "--out", str(tmp_path)])
    saved = json.loads(out.read_text())
    assert "compute_sweep" in saved and "multiple_futures" in saved and "counterfactuals" in saved
    m = rec["multiple_futures"]
    assert len(m["diversity"]) == 3 and all(0 <= x <= 1 for x in m["diversity"] + m["to_real_best"])
    assert all(b <= a + 1e-9 for a, b in zip(m["to_real_mean"], m["to_real_best"]))  # best of N <= mean
    for name in ("planning_futures.png", "planning_futures_grid.png", "planning_counterfactuals.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_proposal_seeds_the_search(bundle):
    """Policy proposes, planner refines: with a tiny search spread the plan stays at the proposal."""
    eng = fresh_engine(bundle, n=1)
    want = torch.tensor([[0.25, -0.5]] * 3)
    cfg = PlannerConfig(candidates=4, horizon=3, iterations=1, elites=2, init_std=1e-4, min_std=1e-4, momentum=0.0)
    a = Planner(bundle, cfg, seed=0, proposal=lambda state: want).plan(eng.state(), 0)
    assert torch.allclose(a, want[0], atol=1e-3)


def test_a_trust_region_keeps_the_proposal_unless_search_clearly_beats_it(bundle):
    """margin: the proposal's own action unless a scored sequence beats the proposal's score by more."""
    eng = fresh_engine(bundle, n=1)
    want = torch.tensor([[-0.8, -0.5]] * 3)
    steer_right = lambda tokens, actions, features: actions[:, 0]  # noqa: E731 - reward: the steering value
    cfg = PlannerConfig(candidates=16, horizon=3, iterations=1, elites=4, init_std=0.5, momentum=0.0)
    kw = dict(seed=0, proposal=lambda state: want, reward_fn=steer_right)
    # the search finds sequences scored above the proposal's (steering -0.8 each step): a margin of 0 takes the best
    p = Planner(bundle, dataclasses.replace(cfg, margin=0.0), **kw)
    a = p.plan(eng.state(), 0)
    assert not p.last["kept_proposal"] and torch.equal(a, p.last["first_action_best"])
    assert p.last["score_best"] > p.last["score_proposal"] + 0.1
    # a margin above any gain the search can find (steering <= 1 per step) keeps the proposal's action exactly
    p = Planner(bundle, dataclasses.replace(cfg, margin=10.0), **kw)
    assert torch.equal(p.plan(eng.state(), 0), want[0]) and p.last["kept_proposal"] and p.kept == 1
    with pytest.raises(ConfigError, match="margin"):
        PlannerConfig(margin=-1.0)


class _ScriptedAgent:
    """Stands in for an SB3 agent: records what it sees, steers by its step count, asks for speed +1."""

    gaia_action_range = {"low": [-1.0, -1.0], "high": [1.0, 0.6]}

    def __init__(self):
        self.seen = []

    def predict(self, obs, deterministic=True):
        assert deterministic
        self.seen.append(obs)
        return [[0.1 * len(self.seen), 1.0]], None


def test_policy_proposal_drives_the_agent_in_imagination_and_leaves_the_state(bundle):
    from gaia_gym.rl.planner import PolicyProposal

    eng = fresh_engine(bundle, n=1)
    state = eng.state()
    before = (state.latents.clone(), state.features.clone(), state.memory.clone())
    agent = _ScriptedAgent()
    acts = PolicyProposal(agent, bundle, horizon=4)(state)
    assert acts.shape == (4, 2)
    # the agent's own actions, mapped through its action range (speed +1 -> 0.6)
    assert torch.allclose(acts[:, 0], torch.tensor([0.1, 0.2, 0.3, 0.4])) and torch.allclose(acts[:, 1], torch.tensor(0.6))
    # it saw the state's observation first, then imagined ones, shaped like GaiaDrive-v0's (batch of 1)
    assert (agent.seen[0]["tokens"] == state.latents[:1].numpy()).all()
    assert agent.seen[0]["features"].shape == (1, state.features.shape[-1])
    assert torch.equal(state.latents, before[0]) and torch.equal(state.features, before[1])
    for layer in range(len(before[2].k)):
        assert torch.equal(state.memory.keys(layer), before[2].keys(layer))
        assert torch.equal(state.memory.values(layer), before[2].values(layer))


def test_a_terminal_value_enters_discounted_by_the_horizon_and_survival(bundle):
    """With no reward, a sequence's score is gamma^H x P(running) x V(last imagined observation): linear
    in V, zero without it, and V sees the last imagined step's tokens and features of every row."""
    eng = fresh_engine(bundle, n=1)
    cfg = PlannerConfig(candidates=3, horizon=2, samples=2, elites=2, temperature=0.0, gamma=0.9)
    zero = lambda tokens, actions, features: torch.zeros(len(actions))  # noqa: E731
    seen = []

    def value(c):
        def v(tokens, features):
            seen.append((tokens.shape, features.shape))
            return torch.full((len(tokens),), float(c))
        return v

    acts = torch.zeros(3, 2, 2)
    s0 = Planner(bundle, cfg, seed=0, reward_fn=zero).score(eng.state(), 0, acts)
    s1 = Planner(bundle, cfg, seed=0, reward_fn=zero, value_fn=value(1.0)).score(eng.state(), 0, acts)
    s3 = Planner(bundle, cfg, seed=0, reward_fn=zero, value_fn=value(3.0)).score(eng.state(), 0, acts)
    assert torch.equal(s0, torch.zeros(3))
    assert bool((s1 > 0).all()) and bool((s1 <= 0.9 ** 2 + 1e-6).all())
    assert torch.allclose(s3, 3 * s1)
    assert seen[0][0][0] == 6 and seen[0][1] == (6, eng.state().features.shape[-1])  # K * S rows


def test_policy_value_reads_an_sb3_critic(bundle):
    import gymnasium as gym
    from stable_baselines3 import PPO


    from gaia_gym.rl.planner import PolicyValue

    env = gym.make("GaiaDrive-v0", bundle=bundle, obs_mode="tokens+features")
    agent = PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")
    eng = fresh_engine(bundle, n=2)
    st = eng.state()
    v = PolicyValue(agent, scale=2.0)(st.latents, st.features)
    obs, _ = agent.policy.obs_to_tensor({"tokens": st.latents.numpy(), "features": st.features.float().numpy()})
    with torch.no_grad():
        want = agent.policy.predict_values(obs).reshape(-1) * 2.0
    assert v.shape == (2,) and torch.allclose(v, want)
    with pytest.raises(ConfigError, match="actor-critic"):
        PolicyValue(object())


def test_plan_real_example_takes_a_terminal_value(examples, bundle, tmp_path, capsys):
    import gymnasium as gym
    from stable_baselines3 import PPO

    plan_real, _, _, model = examples
    env = gym.make("GaiaDrive-v0", bundle=bundle, obs_mode="tokens+features")
    PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu").save(tmp_path / "agent.zip")
    args = ["--model", str(model), "--episodes", "1", "--max-steps", "2", "--candidates", "4", "--horizon", "2",
            "--elites", "2", "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"), "--work", str(tmp_path / "work"),
            "--terminal-value", str(tmp_path / "agent.zip"), "--value-scale", "10"]
    rec = plan_real.main(args)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["with_terminal_value"]["real_return_per_seed"] == rec["real_return_per_seed"]
    assert rec["terminal_value"].endswith("agent.zip") and rec["value_scale"] == 10.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        plan_real.main(args[:-4] + ["--terminal-value", str(tmp_path / "missing.zip")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("plan_real: ")
