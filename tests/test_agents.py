"""Agents trained in imagination: the world-model features extractor, real-simulator scoring, training entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from conftest import script
from gaia_gym.testing import tiny_bundle
from gaia_gym.envs import GaiaDriveVecEnv
from gaia_gym.envs.real import ZOOM_PENALTY, RealCarRacingEnv
from gaia_gym.evaluation.costs import pipeline_costs
from gaia_gym.evaluation.real import evaluate_policy, random_actor, run_episode
from gaia_gym.fileio import merge_json
from gaia_gym.rl.agent import agent_actor, load_agent
from gaia_gym.rl.extractor import WorldModelExtractor, policy_kwargs

ROOT = Path(__file__).resolve().parents[1]
OBS = "tokens+features"




def evaluate_real_main(argv: list[str]) -> dict:
    return script("agents/evaluate_real.py").main(argv)


def train_imagination_main(argv: list[str]) -> dict:
    return script("agents/train_imagination.py").main(argv)


def _ppo(bundle, model_dir, freeze: bool, **kw) -> PPO:
    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode=OBS, horizon=20)
    return PPO("MultiInputPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu",
               policy_kwargs=policy_kwargs(bundle, freeze=freeze, net_arch=[32]), **kw)


def _table(model) -> torch.Tensor:
    return model.policy.features_extractor.embedding.weight.detach()


def test_extractor_embeds_tokens_as_the_world_model(bundle):
    wm = bundle.world_model
    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode=OBS)
    kw = policy_kwargs(bundle)["features_extractor_kwargs"]
    assert all(not isinstance(v, torch.Tensor) for v in kw.values())  # pickled into the zip: small, path-free
    ext = WorldModelExtractor(venv.observation_space, **kw)
    assert isinstance(ext.embedding, torch.nn.Embedding) and not ext.embedding.weight.requires_grad
    assert ext.features_dim == 2 * wm.cfg.d_model
    obs = venv.reset()
    tokens = torch.as_tensor(obs["tokens"])
    out = ext({"tokens": tokens.float(), "features": torch.as_tensor(obs["features"])})
    with torch.no_grad():
        want = wm.embed_image(wm.patchify(tokens[:, None]))[:, 0].mean(1)  # (B, d): positions mean-pooled
    torch.testing.assert_close(out[:, :wm.cfg.d_model], want)
    from gymnasium import spaces

    only = WorldModelExtractor(spaces.Dict({"features": venv.observation_space["features"]}), **kw)
    assert only.features_dim == wm.cfg.d_model
    with pytest.raises(ValueError, match="tokens.*features"):
        WorldModelExtractor(GaiaDriveVecEnv(bundle=bundle, obs_mode="all").observation_space, **kw)


def test_table_survives_ortho_init_and_stays_frozen(bundle, model_dir):
    want = bundle.world_model.tok_emb.weight.detach()
    model = _ppo(bundle, model_dir, freeze=True)
    assert model.policy.ortho_init  # SB3's default: re-initialises Linear/Conv2d, not the nn.Embedding
    assert torch.equal(_table(model), want)
    mlp_before = model.policy.mlp_extractor.policy_net[0].weight.detach().clone()
    model.learn(256)
    assert torch.equal(_table(model), want)
    assert not torch.equal(model.policy.mlp_extractor.policy_net[0].weight, mlp_before)  # it did learn


def test_finetuned_table_moves(bundle, model_dir):
    model = _ppo(bundle, model_dir, freeze=False)
    assert model.policy.features_extractor.embedding.weight.requires_grad
    assert torch.equal(_table(model), bundle.world_model.tok_emb.weight.detach())
    model.learn(256)
    assert not torch.equal(_table(model), bundle.world_model.tok_emb.weight.detach())


def test_real_env_matches_imagination_and_evaluate_real_runs(bundle, model_dir, tmp_path):
    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode=OBS)
    real = RealCarRacingEnv(bundle=bundle, obs_mode=OBS, render_mode="rgb_array")
    assert real.observation_space == venv.observation_space and real.action_space == venv.action_space
    # a random policy, one capped episode: zoom-in penalty counted, as run_scripted_episode does
    ep = run_episode(real, random_actor(real.action_space), 1_000_000, max_steps=3, video=True)
    assert ep["steps"] == 3 and ep["capped"] and len(ep["frames"]) == 4
    assert ep["return"] == pytest.approx(sum(ep["rewards"]) + ZOOM_PENALTY)
    real.close()
    # a saved policy, through the command line (video + JSON merged under a key)
    _ppo(bundle, model_dir, freeze=True).save(tmp_path / "agent.zip")
    out = tmp_path / "agents.json"
    out.write_text(json.dumps({"other": 1}))
    r = evaluate_real_main(["--policy", str(tmp_path / "agent.zip"), "--model", str(model_dir), "--episodes", "1",
                            "--max-steps", "3", "--json", str(out), "--key", "ppo", "--video",
                            str(tmp_path / "v.gif"), "--no-progress"])
    saved = json.loads(out.read_text())
    assert saved["other"] == 1 and saved["ppo"]["real_return_per_seed"].keys() == {"1000000"}
    assert r["obs_mode"] == OBS and r["steps_mean"] == 3 and (tmp_path / "v.gif").stat().st_size > 0
    r = evaluate_policy("random", [1_000_001], bundle=bundle, max_steps=2)
    assert r["episodes"] == 1 and r["capped"] and np.isfinite(r["real_return_mean"])


def _exit_2(capsys, fn, argv, match: str) -> None:
    import re

    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(match, err) and err.count("\n") == 1, err


def test_one_line_errors(model_dir, tmp_path, capsys):
    _exit_2(capsys, evaluate_real_main, ["--policy", str(tmp_path / "missing.zip"), "--model", str(model_dir),
                                         "--no-progress"], "no such policy file")
    with pytest.raises(FileNotFoundError, match="no such policy file"):
        load_agent(tmp_path / "missing.zip")
    _exit_2(capsys, evaluate_real_main, ["--policy", "random", "--model", str(model_dir), "--video",
                                         str(tmp_path / "v.txt"), "--no-progress"],
            r"v\.txt: write the video as a \.gif or \.mp4")  # before driving
    _exit_2(capsys, train_imagination_main, ["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                                             "--no-progress"], "no such world-model directory")


def _train(model_dir, out, *extra) -> dict:
    return train_imagination_main(["--model", str(model_dir), "--out", str(out), "--envs", "2", "--horizon", "20",
                                   "--n-steps", "64", "--batch-size", "64", "--n-epochs", "2", "--net-arch", "32",
                                   "--eval-episodes", "1", "--eval-max-steps", "3", "--device", "cpu",
                                   "--no-progress", *extra])


def test_train_ppo_then_resume(model_dir, tmp_path, capsys):
    out = tmp_path / "agent_ppo"
    s = _train(model_dir, out, "--timesteps", "256", "--eval-every", "128")
    assert s["num_timesteps"] == 256 and (out / "last.zip").exists() and (out / "best.zip").exists()
    assert [e["timesteps"] for e in s["evals"]] == [0, 128, 256]  # the start, then every 128
    assert {"imagined_return_mean", "real_return_mean", "real_return_first_20_steps"} <= set(s["evals"][-1])
    assert any((out / "tb").rglob("events.out.tfevents*"))
    first_elapsed = s["elapsed_s"]
    # the same command again: already done, nothing trained
    assert _train(model_dir, out, "--timesteps", "256", "--eval-every", "128")["num_timesteps"] == 256
    # a larger budget: continues from 256 (not from 0), time accumulates
    s = _train(model_dir, out, "--timesteps", "512", "--eval-every", "128")
    assert s["num_timesteps"] == 512 and s["elapsed_s"] > first_elapsed
    assert [e["timesteps"] for e in s["evals"]] == [0, 128, 256, 384, 512]
    assert load_agent(out / "last.zip").num_timesteps == 512
    _exit_2(capsys, lambda argv: _train(model_dir, out, *argv), ["--algo", "sac"], "holds a ppo run")


def test_minutes_budget_stops_training(model_dir, tmp_path):
    out = tmp_path / "run"  # --checkpoint-minutes 0: a checkpoint at every step
    s = _train(model_dir, out, "--timesteps", "100000", "--minutes", "0.001", "--eval-every", "0",
               "--checkpoint-minutes", "0")
    assert 0 < s["num_timesteps"] < 100000 and s["elapsed_s"] >= 0.06
    assert (out / "last.zip").exists() and not list(out.glob(".*"))  # no temp file left behind


def test_train_sac(model_dir, tmp_path):
    out = tmp_path / "agent_sac"
    s = _train(model_dir, out, "--algo", "sac", "--timesteps", "200", "--learning-starts", "50",
               "--buffer-size", "1000", "--gradient-steps", "1", "--eval-every", "200")
    assert s["num_timesteps"] == 200 and s["algo"] == "sac"
    assert (out / "replay.pkl").exists() and (out / "best.zip").exists()
    agent = load_agent(out / "last.zip")
    assert type(agent).__name__ == "SAC"
    want = tiny_bundle().world_model.tok_emb.weight.detach()
    for net in (agent.actor, agent.critic):  # frozen (the target critic is Polyak-averaged: float rounding)
        assert torch.equal(net.features_extractor.embedding.weight, want)


def _token_split(path: Path, episodes: int = 3, steps: int = 30) -> Path:
    """A tokenized split as `tokenize_split` writes it, for the tiny model (16 codes, 4x4 grid)."""
    g = np.random.default_rng(0)
    n = episodes * steps
    np.savez(path, tokens=g.integers(0, 16, (n, 4, 4)).astype(np.uint16),
             actions=g.uniform(-1, 1, (n, 2)).astype(np.float32), reward=np.zeros(n, np.float32),
             terminated=np.zeros(n, bool), episode_starts=np.arange(0, n + 1, steps))
    return path


def test_training_starts_from_data_contexts_in_the_data_speed_range(model_dir, tmp_path):
    from gaia_gym.bundle import PromptBank
    from gaia_gym.rl.agent import ActionRange

    split = _token_split(tmp_path / "train.npz")
    C = tiny_bundle().prompts.context
    starts = PromptBank.standing_starts(split, C, [0.0, -1.0])
    z = np.load(split)
    assert len(starts) == 3 and torch.equal(starts.tokens[1, -1], torch.from_numpy(z["tokens"][30].astype(np.int64)))
    assert bool((starts.tokens[:, 0] == starts.tokens[:, -1]).all()) and bool((starts.actions[..., 1] == -1).all())
    out = tmp_path / "run"
    s = _train(model_dir, out, "--timesteps", "128", "--eval-every", "0", "--prompt-data", str(split),
               "--prompt-clips", "5", "--speed-max", "0.4")
    assert s["action_range"]["high"][1] == pytest.approx(0.4)
    agent = load_agent(out / "last.zip")
    rng = ActionRange.of_agent(agent)
    assert rng([1.0, 1.0]).tolist() == pytest.approx([1.0, 0.4]) and rng([-1, -1]).tolist() == pytest.approx([-1, -1])
    # the evaluator drives the real simulator through the same mapping
    act = agent_actor(agent)
    obs = {k: np.zeros(sp.shape, sp.dtype) for k, sp in agent.observation_space.spaces.items()}
    assert act(obs)[1] <= 0.4 + 1e-6
    with pytest.raises(ValueError):
        ActionRange((-1, 0.5), (1, 0.2))


def test_exported_agent_acts_the_same_and_results_merge(bundle, model_dir, tmp_path):
    from gaia_gym.rl.agent import export_agent

    model = _ppo(bundle, model_dir, freeze=True)
    model.learn(64)
    model.save(tmp_path / "a.zip")
    dst = export_agent(tmp_path / "a.zip", tmp_path / "ship" / "a.zip")
    assert dst.stat().st_size < (tmp_path / "a.zip").stat().st_size
    a, b = load_agent(tmp_path / "a.zip"), load_agent(dst)
    obs = {k: np.stack([sp.sample() for _ in range(4)]) for k, sp in a.observation_space.spaces.items()}
    assert np.array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])
    out = tmp_path / "r.json"
    merge_json(out, "baselines.random", {"x": 1})
    merge_json(out, "baselines.scripted", {"x": 2})
    merge_json(out, ".", {"real_return_mean": 3.0})
    assert json.loads(out.read_text()) == {"baselines": {"random": {"x": 1}, "scripted": {"x": 2}}, "real_return_mean": 3.0}


def test_pipeline_costs_count_every_real_transition(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "data.json").write_text(json.dumps({"default_carracing_dataset": {"transitions": 1000, "wall_minutes_2_workers": 5}}))
    (res / "tokenizer.json").write_text(json.dumps({"train_minutes": 2}))
    (res / "world_model.json").write_text(json.dumps({"train_minutes": 3}))
    run = tmp_path / "run"
    run.mkdir()
    evals = [{"timesteps": t, "elapsed_s": 60.0 * i, "real_steps_mean": 100.0, "real_return_per_seed": {"1": 0, "2": 0}}
             for i, t in enumerate((10, 20, 30), 1)]
    (run / "state.json").write_text(json.dumps({"best_timesteps": 20, "evals": evals, "elapsed_s": 200.0}))
    c = pipeline_costs(run / "best.zip", res)
    # every evaluation counts, also the one after the picked checkpoint: 3 evals x 2 tracks x 100 steps
    assert c["real_env_steps_used"] == 1000 + 600
    assert c["agent_run"]["real_evaluations"] == 3 and c["agent_run"]["imagined_steps"] == 20
    assert c["wall_clock_minutes"] == {"collect": 5, "tokenizer": 2, "world_model": 3, "agent_in_imagination": 2.0}
    # a behaviour prior scored as it is, and a run started from it: its minutes (and real steps) are added
    prior = tmp_path / "prior"
    prior.mkdir()
    (prior / "prior.json").write_text(json.dumps({"replay_seconds": 90.0, "fit_seconds": 30.0, "real_env_steps_used": 0}))
    c = pipeline_costs(prior / "prior.zip", res)
    assert c["real_env_steps_used"] == 1000 and c["wall_clock_minutes"]["behaviour_prior"] == 2.0
    assert c["wall_clock_minutes"]["agent_in_imagination"] is None
    (run / "state.json").write_text(json.dumps({"best_timesteps": 20, "evals": evals, "elapsed_s": 200.0,
                                                "args": {"init": str(prior / "prior.zip")}}))
    c = pipeline_costs(run / "best.zip", res)
    assert c["real_env_steps_used"] == 1600 and c["wall_clock_minutes"]["behaviour_prior"] == 2.0


def test_imagined_vs_real_measures_both_from_the_same_start(bundle):
    imagined_vs_real = script("benchmarks/imagined_vs_real.py")

    r = imagined_vs_real.measure("random", bundle, [1_000_000], horizon=3, futures=2)
    assert r["tracks"] == 1 and np.isfinite(r["real_return_mean"]) and np.isfinite(r["imagined_return_mean"])
    assert r["gap_imagined_minus_real"] == pytest.approx(r["imagined_return_mean"] - r["real_return_mean"])


def test_imagined_vs_real_keeps_other_policies_in_the_json(tmp_path):
    imagined_vs_real = script("benchmarks/imagined_vs_real.py")

    out = tmp_path / "agents.json"
    out.write_text(json.dumps({"real_return_mean": 1.0, "exploitation_same_start": {"policies": {"earlier.zip": {"x": 1}}}}))
    imagined_vs_real.main(["--policy", "random", "--episodes", "1", "--horizon", "1", "--futures", "2", "--json", str(out)])
    d = json.loads(out.read_text())
    pols = d["exploitation_same_start"]["policies"]
    assert d["real_return_mean"] == 1.0 and pols["earlier.zip"] == {"x": 1}
    assert pols["random"]["tracks"] == 1 and pols["random"]["command"].startswith("python benchmarks/imagined_vs_real.py")


def test_behaviour_prior_then_imagination_from_it(bundle, model_dir, tmp_path, capsys):
    """agents/behaviour_prior.py on a tiny real collection (expert labels, both splits) writes a prior
    agent that evaluate_real scores; train_imagination --init copies its weights (at lr ~0 they stay)
    and --prior adds the prior term; a prior of another network is refused in one line."""
    from gaia_gym.config import CarRacingCollectConfig
    from gaia_gym.sims.carracing_collect import collect_carracing

    data = tmp_path / "cr"
    collect_carracing(CarRacingCollectConfig(episodes=10, workers=1, max_steps=6), data, progress=False)
    out = tmp_path / "prior"
    rec = script("agents/behaviour_prior.py").main(
        ["--data", str(data), "--out", str(out), "--model", str(model_dir), "--epochs", "2", "--net-arch", "32",
         "--spatial", "4", "--no-progress"])
    assert rec["train_steps"] == 54 and rec["val_steps"] == 6 and len(rec["val_action_mse"]) == 2
    assert (out / "obs_train.npz").exists() and rec["real_env_steps_used"] == 0
    prior = load_agent(out / "prior.zip")
    assert prior.policy.features_extractor.spatial == 4
    r = evaluate_real_main(["--policy", str(out / "prior.zip"), "--model", str(model_dir), "--episodes", "1",
                            "--max-steps", "3", "--no-progress"])
    assert r["episodes"] == 1
    run = tmp_path / "ft"
    s = _train(model_dir, run, "--timesteps", "64", "--eval-every", "0", "--spatial", "4", "--lr", "1e-12",
               "--init", str(out / "prior.zip"), "--prior", str(out / "prior.zip"), "--prior-coef", "2.0")
    assert s["num_timesteps"] >= 64
    a, b = load_agent(run / "last.zip").policy.state_dict(), prior.policy.state_dict()
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _train(model_dir, tmp_path / "ft2", "--timesteps", "64", "--eval-every", "0", "--init", str(out / "prior.zip"))
    assert e.value.code == 2 and "does not fit" in capsys.readouterr().err
    # PMPO from the prior in a wider speed range: the start drives as the prior did (same physical
    # actions), the curve's first point is the start, and the run saves and resumes as PMPO
    run = tmp_path / "pmpo"
    s = _train(model_dir, run, "--algo", "pmpo", "--timesteps", "64", "--spatial", "4", "--lr", "1e-12",
               "--init", str(out / "prior.zip"), "--prior", str(out / "prior.zip"), "--speed-max", "1.0",
               "--critic-warmup", "1", "--eval-every", "32")
    assert s["evals"][0]["timesteps"] == 0 and len(s["evals"]) >= 2
    ft = load_agent(run / "last.zip")
    assert type(ft).__name__ == "PMPO" and ft.gaia_action_range["high"][1] == 1.0
    obs = {k: np.repeat(v[None], 4, 0) for k, v in ft.observation_space.sample().items()}
    assert np.allclose(agent_actor(ft)(obs), agent_actor(prior)(obs), atol=1e-4)
    s = _train(model_dir, run, "--algo", "pmpo", "--timesteps", "128", "--spatial", "4", "--lr", "1e-12",
               "--prior", str(out / "prior.zip"), "--speed-max", "1.0", "--eval-every", "0")
    assert s["num_timesteps"] >= 128


def test_the_example_trains_in_imagination_and_scores_on_real_tracks(tmp_path):
    """examples/train_in_imagination.py, a few hundred imagined steps with the shipped model: a saved agent
    with its action range, checkpoints, imagined returns in monitor.csv, a real score; the checkpoints then
    make a learning curve (benchmarks/agent_plots.py curves)."""
    out = tmp_path / "ex"
    r = script("examples/train_in_imagination.py").main(
        ["--timesteps", "512", "--envs", "8", "--horizon", "8", "--tracks", "1", "--eval-max-steps", "3",
         "--out", str(out)])
    assert r["episodes"] == 1 and r["capped"]
    agent = load_agent(out / "agent.zip")
    assert agent.num_timesteps >= 512 and agent.gaia_action_range["high"][1] == pytest.approx(0.6)
    from gaia_gym.evaluation.agent_plots import checkpoint_curve, monitor_returns, read_curve

    steps, ret = monitor_returns(out / "monitor.csv")
    assert len(steps) > 0 and (np.diff(steps) > 0).all() and np.isfinite(ret).all()
    (out / "checkpoints").mkdir(exist_ok=True)
    agent.save(out / "checkpoints" / "agent_512_steps.zip")
    checkpoint_curve(out, [1_000_100], progress=False, max_steps=3)
    first = (out / "curve.json").read_text()
    checkpoint_curve(out, [1_000_100], progress=False, max_steps=3)  # already scored: not driven again
    assert (out / "curve.json").read_text() == first
    c = read_curve(out)
    assert c["timesteps"][-1] == 512 and np.isfinite(c["real"]).all()


def test_paired_differences_picture_and_figures(tmp_path):
    from gaia_gym.errors import ConfigError
    from gaia_gym.evaluation.agent_plots import paired_differences

    a = {"real_return_per_seed": {"1": 900.0, "2": 800.0, "3": 700.0}}
    b = {"real_return_per_seed": {"1": 910.0, "2": 790.0, "3": 760.0, "4": 1.0}}
    s = paired_differences(a, b, tmp_path / "p.png", ("a", "b"))
    assert s["tracks"] == 3 and s["b_ahead"] == 2 and s["mean_difference"] == pytest.approx(20.0)
    assert s["b_worst"] == 760.0 and (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ConfigError):
        paired_differences(a, {"real_return_per_seed": {"9": 1.0}}, tmp_path / "q.png")


def test_sigterm_stops_training_and_saves(model_dir, tmp_path):
    """`kill` on a background run (where SIGINT is ignored) saves OUT/last.zip like Ctrl-C, so a rerun resumes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "agent"
    cmd = [sys.executable, str(ROOT / "agents/train_imagination.py"), "--model", str(model_dir), "--out", str(out),
           "--envs", "2", "--horizon", "20", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1",
           "--net-arch", "32", "--eval-every", "0", "--timesteps", "100000000", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("training ppo"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "interrupted" in rest and (out / "last.zip").exists()
    assert json.loads((out / "state.json").read_text())["num_timesteps"] > 0


def test_features_only_agent_trains_and_is_scored_on_the_same_keys(model_dir, tmp_path, capsys):
    """obs_mode "features" is a Box: the agent is an MlpPolicy over the hidden state, and the real
    evaluation reads the keys back from its space; a latent alone is refused with one line."""
    from gaia_gym.evaluation.real import evaluate_policy

    out = tmp_path / "feat"
    s = _train(model_dir, out, "--timesteps", "128", "--eval-every", "0", "--obs", "features")
    assert s["num_timesteps"] == 128
    r = evaluate_policy(str(out / "last.zip"), [1_000_000], model=str(model_dir), max_steps=3, progress=False)
    assert r["obs_mode"] == "features" and r["episodes"] == 1
    _exit_2(capsys, lambda argv: _train(model_dir, tmp_path / "tok", *argv), ["--obs", "tokens"], "cannot be embedded")
