"""Regression tests for user-facing defects of the GaiaDrive adapters, `gaia-gym play` and `gaia-gym bench`:
bad reset options / actions / num_envs are one-line ConfigErrors, async make_vec does not hang, play does
not open the audio device and draws a clean HUD, and bench never prints "nan" for a missing figure."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import gaia_gym  # noqa: F401 - registers GaiaDrive-v0

from gaia_gym.errors import ConfigError
from gaia_gym.envs.gaia_drive import GaiaDriveEnv
from gaia_gym.envs.vector import GaiaDriveVectorEnv

NEVER_END = dict(end_threshold=1.0)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------------------------
# 1. reset options
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", ["x", ["prompt"], 3, ("prompt", 1)])
def test_reset_options_not_a_dict(bundle, options):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens")
    with pytest.raises(ConfigError) as e:
        env.reset(options=options)
    assert "options must be None or a dict" in one_line(e) and "'prompt'" in str(e.value)
    wrapped = gym.make("GaiaDrive-v0", bundle=bundle, obs_mode="tokens")  # through gym.make's wrappers too
    with pytest.raises(ConfigError):
        wrapped.reset(options=options)
    venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="tokens")
    with pytest.raises(ConfigError) as e:
        venv.reset(options=options)
    assert "'prompt', 'reset_mask'" in one_line(e)


def test_reset_options_unknown_keys(bundle):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens")
    with pytest.raises(ConfigError, match="unknown option 'promt'.*allowed keys are 'prompt'") as e:
        env.reset(options={"promt": 1})
    one_line(e)
    assert env.reset(options={"prompt": 2})[1] == {"prompt": 2}  # the known key still works
    assert "prompt" in env.reset(options={})[1] and "prompt" in env.reset(options=None)[1]
    with pytest.raises(ConfigError, match="prompt 'a' is not an index"):
        env.reset(options={"prompt": "a"})
    venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="tokens")
    with pytest.raises(ConfigError, match="unknown option 'mask'.*'prompt', 'reset_mask'"):
        venv.reset(options={"mask": np.ones(2, bool)})
    venv.reset(options={"prompt": [1, 2]})


def test_sb3_set_options_checked(bundle):
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="tokens")
    for bad in ("x", {"seed": 1}, [{"prompt": 1}], [{"prompt": 1}, "x"]):
        with pytest.raises(ConfigError) as e:
            venv.set_options(bad)
        one_line(e)
    venv.set_options([{"prompt": 1}, {}])
    venv.reset()
    assert venv.reset_infos[0] == {"prompt": 1}
    venv.set_options({"prompt": 3})
    venv.reset()
    assert [i["prompt"] for i in venv.reset_infos] == [3, 3]


# ----------------------------------------------------------------------------------------------
# 2. actions
# ----------------------------------------------------------------------------------------------
BAD_BATCHES = {
    "None": None,
    "string": "0.1 0.2",
    "strings": [["0", "1"], ["0", "1"]],
    "ragged": [[0, 1], [0]],
    "nested objects": [[{}, 1], [0, 0]],
    "objects": [object(), object()],
    "dict": {"steering": 0.0, "speed": 0.0},
    "huge int": [[0, 10**400], [0, 0]],
    "complex": np.zeros((2, 2), np.complex64),
}


@pytest.mark.parametrize("name", list(BAD_BATCHES))
def test_bad_batched_actions_are_config_errors(bundle, name):
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    bad = BAD_BATCHES[name]
    gym_venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="tokens", **NEVER_END)
    sb3_venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="tokens", **NEVER_END)
    gym_venv.reset(seed=0)
    sb3_venv.reset()
    with pytest.raises(ConfigError) as e:
        gym_venv.step(bad)
    assert "actions" in one_line(e) and len(str(e.value)) < 300
    with pytest.raises(ConfigError) as e:
        sb3_venv.step(bad)
    one_line(e)
    # nothing was stepped: both go on normally
    gym_venv.step(np.zeros((2, 2)))
    sb3_venv.step(np.zeros((2, 2)))


@pytest.mark.parametrize("bad", [None, "ab", [[0, 1], [0]], [{}, 0], 10**400, [10**400, 0], [0.0, "1"],
                                 torch.zeros(2, requires_grad=True)], ids=repr)
def test_bad_single_actions_are_config_errors(bundle, bad):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", **NEVER_END)
    env.reset(seed=0)
    with pytest.raises(ConfigError) as e:
        env.step(bad)
    assert "action" in one_line(e) and len(str(e.value)) < 300
    env.step([0.0, 0.0])


def test_requires_grad_action_message(bundle):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", **NEVER_END)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match=r"requires grad.*detach\(\)"):
        env.step(torch.zeros(2, requires_grad=True))
    env.step(torch.zeros(2, requires_grad=True).detach())


def test_finite_actions_beyond_float32_are_clipped(bundle):
    from gaia_gym.models.layout import check_action, check_actions

    assert check_action([1e39, -1e39]).tolist() == [1.0, -1.0] and check_action([1e39, 0]).dtype == np.float32
    assert check_action(np.array([1e300, 2**70], object)).tolist() == [1.0, 1.0]
    assert check_action(torch.tensor([1e39, -0.5], dtype=torch.float64)).tolist() == [1.0, -0.5]
    assert check_actions([[1e39, -1e39]], 1).tolist() == [[1.0, -1.0]]
    assert check_actions(torch.tensor([[1e39, 0.25]], dtype=torch.float64), 1).tolist() == [[1.0, 0.25]]
    assert check_actions(np.array([[2**70, -3]]), 1).dtype == torch.float32
    with pytest.raises(ConfigError, match="NaN or inf"):
        check_action([float("inf"), 0.0])
    with pytest.raises(ConfigError, match="NaN or inf"):
        check_actions(torch.tensor([[math.nan, 0.0]], dtype=torch.float64), 1)
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", **NEVER_END)
    env.reset(seed=0)
    info = env.step([1e39, -1e39])[4]
    assert info["steering"] == 1.0 and info["speed_mps"] == 0.0
    venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="tokens", **NEVER_END)
    venv.reset(seed=0)
    info = venv.step([[1e39, 0.0], [-1e39, 1e39]])[4]
    assert info["steering"].tolist() == [1.0, -1.0]


# ----------------------------------------------------------------------------------------------
# 3. construction arguments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_envs", [2.5, 0, -1, True, "2", None, 2.0])
def test_num_envs_must_be_a_positive_integer(bundle, num_envs):
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    for cls in (GaiaDriveVectorEnv, GaiaDriveVecEnv):
        with pytest.raises(ConfigError, match="num_envs must be a positive integer") as e:
            cls(num_envs=num_envs, bundle=bundle)
        one_line(e)
    with pytest.raises(ConfigError, match="num_envs"):
        gym.make_vec("GaiaDrive-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", bundle=bundle)
    assert GaiaDriveVectorEnv(num_envs=np.int64(3), bundle=bundle).num_envs == 3


@pytest.mark.parametrize("kw, name", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature="1"), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"), (dict(end_threshold=1.5), "end_threshold"),
    (dict(end_threshold=math.nan), "end_threshold"), (dict(guidance=math.inf), "guidance"),
    (dict(guidance=0), "guidance"),
    (dict(horizon=0), "horizon"), (dict(horizon="5"), "horizon"), (dict(horizon=True), "horizon"),
    (dict(render_mode="ansi"), "render_mode"), (dict(obs_mode="pixels"), "obs_mode")])
def test_bad_construction_arguments_fail_before_the_model_loads(kw, name):
    # model points nowhere: the argument check must come first (a ConfigError, not ModelFileError)
    with pytest.raises(ConfigError, match=name) as e:
        GaiaDriveEnv(model="/no/such/model", **kw)
    one_line(e)


def test_good_construction_arguments_still_accepted(bundle):
    GaiaDriveEnv(bundle=bundle, temperature=0, top_k=0, end_threshold=0.0, guidance=2, horizon=3.0)
    GaiaDriveEnv(bundle=bundle, temperature=np.float32(0.5), top_k=np.int64(4), end_threshold=1, horizon=None)


# ----------------------------------------------------------------------------------------------
# 4. async make_vec (fork after torch started its threads) must not hang
# ----------------------------------------------------------------------------------------------
def run_script(code: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (its own process group, killed whole on timeout)."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, **(env or {})})
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"timed out after {timeout} s (hung); stdout={out[-2000:]!r} stderr={err[-2000:]!r}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_make_vec_async_default_context_does_not_hang():
    # the shipped model: its weights are large enough for torch's OpenMP pool to start in the parent
    # (which builds one env for the spaces) and to be needed again in the forked workers
    code = """
        import gymnasium as gym, numpy as np, gaia_gym
        envs = gym.make_vec("GaiaDrive-v0", num_envs=2, vectorization_mode="async", obs_mode="tokens")
        obs, info = envs.reset(seed=0)
        obs, rew, te, tr, info = envs.step(np.zeros((2, 2), np.float32))
        envs.close()
        print("ok", obs.shape)
    """
    r = run_script(code, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith("ok (2,")


# ----------------------------------------------------------------------------------------------
# 5. gaia-gym play: no audio, a clean HUD at the output resolution
# ----------------------------------------------------------------------------------------------
def test_play_window_does_not_open_audio(model_dir):
    # the windowed path on SDL's dummy video driver; SDL_AUDIODRIVER deliberately unset
    env = {k: v for k, v in os.environ.items() if k != "SDL_AUDIODRIVER"}
    env["SDL_VIDEODRIVER"] = "dummy"
    code = f"""
        import sys
        from gaia_gym.cli import main
        sys.exit(main(["play", "--model", {str(model_dir)!r}, "--steps", "2"]))
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "drove 2 imagined steps" in p.stdout
    assert "ALSA" not in p.stderr and "audio" not in p.stderr.lower(), p.stderr[-3000:]
    assert "pygame-ce" not in p.stdout and "Hello from the pygame" not in p.stdout


def test_play_keys_headless_prints_no_audio_errors(model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("SDL_AUDIODRIVER", "SDL_VIDEODRIVER")}
    code = f"""
        import sys
        from gaia_gym.cli import main
        sys.exit(main(["play", "--model", {str(model_dir)!r}, "--keys", "LR.UD"]))
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0 and "drove 5 imagined steps" in p.stdout, p.stderr[-3000:]
    assert "ALSA" not in p.stderr


def hud_masks(img: np.ndarray, box: tuple[int, int]):
    """Text pixels (brighter than the mid-grey test frame: only the white ink is) and black outline
    pixels inside the HUD box (rows, cols) of `img`."""
    h, w = box
    hud = img[:h, :w].astype(int)
    white = (hud.min(-1) >= 150)
    black = (hud.max(-1) <= 40)
    return white, black


@pytest.mark.parametrize("scale", [4, 6])
def test_hud_outline_hugs_the_text(scale):
    """The black outline lies within 1-2 pixels of the white glyphs (a thick black copy of the text drawn
    with OpenCV >= 5 advances further than the thin white one and smears to the right)."""
    import cv2

    from gaia_gym.envs.render import annotate

    frame = np.full((64, 64, 3), 128, np.uint8)  # mid grey: neither text nor outline
    lines = ["steer +0.30  57.0 m/s", "reward -0.40  return -1.2  t 123"]
    img = annotate(frame, lines, scale)
    assert img.shape == (64 * scale, 64 * scale, 3)  # drawn at the output resolution ...
    white, black = hud_masks(img, (40, 64 * scale))
    assert white.sum() > 100 and black.sum() > 100
    near_text = cv2.dilate(white.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    stray = black & ~near_text
    assert stray.sum() <= 0.02 * black.sum(), f"{stray.sum()} outline pixels away from the text"
    # ... at full resolution: text edges are not blocks of `scale` x `scale` equal pixels
    blocks = white[: white.shape[0] // scale * scale, : white.shape[1] // scale * scale]
    coarse = blocks.reshape(blocks.shape[0] // scale, scale, -1, scale).swapaxes(1, 2)
    mixed = coarse.any((2, 3)) & ~coarse.all((2, 3))
    assert mixed.sum() > 10
    assert np.array_equal(img[-1, -1], frame[-1, -1])  # the frame outside the HUD is untouched


def test_play_frames_have_the_hud_at_window_size(bundle, monkeypatch, tmp_path):
    """`play` writes frames of the window's size, the HUD text drawn on them (not scaled up)."""
    import gaia_gym.verbs.play as play_mod

    seen = []
    real = play_mod.annotate

    def spy(frame, lines, scale=4):
        img = real(frame, lines, scale)
        seen.append((frame.shape, scale, img))
        return img

    monkeypatch.setattr(play_mod, "annotate", spy)
    play_mod.play(bundle, keys="LR", scale=6)
    assert len(seen) == 2
    for shape, scale, img in seen:
        assert shape == (64, 64, 3) and scale == 6 and img.shape == (384, 384, 3)
        white, black = hud_masks(img, (60, 384))
        assert white.sum() > 50 and black.sum() > 50
    with pytest.raises(ConfigError, match="--scale"):
        play_mod.play(bundle, keys="L", scale=0)
    with pytest.raises(ConfigError, match="--prompt"):
        play_mod.play(bundle, keys="L", prompt=99)
    with pytest.raises(ConfigError, match="--keys"):
        play_mod.play(bundle, keys="LX")


# ----------------------------------------------------------------------------------------------
# 6. gaia-gym bench: a missing figure is n/a (printed) and null (JSON), never nan
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_real_sim(monkeypatch):
    import gaia_gym.evaluation.throughput as throughput

    fps = {"value": 150.0}

    def fake(seconds=15.0, processes=None):
        return {"real_sim_frames_per_s": fps["value"], "real_sim_processes": processes or 1,
                "real_sim_seconds": float(seconds)}

    monkeypatch.setattr(throughput, "measure_real_driving", fake)
    return fps


def test_bench_batch_1_summary_has_no_nan(bundle, fake_real_sim, capsys):
    from gaia_gym.verbs.bench import run_bench, summary_line

    r = run_bench(bundle, batch_sizes=(1,), seconds=0.05, real_seconds=0.1, real_processes=1)
    printed = capsys.readouterr().out
    line = summary_line(r)
    assert "nan" not in (printed + line).lower()
    assert "batch 1:" in line and r["tokens_b1_vs_real"] > 0  # no batch 64: the measured batch is quoted
    assert f"tokens {r['tokens_b1_vs_real']:.1f}x" in line
    assert "real CarRacing-v3: 3.00 driving s/s (1 processes)" in line  # 150 frames/s / 50 Hz
    text = json.dumps(r, allow_nan=False)  # valid JSON: no NaN anywhere
    assert json.loads(text)["batches"]["1"]["frames_vs_real"] > 0


@pytest.mark.parametrize("fps", [0.0, math.nan, None])
def test_bench_missing_real_figure_is_null_and_na(bundle, fake_real_sim, capsys, fps):
    from gaia_gym.verbs.bench import run_bench, summary_line

    fake_real_sim["value"] = fps
    r = run_bench(bundle, batch_sizes=(1,), seconds=0.05, real_seconds=0.1, real_processes=1)
    printed = capsys.readouterr().out + summary_line(r)
    assert "nan" not in printed.lower() and "inf" not in printed.lower() and "n/a" in printed
    back = json.loads(json.dumps(r, allow_nan=False))
    assert back["tokens_b1_vs_real"] is None and back["batches"]["1"]["frames_vs_real"] is None
    assert back["batches"]["1"]["tokens_steps_per_s"] > 0  # the imagined figures are still there
    assert back["real_driving_s_per_s"] == (0.0 if fps == 0.0 else None)  # a zero is a figure, NaN is not


def test_bench_formatting_helpers():
    from gaia_gym.verbs.bench import fmt, ratio, summary_line

    assert ratio(6.0, 3.0) == 2.0 and ratio(1.0, 0.0) is None and ratio(None, 2.0) is None
    assert ratio(math.nan, 1.0) is None and ratio(1.0, math.inf) is None
    assert fmt(None) == "n/a" and fmt(math.nan, ".1f", "x") == "n/a" and fmt(2.25, ".1f", "x") == "2.2x"
    r = {"real_driving_s_per_s": None, "real_sim_processes": 2,
         "batches": {"16": {}, "64": {}}, "tokens_b64_vs_real": 12.34, "frames_b64_vs_real": None}
    assert summary_line(r) == ("real CarRacing-v3: n/a driving s/s (2 processes); imagined at batch 64: "
                               "tokens 12.3x, frames n/a")
    assert "batch 64: tokens n/a, frames n/a" in summary_line({"batches": {}})


# ----------------------------------------------------------------------------------------------
# model files, scene options, camera poses and sampling steps a demanding user tries
# ----------------------------------------------------------------------------------------------
def test_huge_vehicle_boxes_are_a_config_error_not_a_torch_error():
    from gaia_gym.testing import tiny_bundle

    env = gym.make("GaiaHighway-v0", bundle=tiny_bundle(conditions="cross"))
    with pytest.raises(ConfigError) as e:
        env.reset(seed=0, options={"vehicles": [[1e30, -1e30, 1e30, 0]]})
    assert "vehicles" in one_line(e)
    env.reset(seed=0, options={"vehicles": [[20.0, 4.0, -2.0, 0.0]]})  # a real scene still works


def file_line(e: pytest.ExceptionInfo) -> str:
    """The one-line message of a ModelFileError."""
    from gaia_gym.checkpoint import ModelFileError

    msg = str(e.value)
    assert isinstance(e.value, ModelFileError) and "\n" not in msg and msg
    return msg


def test_a_model_with_nan_weights_fails_to_load_naming_the_file(tmp_path):
    from gaia_gym.bundle import load_bundle, save_bundle
    from gaia_gym.checkpoint import ModelFileError
    from gaia_gym.testing import tiny_bundle

    b = tiny_bundle()
    with torch.no_grad():
        next(b.world_model.parameters()).fill_(float("nan"))
    d = save_bundle(b, tmp_path / "wm")  # the sha256 is computed over the NaN weights: only finiteness catches it
    with pytest.raises(ModelFileError) as e:
        load_bundle(d)
    assert "model.safetensors" in file_line(e) and "non-finite" in file_line(e)


def test_a_prompt_bank_with_nan_actions_fails_to_load_naming_the_file(tmp_path):
    from gaia_gym.bundle import load_bundle, save_bundle
    from gaia_gym.checkpoint import ModelFileError
    from gaia_gym.testing import tiny_bundle

    b = tiny_bundle()
    b.prompts.actions[0, 0, 0] = float("nan")
    d = save_bundle(b, tmp_path / "wm")
    with pytest.raises(ModelFileError) as e:
        load_bundle(d)
    assert "prompts.npz" in file_line(e) and "actions" in file_line(e)


@pytest.mark.parametrize("change", [{"d_model": "256"}, {"n_heads": 4.5}, {"no_such_key": 1}])
def test_config_json_with_wrong_types_is_a_model_file_error(tmp_path, change):
    from gaia_gym.bundle import load_bundle, save_bundle
    from gaia_gym.checkpoint import ModelFileError
    from gaia_gym.testing import tiny_bundle

    d = save_bundle(tiny_bundle(), tmp_path / "wm")
    info = json.loads((d / "config.json").read_text())
    info["config"].update(change)
    (d / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelFileError) as e:
        load_bundle(d)
    assert "config.json" in file_line(e)


@pytest.mark.parametrize("cameras", [[("front", float("nan"), 0.5, 0.75)], [("rear", 180.0, float("inf"), 0.5)], 5,
                                     [("front", 0.0)]])
def test_a_bad_camera_pose_is_a_config_error(cameras):
    from gaia_gym.testing import tiny_bundle

    with pytest.raises(ConfigError) as e:
        gym.make("GaiaDrive-v0", bundle=tiny_bundle(cameras=("front", "rear")), cameras=cameras)
    one_line(e)


def test_flow_steps_are_bounded_powers_of_two():
    from gaia_gym.backends.flow import FlowBackend
    from gaia_gym.models.flow import MAX_SAMPLING_STEPS
    from gaia_gym.testing import tiny_flow_bundle

    f = tiny_flow_bundle()
    for steps in (3, 1000, MAX_SAMPLING_STEPS * 2):
        with pytest.raises(ConfigError) as e:
            FlowBackend(f.world_model, f.tokenizer, steps=steps)
        assert "power of two" in one_line(e)
    for steps in (1, 2, 4, MAX_SAMPLING_STEPS):
        assert FlowBackend(f.world_model, f.tokenizer, steps=steps).steps == steps


def test_integral_float_metadata_and_negative_without_text():
    from gaia_gym.testing import tiny_bundle

    b = tiny_bundle(conditions="cross")
    spec = b.conditions
    assert (spec.metadata_ids({"lanes": 4.0}) == spec.metadata_ids({"lanes": 4})).all()
    with pytest.raises(ConfigError):
        spec.metadata_ids({"lanes": 4.5})
    env = gym.make("GaiaHighway-v0", bundle=b)
    with pytest.raises(ConfigError) as e:
        env.reset(seed=0, options={"negative": "a crash"})
    assert "negative" in one_line(e)
    env.reset(seed=0, options={"text": "two lanes", "negative": "a crash"})
