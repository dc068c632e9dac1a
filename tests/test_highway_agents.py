"""Agents on highway-env: the evaluation that tells policies apart (intervals, crashes, success, the crash
head's calibration), the prior's replay of logged highway episodes, and training in imagination with
real-env validation on the highway world model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("highway_env")

from gaia_gym.evaluation.highway_agents import (bootstrap_ci, calibration, episodes_of,  # noqa: E402
                                                paired_difference, summarize_highway, wilson_ci)
from conftest import script  # noqa: E402
from gaia_gym import seeds  # noqa: E402
from gaia_gym.seeds import HELD_OUT_FROM, validation_tracks  # noqa: E402


def _ep(seed, scen, ret, crashed=False, success=None, probs=(0.0, 0.0)):
    return {"seed": seed, "scenario": scen, "return": ret, "crashed": crashed, "success": success,
            "distance_m": 100.0, "steps": len(probs), "speeds": [20.0] * len(probs), "end_probs": list(probs),
            "model_return": ret + 1.0}


def test_evaluation_seeds_never_touch_training_seeds():
    from gaia_gym.config import HighwayCollectConfig
    from gaia_gym.data.collect import plan_episodes

    test = {s for s, _ in episodes_of(seeds.test_tracks(20))}
    val = {s for s, _ in episodes_of(validation_tracks(20))}
    assert len(episodes_of(seeds.test_tracks(20))) == 80 and not test & val
    # the shipped model's two collections (seeds 0+ and 100,000+, 1000 episodes each)
    collected = {sp.seed for first in (0, 100_000) for sp in plan_episodes(1000, first, HighwayCollectConfig().val_every)}
    assert max(collected) < HELD_OUT_FROM <= min(test | val)
    with pytest.raises(Exception, match="unknown scenario"):
        episodes_of([1], ["nope-v0"])


def test_intervals():
    x = np.r_[np.zeros(10), np.ones(10)]
    lo, hi = bootstrap_ci(x)
    assert lo < 0.5 < hi and hi - lo < 0.5
    lo2, hi2 = bootstrap_ci(np.tile(x, 10))
    assert hi2 - lo2 < (hi - lo) / 2  # 10x the episodes: about a third of the width
    assert bootstrap_ci(x) == bootstrap_ci(x)  # seeded
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson_ci(10, 20)
    assert lo < 0.5 < hi


def test_summary_per_scenario_success_and_paired_difference():
    a = [_ep(s, "merge-v0", 30.0 + s, success=True) for s in range(5)] + \
        [_ep(s, "roundabout-v0", 10.0, crashed=s == 0) for s in range(5)]
    b = [dict(e, **{"return": e["return"] - 2.0}) for e in a]
    ra, rb = summarize_highway(a), summarize_highway(b)
    assert ra["per_scenario"]["merge-v0"]["success_rate"] == 1.0
    assert "success_rate" not in ra["per_scenario"]["roundabout-v0"]  # survival is its crash rate
    assert ra["per_scenario"]["roundabout-v0"]["crash_rate"] == 0.2 and ra["overall"]["crashes"] == 1
    lo, hi = ra["overall"]["return_ci95"]
    assert lo <= ra["overall"]["return_mean"] <= hi
    d = paired_difference(ra, rb)
    assert d["episodes"] == 10 and d["return_difference_mean"] == 2.0 and d["return_difference_ci95"] == [2.0, 2.0]


def test_calibration_counts_the_crash_step_only():
    eps = [_ep(0, "merge-v0", 1.0, crashed=True, probs=(0.001, 0.002, 0.5)),
           _ep(1, "merge-v0", 1.0, probs=(0.001, 0.5, 0.02))]
    c = calibration(eps)
    assert c["steps"] == 6 and c["crash_steps"] == 1
    top = c["bins"][-1]
    assert top["steps"] == 2 and top["crashes"] == 1 and top["real"] == 0.5 and top["predicted"] == 0.5
    assert c["mean_prob_on_crash_steps"] == 0.5
    with pytest.raises(Exception, match="end_probs"):
        calibration([{"crashed": False}])


@pytest.fixture(scope="module")
def hw_bundle():
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL, load_bundle

    return load_bundle(HIGHWAY_WORLD_MODEL)


def test_replay_of_a_logged_highway_episode_is_what_the_real_env_sees(hw_bundle):
    """The behaviour prior's replay of a logged highway episode (its first speed and scene start it) gives
    the features RealHighwayEnv computes, step by step, on the same drive."""
    from gaia_gym.envs.real_highway import RealHighwayEnv
    from gaia_gym.rl.prior import real_observations
    from gaia_gym.sims.highway import lane_count

    env = RealHighwayEnv(bundle=hw_bundle, obs_mode="tokens+features", scenario="roundabout-v0")
    f0, _ = env.reset(options={"seed": HELD_OUT_FROM + 7})
    speed0, lanes = float(env.env.unwrapped.vehicle.speed), lane_count(env.env)[0]
    frames, feats, toks, acts = [env._frame.copy()], [f0["features"]], [f0["tokens"]], []
    for _ in range(4):
        a = env.scripted_action()
        o, *_ = env.step(a)
        frames.append(env._frame.copy())
        feats.append(o["features"])
        toks.append(o["tokens"])
        acts.append(a)
    env.close()
    acts = np.asarray(acts + [acts[-1]], np.float32)
    steer, target = hw_bundle.codec.decode(acts)
    ep = {"frames": np.stack(frames), "steering": steer, "target_speed_mps": target, "speed_mps": np.r_[speed0, target[:-1]],
          "meta": {"source": "highway", "scenario": "roundabout-v0", "lanes": lanes}}
    obs = real_observations(hw_bundle, [ep], rows=1, progress=False)
    # the replay encodes the frames as one batch, the env one at a time: CPU numerics may flip a code that
    # sits on a boundary (one of 64 was seen), so the features agree closely, not exactly
    assert (obs["tokens"] == np.stack(toks)).mean() > 0.97
    right = float(np.abs(obs["features"] - np.stack(feats)).mean())
    wrong = real_observations(hw_bundle, [{**ep, "speed_mps": ep["speed_mps"] * 0 + 30.0}], rows=1, progress=False)
    assert right < 0.05 and float(np.abs(wrong["features"] - np.stack(feats)).mean()) > 2 * right


def test_evaluate_command_writes_a_record_with_intervals(tmp_path, capsys):
    out = tmp_path / "r.json"
    mod = script("agents/highway.py")
    mod.main(["evaluate", "--seeds", "2", "--scenarios", "merge-v0", "--json", str(out), "--validation",
              "--no-progress", "--calibration-plot", str(tmp_path / "cal.png")])
    rec = json.loads(out.read_text())["agents_validation"]
    assert rec["seeds"] == validation_tracks(2) and rec["split"] == "validation"
    assert set(rec["policies"]) == {"random", "scripted_cruise"}
    s = rec["policies"]["scripted_cruise"]["per_scenario"]["merge-v0"]
    assert s["episodes"] == 2 and "success_rate" in s and len(s["return_ci95"]) == 2
    assert set(rec["vs_scripted"]) == {"random"}
    assert (tmp_path / "cal.png").stat().st_size > 1000
    assert "scripted_cruise" in capsys.readouterr().out
    mod.main(["calibration", "--json", str(out), "--key", "agents_validation", "--policies", "scripted_cruise",
              "--out", str(tmp_path / "one.png")])
    assert (tmp_path / "one.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no policy 'nope'"):
        mod.main(["calibration", "--json", str(out), "--key", "agents_validation", "--policies", "nope",
                  "--out", str(tmp_path / "x.png")])


def test_training_in_imagination_on_the_highway_model_validates_in_highway_env(tmp_path):
    """agents/train_imagination.py on the highway world model: its checkpoints are scored on highway-env's
    validation seeds of every scenario (crash rate logged), the speed range is highway-env's."""
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL

    mod = script("agents/train_imagination.py")
    torch.manual_seed(0)
    state = mod.main(["--model", str(HIGHWAY_WORLD_MODEL), "--envs", "2", "--n-steps", "16", "--batch-size", "16",
                      "--timesteps", "32", "--horizon", "8", "--eval-every", "32", "--eval-episodes", "1",
                      "--eval-max-steps", "2", "--out", str(tmp_path / "run"), "--no-progress", "--no-eval-start"])
    ev = state["evals"][-1]
    assert set(ev["real_return_per_seed"]) == {f"{s}/{validation_tracks(1)[0]}" for s in
                                               ("highway-fast-v0", "merge-v0", "roundabout-v0", "intersection-v0")}
    assert 0.0 <= ev["real_crash_rate"] <= 1.0
    assert state["action_range"]["high"][1] == 1.0


def test_highway_start_contexts_carry_their_scene(tmp_path, hw_bundle):
    """--prompt-data on the highway model: every episode's first frame held at its first speed (how a real
    episode starts) plus mid-drive clips, each with its road family and lane count as metadata."""
    from gaia_gym import cli
    from gaia_gym.data.format import load_episode
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.rl.training import highway_prompts

    data = tmp_path / "ds"
    assert cli.main(["collect", "highway", "--preset", "tiny", "--out", str(data), "--quiet", "--max-steps", "10"]) == 0
    bank = highway_prompts(hw_bundle, data, tmp_path / "run", clips=6, seed=0)
    idx = EpisodeIndex(data, split="train")
    C = hw_bundle.prompts.context
    assert len(bank) == len(idx.paths) + 6 and bank.metadata is not None and bank.tokens.shape[1] == C
    first = load_episode(idx.paths[0], fields=["speed_mps"])
    np.testing.assert_allclose(bank.actions[0], np.repeat(hw_bundle.codec.encode(0.0, first["speed_mps"][0])[None], C, 0),
                               atol=1e-6)
    assert bool((bank.tokens[0] == bank.tokens[0, :1]).all())  # the first frame, held
    spec = hw_bundle.conditions
    fam = int(bank.metadata[0, list(spec.fields).index("scenario")])
    assert fam >= 0  # the scenario is given
    again = highway_prompts(hw_bundle, data, tmp_path / "run", clips=6, seed=0)  # cached
    assert torch.equal(again.tokens, bank.tokens)
