"""`gaia-gym pretrain --preset tiny`: the whole pipeline (collect -> tokenizer -> decoder -> world model -> eval ->
export) runs end to end, and the exported bundle is a GaiaDrive-v0 model."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np

import gaia_gym  # noqa: F401
from gaia_gym.cli import main


def test_tiny_pretrain_exports_a_working_bundle(tmp_path, capsys):
    work, export = tmp_path / "work", tmp_path / "export"
    assert main(["pretrain", "--preset", "tiny", "--work", str(work), "--export", str(export), "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["stage_minutes"]) == {"collect", "tokenizer", "decoder", "world_model", "evaluate"}
    assert np.isfinite(r["val_cross_entropy"]) and (work / "world_model.json").exists()
    assert (export / "tokenizer" / "model.safetensors").exists() and (export / "prompts.npz").exists()
    env = gym.make("GaiaDrive-v0", model=str(export), obs_mode="tokens+features")
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(np.zeros(2, np.float32))
    assert obs["tokens"].shape == (8, 8) and np.isfinite(reward)
    # rerunning resumes: nothing is collected or trained again
    assert main(["pretrain", "--preset", "tiny", "--work", str(work), "--quiet"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["stage_minutes"]["collect"] < 0.05 and r2["stage_minutes"]["world_model"] < 0.05
