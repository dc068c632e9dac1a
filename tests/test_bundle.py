"""The model directory owns itself: one sources record, the tokenizer found inside (never relative to the
working directory) and sha-checked on every load, clear one-line errors for what is not a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gaia_gym.bundle import (DEFAULT_WORLD_MODEL, SOURCES, Sources, load_bundle, record_training_sources, save_bundle,
                             tiny_bundle, weights_sha256)
from gaia_gym.checkpoint import save_model
from gaia_gym.errors import ConfigError, GaiaGymError, ModelFileError
from gaia_gym.imagination import Imagination
from gaia_gym.models.layout import ActionCodec


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, GaiaGymError) and msg and "\n" not in msg
    return msg


def _other_tokenizer(path: Path) -> Path:
    """A tokenizer with the same architecture as the tiny one but other weights."""
    tok = tiny_bundle(seed=1).tokenizer
    save_model(path, tok, "tokenizer", tok.cfg)
    return path


def test_saved_directory_is_self_contained_and_movable(model_dir, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "wm"
    shutil.copytree(model_dir, moved)
    monkeypatch.chdir(tmp_path)
    b = load_bundle(moved)
    assert b.path == moved and weights_sha256(moved / "tokenizer") == Sources.read(moved).tokenizer_sha256


def test_a_stray_tokenizer_in_the_working_directory_is_never_used(model_dir, tmp_path, monkeypatch):
    d = tmp_path / "wm"
    shutil.copytree(model_dir, d)
    shutil.rmtree(d / "tokenizer")  # the model's own tokenizer is gone ...
    _other_tokenizer(tmp_path / "tokenizer")  # ... and ./tokenizer is another one
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError) as e:
        load_bundle(d)
    assert "was not found" in one_line(e)


def test_an_override_tokenizer_must_have_the_recorded_sha(model_dir, tmp_path):
    with pytest.raises(ModelFileError) as e:
        load_bundle(model_dir, tokenizer=_other_tokenizer(tmp_path / "tok"))
    assert "sha256" in one_line(e)


def test_training_records_a_copied_tokenizer_not_a_relative_path(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    src = record_training_sources(out, model_dir / "tokenizer", ActionCodec(), 0.08, data="d")
    rec = json.loads((out / SOURCES).read_text())
    assert rec["tokenizer"] == "tokenizer" and (out / "tokenizer" / "config.json").exists()
    assert src.tokenizer_sha256 == weights_sha256(model_dir / "tokenizer")
    assert record_training_sources(out, model_dir / "tokenizer", ActionCodec(), 0.08) == Sources(
        src.tokenizer_sha256, "tokenizer", ActionCodec(), 0.08)  # idempotent on resume


@pytest.mark.parametrize("text", ["", "[]", "{", '{"tokenizer_sha256": 5}', '{"tokenizer_sha256": "x", "step_seconds": -1}',
                                  '{"tokenizer_sha256": "x", "action_codec": []}', "\x00\xff"])
def test_garbage_sources_json_names_the_file(model_dir, tmp_path, text):
    d = tmp_path / "wm"
    shutil.copytree(model_dir, d)
    (d / SOURCES).write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelFileError) as e:
        load_bundle(d)
    assert "sources.json" in one_line(e)


def test_model_given_as_a_file_or_a_tokenizer(model_dir):
    assert load_bundle(model_dir / "model.safetensors").path == model_dir  # the directory of that file
    assert load_bundle(model_dir / "config.json").path == model_dir
    with pytest.raises(ModelFileError) as e:
        load_bundle(model_dir / "tokenizer")
    assert "tokenizer model, not a world model" in one_line(e)
    with pytest.raises(ModelFileError) as e:
        load_bundle(model_dir / "prompts.npz")
    assert "not a gaia_gym model" in one_line(e)


def test_exported_bundle_from_save_bundle_loads_from_anywhere(bundle, tmp_path, monkeypatch):
    export = save_bundle(bundle, tmp_path / "export", copy_tokenizer=True)
    monkeypatch.chdir(tmp_path.parent)
    assert torch.equal(load_bundle(export).prompts.tokens, bundle.prompts.tokens)


def test_the_shipped_model_loads_by_default():
    b = load_bundle()
    assert b.path == DEFAULT_WORLD_MODEL and b.backend.latent_key == "tokens"


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-1),
                                dict(end_threshold=float("nan")), dict(end_threshold=1.5), dict(n=2.5), dict(n=0),
                                dict(horizon=0), dict(guidance=0.0), dict(top_k=True)])
def test_engine_settings_are_checked_at_construction(bundle, kw):
    with pytest.raises(ConfigError) as e:
        Imagination(bundle, **{"n": 2, **kw})
    one_line(e)


def test_engine_accepts_numpy_numbers(bundle):
    import numpy as np

    eng = Imagination(bundle, n=np.int64(2), temperature=np.float32(0.5), top_k=np.int64(3), end_threshold=np.float64(0.5))
    eng.reset()
    assert eng.step(torch.zeros(2, 2)).latents.shape == (2, 4, 4)


def test_engine_from_components_without_a_prompt_bank(bundle):
    eng = Imagination(bundle.backend, n=3, seed=0)
    with pytest.raises(GaiaGymError):
        eng.reset()  # no prompt bank: a context is needed
    lat, act = bundle.prompts.tokens[:2], bundle.prompts.actions[:2]
    latents, _ = eng.reset(context=(lat, act))
    assert eng.n == 2 and torch.equal(latents, lat[:, -1])
