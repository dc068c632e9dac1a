"""The model directory owns itself: one sources record, the tokenizer found inside (never relative to the
working directory) and sha-checked on every load, clear one-line errors for what is not a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gaia_gym.bundle import (DEFAULT_WORLD_MODEL, SOURCES, Sources, load_bundle, record_training_sources, save_bundle,
                             weights_sha256)
from gaia_gym.testing import tiny_bundle
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


def test_the_default_is_the_fast_design_and_passes_both_env_checkers():
    """GaiaDrive-v0 with no model: the 4x4-patch model (6 tokens per step) with the narrow decoder, a
    trained one (its next frame beats copying the last one on its prompts), that both checkers accept."""
    import warnings

    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check

    b = load_bundle()
    assert b.world_model.layout.block == 6 and b.world_model.cfg.embedding == "digits"
    assert b.tokenizer.cfg.dec_channels == (64, 32, 16)
    eng = Imagination(b, n=8, seed=0, temperature=0.0)
    eng.reset(prompt=torch.arange(8))
    out = eng.step(b.prompts.actions[:8, -1])
    real = eng.frames(b.prompts.next_tokens[:8, 0]).float()
    last = eng.frames(b.prompts.tokens[:8, -1]).float()
    assert float((eng.frames(out.latents).float() - real).pow(2).mean()) < float((last - real).pow(2).mean())
    env = gym.make("GaiaDrive-v0", render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|-infinity|dtype|bounds).*")
        check_env(env.unwrapped)
        sb3_check(env.unwrapped, warn=False)
    env.close()


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


# ----------------------------------------------------------------------------------------------
# the one builder: every option applied in one place, kept by every later `with_*`
# ----------------------------------------------------------------------------------------------
def _quantized(backend) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in backend.world_model.modules())


def _text(texts):
    return torch.ones(len(texts), 16)


BUILDS = {  # name -> (tiny bundle maker, options of load_bundle, check of the built bundle)
    "cameras+int8": (lambda: tiny_bundle(cameras=("front", "rear")), {"cameras": "front", "int8": True},
                     lambda b: b.world_model.cfg.camera_names == ("front",) and _quantized(b.backend)),
    "cameras+decoder": (lambda: tiny_bundle(cameras=("front", "rear")), {"cameras": "rear", "decoder": "same"},
                        lambda b: b.world_model.cfg.camera_names == ("rear",)),
    "int8+text_encoder": (lambda: tiny_bundle(conditions="cross"), {"int8": True, "text_encoder": _text},
                          lambda b: b.text_encoder is _text and _quantized(b.backend)),
    "int8+decoder": (tiny_bundle, {"int8": True, "decoder": "same"}, lambda b: _quantized(b.backend)),
    "decoder+text_encoder": (lambda: tiny_bundle(conditions="adaln"), {"decoder": "same", "text_encoder": _text},
                             lambda b: b.text_encoder is _text),
    "steps+int8": (None, {"steps": 4, "int8": True},
                   lambda b: b.backend.steps == 4 and _quantized(b.backend)),
}


def _maker(name):
    from gaia_gym.testing import tiny_flow_bundle

    return tiny_flow_bundle if name.startswith("steps") else BUILDS[name][0]


@pytest.mark.parametrize("name", list(BUILDS))
@pytest.mark.parametrize("source", ["bundle", "directory"])
def test_every_option_pair_of_the_builder_is_applied_and_kept(name, source, tmp_path):
    make, options, check = _maker(name), dict(BUILDS[name][1]), BUILDS[name][2]
    b0 = make()
    if options.get("decoder") == "same":  # a tokenizer that reads the same codes: a module, or its directory
        options["decoder"] = b0.tokenizer
        if source == "directory":
            save_model(tmp_path / "dec", b0.tokenizer, "tokenizer", b0.tokenizer.cfg)
            options["decoder"] = tmp_path / "dec"
    model = b0 if source == "bundle" else save_bundle(b0, tmp_path / "wm")
    b = load_bundle(model, **options)
    assert check(b), name
    # a later replace() of the bundle keeps the backend options (they are a field, not a private attribute)
    if "int8" in options or "steps" in options:
        again = b.with_decoder(b.tokenizer)
        assert again.backend_options == b.backend_options and check(again)


def test_with_methods_keep_the_backend_options_in_any_order():
    from gaia_gym.testing import tiny_flow_bundle

    f = tiny_flow_bundle()
    a = f.with_backend(steps=4).with_backend(int8=True)
    b = f.with_backend(int8=True).with_decoder(f.tokenizer).with_backend(steps=4)
    for x in (a, b):
        assert x.backend.steps == 4 and _quantized(x.backend) and x.backend_options == {"steps": 4, "int8": True}
    c = tiny_bundle(conditions="cross").with_backend(int8=True).with_text_encoder(_text)
    assert _quantized(c.backend) and c.text_encoder is _text


def test_gym_make_applies_options_to_a_loaded_bundle():
    import gymnasium as gym

    import gaia_gym  # noqa: F401  (registers the envs)
    from gaia_gym.testing import tiny_flow_bundle

    env = gym.make("GaiaDrive-v0", bundle=tiny_flow_bundle().with_backend(steps=4), int8=True)
    be = env.unwrapped.core.bundle.backend
    assert be.steps == 4 and _quantized(be)
    env.reset(seed=0)
    env.step(env.action_space.sample())


def test_highway_int8_with_a_text_encoder_runs_quantized():
    import gymnasium as gym

    import gaia_gym  # noqa: F401

    env = gym.make("GaiaHighway-v0", bundle=tiny_bundle(conditions="cross"), int8=True, text_encoder=_text)
    b = env.unwrapped.core.bundle
    assert _quantized(b.backend) and b.text_encoder is _text
    env.reset(seed=0)
    env.step(env.action_space.sample())


def test_builder_errors_are_one_line(tmp_path):
    b = tiny_bundle()
    with pytest.raises(ConfigError) as e:
        load_bundle(b, int8="yes")
    one_line(e)
    with pytest.raises(ConfigError) as e:
        load_bundle(b, steps=4)  # a token model takes no sampling steps
    one_line(e)
