"""The Gymnasium / SB3 adapters over the imagination engine (GaiaDrive-v0), on a tiny untrained bundle.

The tiny model's end head sits near probability 0.5, so tests that need long episodes pass
``end_threshold=1.0`` (never terminates) and the termination tests pass ``end_threshold=0.0``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

import gaia_gym

from gaia_gym.errors import ModelFileError
from gaia_gym.envs.gaia_drive import GaiaDriveEnv
from gaia_gym.envs.vector import GaiaDriveVectorEnv

NEVER_END = dict(end_threshold=1.0)


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [(obs, 0.0)]
    for a in actions:
        obs, r, te, tr, _ = env.step(a)
        out.append((obs, r))
        assert not (te or tr)
    return out


def same_obs(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# registration and the checkers
# ----------------------------------------------------------------------------------------------
def test_registered_once_and_makeable(bundle):
    spec = gym.registry["GaiaDrive-v0"]
    assert spec.entry_point == "gaia_gym.envs.gaia_drive:GaiaDriveEnv"
    assert spec.vector_entry_point == "gaia_gym.envs.vector:GaiaDriveVectorEnv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn "Overriding environment"
        importlib.reload(gaia_gym)
        importlib.reload(gaia_gym)
    assert gym.registry["GaiaDrive-v0"] is spec
    env = gym.make("GaiaDrive-v0", bundle=bundle)
    assert isinstance(env.unwrapped, GaiaDriveEnv)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "prompt" in info
    env.close()


def test_import_is_cheap():
    code = "import sys, gaia_gym, gymnasium; assert 'GaiaDrive-v0' in gymnasium.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("obs_mode", ["all", "tokens"])
def test_gymnasium_check_env(bundle, obs_mode, headless):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("GaiaDrive-v0", bundle=bundle, obs_mode=obs_mode, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|-infinity).*")  # features are unbounded
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("obs_mode", ["all", "tokens"])
def test_sb3_check_env(bundle, obs_mode):
    from stable_baselines3.common.env_checker import check_env

    env = gym.make("GaiaDrive-v0", bundle=bundle, obs_mode=obs_mode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")  # tokens are a (g, g) grid
        check_env(env)
    env.close()


def test_spaces(bundle):
    env = GaiaDriveEnv(bundle=bundle)
    assert env.action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    sp = env.observation_space
    assert set(sp.keys()) == {"tokens", "frame", "features"}
    assert sp["tokens"] == gym.spaces.Box(0, 15, (4, 4), np.int64)
    assert sp["frame"] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert sp["features"].shape == (32,) and sp["features"].dtype == np.float32
    two = GaiaDriveEnv(bundle=bundle, obs_mode="tokens+features")
    assert set(two.observation_space.keys()) == {"tokens", "features"}
    one = GaiaDriveEnv(bundle=bundle, obs_mode="frame").observation_space  # a single key: that key's Box
    assert isinstance(one, gym.spaces.Box) and one == sp["frame"]


# ----------------------------------------------------------------------------------------------
# behaviour of one env
# ----------------------------------------------------------------------------------------------
def test_same_seed_same_rollout(bundle):
    acts = np.random.default_rng(0).uniform(-1, 1, (10, 2)).astype(np.float32)
    a = rollout(GaiaDriveEnv(bundle=bundle, **NEVER_END), 7, acts)
    b = rollout(GaiaDriveEnv(bundle=bundle, **NEVER_END), 7, acts)
    assert all(same_obs(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    c = rollout(GaiaDriveEnv(bundle=bundle, **NEVER_END), 8, acts)
    assert not all(np.array_equal(x[0]["tokens"], y[0]["tokens"]) for x, y in zip(a, c))
    # one env, re-seeded: the same rollout again
    env = GaiaDriveEnv(bundle=bundle, **NEVER_END)
    rollout(env, 8, acts)
    again = rollout(env, 7, acts)
    assert all(same_obs(x[0], y[0]) for x, y in zip(a, again))


def test_prompt_option_info_and_reward_fn(bundle):
    calls = []

    def reward_fn(tokens, action, features):
        calls.append((tokens.shape, action.copy(), features.shape))
        return float(tokens.sum())

    # fp32: the frame is compared bit for bit with a plain decode (bf16 autocast runs where it is fast)
    env = GaiaDriveEnv(bundle=bundle, obs_mode="frame", reward_fn=reward_fn, bf16=False, **NEVER_END)
    obs, info = env.reset(seed=0, options={"prompt": 3})
    assert info == {"prompt": 3} and isinstance(obs, np.ndarray)  # a single key: the bare frame
    want = bundle.tokenizer.decode(bundle.prompts.tokens[3, -1:]).numpy()[0]
    assert np.array_equal(obs, want)
    obs, r, _, _, info = env.step([2.0, -0.5])  # steering clipped to +1
    assert calls[0][0] == (4, 4) and calls[0][2] == (32,) and np.allclose(calls[0][1], [1.0, -0.5])
    assert r == float(env.engine.latents.sum())
    assert info["steering"] == 1.0 and info["speed_mps"] == pytest.approx(25.0)  # (-0.5 + 1) / 2 * 100 m/s
    assert 0.0 <= info["end_prob"] <= 1.0
    with pytest.raises(ValueError, match="prompt 99 is not an index"):
        env.reset(options={"prompt": 99})


def test_truncation_and_termination(bundle):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", horizon=3, **NEVER_END)
    env.reset(seed=0)
    flags = [env.step([0.0, 0.0])[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", horizon=3, end_threshold=0.0)
    env.reset(seed=0)
    assert env.step([0.0, 0.0])[2:4] == (True, False)


def test_long_episode_without_horizon_stays_finite(bundle):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens+features", horizon=None, **NEVER_END)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    feats, rewards = [], []
    for _ in range(300):
        obs, r, te, tr, info = env.step(rng.uniform(-1, 1, 2))
        assert not (te or tr)
        feats.append(obs["features"])
        rewards.append(r)
    assert np.isfinite(np.stack(feats)).all() and np.isfinite(rewards).all()


# ----------------------------------------------------------------------------------------------
# bad inputs: clear errors
# ----------------------------------------------------------------------------------------------
def test_bad_inputs(bundle, tmp_path):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", horizon=1, **NEVER_END)
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        env.step([0.0, 0.0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step([np.nan, 0.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step([0.0, np.inf])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.zeros((1, 2)))
    assert env.step([0.0, 0.0])[3]  # horizon 1: truncated
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        env.step([0.0, 0.0])
    env.reset()
    env.step([0.0, 0.0])

    for bad in ["pixels", "tokens+pixels", "tokens+tokens", "", 3]:
        with pytest.raises(ValueError, match="tokens, frame, features"):
            GaiaDriveEnv(bundle=bundle, obs_mode=bad)
    with pytest.raises(ValueError, match="render_mode"):
        GaiaDriveEnv(bundle=bundle, render_mode="ansi")

    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelFileError, match="no_such_model") as e:
        GaiaDriveEnv(model=missing)
    assert "\n" not in str(e.value) and str(missing) in str(e.value)
    with pytest.raises(ModelFileError, match="no_such_model"):
        gym.make("GaiaDrive-v0", model=str(missing))

    venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="tokens")
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        venv.step(np.zeros((2, 2)))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        venv.step(np.array([[0.0, 0.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, 2)))


def test_model_directory_round_trip(bundle, tmp_path):
    from gaia_gym.bundle import save_bundle

    save_bundle(bundle, tmp_path / "wm")
    env = GaiaDriveEnv(model=tmp_path / "wm", obs_mode="tokens")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------
def test_render_rgb_array_and_human(bundle, headless):
    env = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", render_mode="rgb_array")
    env.reset(seed=0)
    env.step([0.3, 0.5])
    img = env.render()
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    frame = env.engine.frames().numpy()[0]
    assert np.array_equal(img[-4, -4], frame[-1, -1])  # the frame, enlarged 4x (overlay top-left)
    env.close()

    human = GaiaDriveEnv(bundle=bundle, obs_mode="tokens", render_mode="human")
    human.reset(seed=0)
    assert human.step([0.0, 0.0])[0] is not None and human.render() is None
    assert human._viewer is not None
    human.close()
    assert human._viewer is None


def test_record_video(bundle, tmp_path):
    pytest.importorskip("moviepy", reason="gymnasium's RecordVideo writes videos with moviepy, not installed here")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(gym.make("GaiaDrive-v0", bundle=bundle, obs_mode="tokens", render_mode="rgb_array",
                               horizon=5, **NEVER_END), str(tmp_path / "videos"), episode_trigger=lambda e: True)
    env.reset(seed=0)
    done = False
    while not done:
        *_, te, tr, _ = env.step(env.action_space.sample())
        done = te or tr
    env.close()
    assert list((tmp_path / "videos").glob("*.mp4"))


# ----------------------------------------------------------------------------------------------
# gymnasium VectorEnv: one engine, SAME_STEP autoreset
# ----------------------------------------------------------------------------------------------
def test_make_vec_spaces_and_steps(bundle):
    envs = gym.make_vec("GaiaDrive-v0", num_envs=4, vectorization_mode="vector_entry_point", bundle=bundle,
                        **NEVER_END)
    assert isinstance(envs, GaiaDriveVectorEnv) and envs.num_envs == 4
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert envs.single_observation_space == GaiaDriveEnv(bundle=bundle).observation_space
    assert envs.action_space.shape == (4, 2)
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs) and info["_prompt"].all()
    assert obs["tokens"].shape == (4, 4, 4) and obs["frame"].shape == (4, 64, 64, 3)
    assert obs["features"].shape == (4, 32)
    obs, rew, te, tr, info = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert rew.shape == (4,) and te.dtype == bool and tr.dtype == bool and not (te | tr).any()
    assert info["end_prob"].shape == (4,) and info["_end_prob"].all() and "final_obs" not in info
    # the same seed gives the same batch
    again = gym.make_vec("GaiaDrive-v0", num_envs=4, vectorization_mode="vector_entry_point", bundle=bundle)
    assert same_obs(again.reset(seed=0)[0], envs.reset(seed=0)[0])
    assert len(envs.render() or ()) == 0  # no render_mode
    envs.close()


def test_vector_episode_ending_mid_batch(bundle):
    envs = GaiaDriveVectorEnv(num_envs=4, bundle=bundle, obs_mode="tokens+features", horizon=3, **NEVER_END)
    envs.reset(seed=0)
    zero = np.zeros((4, 2), np.float32)
    envs.step(zero)
    mask = np.array([True, False, False, False])
    obs, info = envs.reset(options={"reset_mask": mask, "prompt": [5, 0, 0, 0]})  # row 0 restarts alone
    assert np.array_equal(info["_prompt"], mask) and info["prompt"][0] == 5
    assert np.array_equal(obs["tokens"][0], bundle.prompts.tokens[5, -1].numpy())
    envs.step(zero)
    sampled = []  # what the engine sampled, recorded before the adapter's partial reset
    engine_step = envs.engine.step

    def recording_step(a):
        out = engine_step(a)
        sampled.append(out.latents.clone())
        return out

    envs.engine.step = recording_step
    obs, rew, te, tr, info = envs.step(zero)  # rows 1-3 reach the horizon, row 0 is at step 2
    ended = np.array([False, True, True, True])
    assert np.array_equal(tr, ended) and not te.any()
    assert np.array_equal(info["_final_obs"], ended) and np.array_equal(info["_final_info"], ended)
    assert info["final_obs"][0] is None and info["final_obs"].dtype == object
    for i in (1, 2, 3):
        fo = info["final_obs"][i]
        assert envs.single_observation_space.contains(fo)
        assert np.array_equal(fo["tokens"], sampled[-1][i].numpy())  # the last imagined frame ...
        # ... while the returned obs is the new episode's first frame (its prompt clip's last frame)
        assert np.array_equal(obs["tokens"][i], bundle.prompts.tokens[info["prompt"][i], -1].numpy())
    assert np.array_equal(info["_prompt"], ended)
    assert np.array_equal(info["_end_prob"], ~ended) and np.array_equal(info["final_info"]["_end_prob"], ended)
    assert np.array_equal(obs["tokens"][0], sampled[-1][0].numpy())  # the running row goes on
    assert np.array_equal(envs.engine.steps.numpy(), [2, 0, 0, 0])
    # ... and the next step ends row 0 only
    obs, rew, te, tr, info = envs.step(zero)
    assert np.array_equal(tr, [True, False, False, False])
    assert np.array_equal(info["_final_obs"], [True, False, False, False])
    assert np.array_equal(envs.engine.steps.numpy(), [0, 1, 1, 1])


def test_vector_matches_sync_vector_env_semantics(bundle):
    kw = dict(bundle=bundle, obs_mode="tokens", horizon=2, **NEVER_END)
    ours = GaiaDriveVectorEnv(num_envs=3, **kw)
    sync = gym.vector.SyncVectorEnv([lambda: GaiaDriveEnv(**kw)] * 3, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert ours.single_observation_space == sync.single_observation_space
    assert ours.observation_space == sync.observation_space and ours.action_space == sync.action_space
    r_ours, r_sync = ours.reset(seed=1), sync.reset(seed=1)
    assert set(r_ours[1]) == set(r_sync[1])
    a = np.zeros((3, 2), np.float32)
    for _ in range(2):
        o1, rw1, te1, tr1, i1 = ours.step(a)
        o2, rw2, te2, tr2, i2 = sync.step(a)
        assert o1.shape == o2.shape and o1.dtype == o2.dtype  # obs_mode "tokens": the bare (3, g, g) array
        assert rw1.dtype == rw2.dtype and np.array_equal(te1, te2) and np.array_equal(tr1, tr2)
        assert set(i1) == set(i2), (set(i1) ^ set(i2))
        for k in i1:
            if k.startswith("_"):
                assert np.array_equal(i1[k], i2[k]), k
    assert tr1.all()
    assert set(i1["final_info"]) == set(i2["final_info"])
    for j in range(3):
        assert i1["final_obs"][j].shape == i2["final_obs"][j].shape  # the bare tokens, as SyncVectorEnv's
    sync.close()


# ----------------------------------------------------------------------------------------------
# Stable-Baselines3 VecEnv
# ----------------------------------------------------------------------------------------------
def test_sb3_vecenv_conventions(bundle):
    from gymnasium.wrappers import TimeLimit
    from stable_baselines3.common.utils import check_for_correct_spaces
    from stable_baselines3.common.vec_env import VecCheckNan

    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = GaiaDriveVecEnv(num_envs=4, bundle=bundle, obs_mode="tokens+features", horizon=3,
                           render_mode="rgb_array", **NEVER_END)
    check_for_correct_spaces(venv, GaiaDriveEnv(bundle=bundle, obs_mode="tokens+features").observation_space,
                             venv.action_space)
    checked = VecCheckNan(venv, raise_exception=True)
    venv.seed(3)
    obs = checked.reset()
    assert venv.observation_space.contains({k: v[0] for k, v in obs.items()})
    assert [set(i) for i in venv.reset_infos] == [{"prompt"}] * 4
    a = np.zeros((4, 2), np.float32)
    for t in range(3):
        obs, rew, dones, infos = checked.step(a)
        assert rew.dtype == np.float32 and dones.shape == (4,) and len(infos) == 4
        assert all(i["TimeLimit.truncated"] == (t == 2) for i in infos)
    assert dones.all()
    for i in range(4):
        term = infos[i]["terminal_observation"]
        assert set(term) == {"tokens", "features"} and term["tokens"].shape == (4, 4)
        assert np.array_equal(obs["tokens"][i], bundle.prompts.tokens[venv.reset_infos[i]["prompt"], -1].numpy())
    # seeding reproduces
    venv.seed(3)
    first = venv.reset()
    venv.seed(3)
    assert same_obs(first, venv.reset())
    # attributes, methods, wrappers, render
    assert venv.get_attr("horizon") == [3] * 4 and venv.get_attr("render_mode", [0, 1]) == ["rgb_array"] * 2
    venv.set_attr("horizon", 3)
    assert venv.env_is_wrapped(TimeLimit) == [False] * 4
    assert venv.env_method("get_attr", "obs_mode", indices=[2]) == [["tokens+features"] * 4]
    img = venv.render()
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8  # 4 rows of 256x256, tiled 2x2
    venv.close()


def test_sb3_terminated_rows(bundle):
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="tokens", horizon=10, end_threshold=0.0)
    venv.reset()
    obs, rew, dones, infos = venv.step(np.zeros((2, 2), np.float32))
    assert dones.all() and all(not i["TimeLimit.truncated"] and "terminal_observation" in i for i in infos)


def test_sb3_ppo_learns(bundle):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = VecMonitor(GaiaDriveVecEnv(num_envs=4, bundle=bundle, obs_mode="tokens+features", horizon=20))
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, device="cpu", seed=0)
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4, 2)
    venv.close()


def test_pessimism_subtracts_the_reward_heads_spread(bundle):
    """reward = head's expectation - pessimism x its predictive std; the same seed, the same futures."""
    import torch

    from gaia_gym.errors import ConfigError
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv
    from gaia_gym.models.world_model import reward_spread

    def rollout(p):
        env = GaiaDriveVecEnv(3, bundle=bundle, obs_mode="tokens+features", pessimism=p)
        env.seed(5)
        env.reset()
        env.step_async(np.tile([[0.2, 0.4]], (3, 1)).astype(np.float32))
        obs, rew, _, _ = env.step_wait()
        return obs, rew

    obs0, r0 = rollout(0.0)
    obs2, r2 = rollout(2.0)
    assert np.array_equal(obs0["tokens"], obs2["tokens"])
    wm = bundle.world_model
    with torch.no_grad():
        spread = reward_spread(wm.reward_logits(torch.from_numpy(obs0["features"])), wm.bins).numpy()
    assert (spread > 0).all()
    np.testing.assert_allclose(r2, r0 - 2.0 * spread, rtol=1e-4, atol=1e-5)
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="pessimism"):
            GaiaDriveVecEnv(1, bundle=bundle, pessimism=bad)


def test_a_single_key_is_that_keys_box_everywhere(bundle):
    """obs_mode with one key: the key's Box and the bare array (SB3's MlpPolicy takes it); several: a Dict."""
    from stable_baselines3 import PPO

    from gaia_gym.envs.real import RealCarRacingEnv
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    for mode in ("tokens", "features", "frame"):
        env = GaiaDriveEnv(bundle=bundle, obs_mode=mode, **NEVER_END)
        assert isinstance(env.observation_space, gym.spaces.Box)
        obs, _ = env.reset(seed=0)
        assert isinstance(obs, np.ndarray) and env.observation_space.contains(obs)
        obs, *_ = env.step(np.zeros(2, np.float32))
        assert env.observation_space.contains(obs)
    venv = GaiaDriveVectorEnv(num_envs=2, bundle=bundle, obs_mode="features")
    assert isinstance(venv.single_observation_space, gym.spaces.Box) and venv.reset(seed=0)[0].shape == (2, 32)
    sb = GaiaDriveVecEnv(num_envs=2, bundle=bundle, obs_mode="features", horizon=4)
    PPO("MlpPolicy", sb, n_steps=4, batch_size=8, n_epochs=1, verbose=0).learn(8)
    assert isinstance(RealCarRacingEnv(bundle=bundle, obs_mode="tokens").observation_space, gym.spaces.Box)
    assert isinstance(GaiaDriveEnv(bundle=bundle, obs_mode="tokens+features").observation_space, gym.spaces.Dict)


def test_engine_settings_are_one_config_validated_once(bundle):
    from gaia_gym.envs import EngineConfig
    from gaia_gym.errors import ConfigError

    cfg = EngineConfig(horizon=7.0, temperature=0.5, guide="action")
    assert cfg.horizon == 7 and isinstance(cfg.horizon, int) and cfg.guide == ("action",)
    env = GaiaDriveEnv(bundle=bundle, config=cfg, top_k=3)  # keywords on top of a config
    assert env.core.config == EngineConfig(horizon=7, temperature=0.5, top_k=3)
    assert env.engine.top_k == 3 and env.engine.horizon == 7 and env.horizon == 7
    assert gym.make("GaiaDrive-v0", bundle=bundle, horizon=5).unwrapped.horizon == 5
    for bad in ({"horizon": 0}, {"horizon": 2.5}, {"temperature": -1}, {"no_such_setting": 1}, {"config": 3}):
        with pytest.raises(ConfigError):
            GaiaDriveEnv(bundle=bundle, **bad)
