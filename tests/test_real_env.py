"""The real CarRacing-v3 behind GaiaDrive-v0's observation space (for scoring agents in the real simulator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from gaia_gym.testing import tiny_bundle
from gaia_gym.envs.gaia_drive import GaiaDriveEnv
from gaia_gym.envs.real import RealCarRacingEnv
from gaia_gym.seeds import HELD_OUT_FROM


def test_same_spaces_as_gaia_drive_and_the_checker_passes(bundle):
    for mode in ("all", "tokens+features"):
        real = RealCarRacingEnv(bundle=bundle, obs_mode=mode)
        assert real.observation_space == GaiaDriveEnv(bundle=bundle, obs_mode=mode).observation_space
        assert real.action_space == GaiaDriveEnv(bundle=bundle, obs_mode=mode).action_space
    check_env(real, skip_render_check=True)
    real.close()


def test_features_follow_the_real_history():
    # a world model whose window holds the whole test (context frames + 3 steps): then the features must
    # equal one full forward pass (with a sliding window, cached keys also carry what left the window)
    from dataclasses import replace

    from gaia_gym.models.world_model import build_world_model

    bundle = tiny_bundle()
    torch.manual_seed(1)
    bundle.world_model = build_world_model(replace(bundle.world_model.cfg, context=10)).eval()
    env = RealCarRacingEnv(bundle=bundle, bf16=False)  # fp32, to compare with plain forward passes
    obs, info = env.reset(seed=3)
    assert info["track"] >= HELD_OUT_FROM
    wm, tok = bundle.world_model, bundle.tokenizer
    tokens, actions = [torch.from_numpy(obs["tokens"])], []
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        assert np.isfinite(r) and "model_reward" in info
        tokens.append(torch.from_numpy(obs["tokens"]))
        actions.append(torch.from_numpy(a))
        # the tokens are the tokenizer's code of the real frame
        assert torch.equal(tokens[-1], tok.encode(torch.from_numpy(obs["frame"])[None])[0])
    # the features equal a full forward pass over [context (first frame, standing still)] + the real steps
    C = bundle.prompts.context
    still = torch.tensor(bundle.codec.encode(0.0, 0.0))
    seq_tok = torch.stack([tokens[0]] * C + tokens[1:])[None]
    # block C-1 (the current frame at reset) is fed with the first action; the last block's action is unused
    seq_act = torch.stack([still] * (C - 1) + actions + [still])[None]
    with torch.no_grad():
        mem = wm(seq_tok, seq_act).memory[0, -2]
    torch.testing.assert_close(torch.from_numpy(obs["features"]), mem, atol=1e-4, rtol=1e-3)
    env.close()


def test_track_option_and_errors(bundle):
    env = RealCarRacingEnv(bundle=bundle, obs_mode="tokens")
    _, info = env.reset(options={"track": 1_000_007})
    assert info["track"] == 1_000_007
    with pytest.raises(ValueError, match="NaN"):
        env.step([float("nan"), 0.0])
    env.close()
    env = RealCarRacingEnv(bundle=bundle, obs_mode="tokens")
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.0])
    env.close()
