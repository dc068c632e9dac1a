"""The RL package's contracts: the extractor reads digit-embedding models, an agent records and checks the
world model it was trained on, scripts end a user's error with one line and exit code 2, and one
episode runner drives both real simulators."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

from gaia_gym.bundle import save_bundle
from gaia_gym.testing import tiny_bundle
from gaia_gym.envs import GaiaDriveVecEnv
from gaia_gym.errors import ModelFileError
from gaia_gym.rl.agent import agent_world_model_sha, load_agent, save_agent
from gaia_gym.rl.extractor import WorldModelExtractor, policy_kwargs, world_model_sha

ROOT = Path(__file__).resolve().parents[1]


def _digits_model():
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModelConfig, build_world_model

    torch.manual_seed(0)
    return build_world_model(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "code_levels": (4, 4),
                                                 "embedding": "digits"})).eval()


def test_extractor_embeds_a_digit_embedding_model_as_the_model_does():
    wm = _digits_model()
    assert wm.tok_emb.weight.shape[0] == wm.cfg.patch**2 * 8  # sum of the digit levels, not the vocabulary
    g = wm.cfg.grid
    space = spaces.Dict({"tokens": spaces.Box(0, wm.cfg.vocab - 1, (g, g), np.int64)})
    ext = WorldModelExtractor(space, **policy_kwargs(wm)["features_extractor_kwargs"])
    tokens = torch.randint(0, wm.cfg.vocab, (3, g, g))
    with torch.no_grad():
        want = wm.embed_image(wm.patchify(tokens[:, None]))[:, 0].mean(1)
    torch.testing.assert_close(ext({"tokens": tokens.float()}), want)


def test_extractor_embeds_a_camera_rigs_views_as_the_model_does():
    wm = tiny_bundle(cameras=("front", "left")).world_model
    g = wm.cfg.grid
    space = spaces.Dict({"tokens": spaces.Box(0, wm.cfg.vocab - 1, (2, g, g), np.int64)})
    kw = policy_kwargs(wm)["features_extractor_kwargs"]
    tokens = torch.randint(0, wm.cfg.vocab, (3, 2, g, g))
    with torch.no_grad():
        want = wm.embed_image(wm.patchify(tokens[:, None]))[:, 0].mean(1)
    torch.testing.assert_close(WorldModelExtractor(space, **kw)({"tokens": tokens.float()}), want)
    assert WorldModelExtractor(space, **kw, spatial=2).features_dim == 2 * 2 * (g // wm.cfg.patch) ** 2


def test_ppo_trains_on_a_digit_embedding_bundle():
    b = tiny_bundle()
    b = replace(b, world_model=_digits_model())
    venv = GaiaDriveVecEnv(num_envs=2, bundle=b, obs_mode="tokens+features", horizon=5)
    agent = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, device="cpu",
                policy_kwargs=policy_kwargs(b, net_arch=[16]))
    agent.learn(16)
    assert torch.equal(agent.policy.features_extractor.embedding.weight, b.world_model.tok_emb.weight)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An agent saved on tiny_bundle(seed=0), and two model directories: its own and another one."""
    root = tmp_path_factory.mktemp("agent")
    own, other = tiny_bundle(seed=0), tiny_bundle(seed=1)
    venv = GaiaDriveVecEnv(num_envs=2, bundle=own, obs_mode="tokens+features", horizon=5)
    agent = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, device="cpu",
                policy_kwargs=policy_kwargs(own, net_arch=[16]))
    path = save_agent(agent, root / "agent.zip")
    return path, save_bundle(own, root / "own"), save_bundle(other, root / "other"), own, other


def test_an_agent_records_its_world_model_and_loading_checks_it(trained):
    path, own_dir, other_dir, own, other = trained
    assert agent_world_model_sha(path) == world_model_sha(own) != world_model_sha(other)
    with zipfile.ZipFile(path) as z:
        assert len(z.read("data")) < 20_000  # shapes and a sha, never the tables themselves
    assert load_agent(path, world_model=own, device="cpu").num_timesteps >= 0
    with pytest.raises(ModelFileError) as e:
        load_agent(path, world_model=other, device="cpu")
    msg = str(e.value)
    assert world_model_sha(own)[:12] in msg and world_model_sha(other)[:12] in msg and "\n" not in msg


def _script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_evaluate_real_refuses_another_world_model_and_bad_zips_with_exit_2(trained, tmp_path):
    path, own_dir, other_dir, *_ = trained
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("data", "{}")
    for policy, model, want in ((path, other_dir, "was trained on the world model"), (junk, own_dir, "not an SB3 agent"),
                                (foreign, own_dir, str(foreign))):
        r = _script("agents/evaluate_real.py", "--policy", str(policy), "--model", str(model), "--episodes", "1",
                    "--max-steps", "2", "--no-progress")
        assert r.returncode == 2 and want in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, \
            r.stderr


def test_one_runner_drives_carracing_and_highway():
    from gaia_gym.envs.real import RealCarRacingEnv
    from gaia_gym.evaluation.real import random_actor, run_episode, summarize

    b = tiny_bundle()
    env = RealCarRacingEnv(bundle=b, obs_mode="tokens+features")
    ep = run_episode(env, random_actor(env.action_space), 1_000_000, max_steps=2)
    env.close()
    assert ep["steps"] == 2 and ep["capped"] and ep["track"] == ep["seed"] == 1_000_000 and "lap_finished" in ep
    pytest.importorskip("highway_env")
    from gaia_gym.envs.real_highway import RealHighwayEnv

    hw = RealHighwayEnv(bundle=tiny_bundle(conditions="cross"), obs_mode="features", max_steps=3)
    eps = [run_episode(hw, act, 1_000_000 + i, max_steps=2, scenario="merge-v0") for i, act in
           enumerate(("scripted", "random"))]
    hw.close()
    assert all(1 <= e["steps"] <= 2 and e["scenario"] == "merge-v0" and "crashed" in e for e in eps)
    s = summarize("mixed", [ep, *eps], 1.0)
    assert s["episodes"] == 3 and s["crashes"] >= 0 and s["laps_finished"] == 0
