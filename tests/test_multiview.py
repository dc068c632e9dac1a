"""The camera rig: rendering and geometry, the world model's view axis, view dropout, the envs over a rig,
the rig dataset and its training stage, the multiview evaluation; single-camera models unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gaia_gym.errors import ConfigError


@pytest.fixture(scope="module")
def driven():
    """A CarRacing drive 30 steps into track 3 with the scripted driver."""
    from gaia_gym.sims.carracing import CarRacingDrive, PursuitDriver

    d = CarRacingDrive()
    drv = PursuitDriver(d)
    d.reset(3)
    for _ in range(30):
        d.step(*drv.act())
    yield d
    d.close()


# ---- rendering and geometry ----------------------------------------------------------------------
def test_front_camera_is_the_simulators_own_frame_and_rendering_is_deterministic(driven):
    from gaia_gym.data.frames import carracing_frame
    from gaia_gym.sims.rig import CAMERAS, render_camera, render_rig

    own = carracing_frame(driven.last_obs)
    assert np.array_equal(carracing_frame(render_camera(driven.sim, CAMERAS["front"])), own)
    a = render_rig(driven.sim, [CAMERAS[n] for n in ("front", "left", "rear", "right")], driven.last_obs)
    b = render_rig(driven.sim, [CAMERAS[n] for n in ("front", "left", "rear", "right")])
    assert a.shape == (4, 64, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a[0], a[2])  # the rear camera sees something else


def test_overlaps_agree_under_the_stated_geometry_and_not_under_another(driven):
    from gaia_gym.sims.rig import CAMERAS, Camera, overlap_psnr, render_rig

    cams = [CAMERAS[n] for n in ("front", "left", "rear", "right")]
    v = render_rig(driven.sim, cams, driven.last_obs)
    for i, j in ((0, 1), (0, 2), (0, 3), (1, 2), (2, 3)):
        assert overlap_psnr(v[i], v[j], cams[i], cams[j]) > 33.0
    wrong = Camera("left?", -90.0)  # the left view read as if it were yawed the other way
    assert overlap_psnr(v[0], v[1], cams[0], wrong) < overlap_psnr(v[0], v[1], cams[0], cams[1]) - 3.0


def test_view_to_view_maps_compose():
    from gaia_gym.sims.rig import CAMERAS, view_to_view

    def full(m):
        return np.vstack([m, [0, 0, 1]])

    f, r, left = CAMERAS["front"], CAMERAS["rear"], CAMERAS["left"]
    assert np.allclose(full(view_to_view(r, f)) @ full(view_to_view(f, r)), np.eye(3), atol=1e-9)
    assert np.allclose(full(view_to_view(left, r)) @ full(view_to_view(f, left)), full(view_to_view(f, r)), atol=1e-9)
    # the car's anchor maps to itself
    from gaia_gym.sims.rig import car_mask

    ys, xs = np.nonzero(car_mask(f))
    c = np.array([xs.mean(), ys.mean(), 1.0])
    assert np.allclose(view_to_view(f, r) @ c, c[:2], atol=0.6)


def test_camera_names_are_checked():
    from gaia_gym.sims.rig import cameras_from_names

    assert [c.name for c in cameras_from_names("front,rear")] == ["front", "rear"]
    for bad in ("front,up", "rear,front", "front,front"):
        with pytest.raises(ConfigError):
            cameras_from_names(bad)


def test_rig_mosaic_places_views_around_the_car():
    from gaia_gym.media import rig_mosaic

    v = np.stack([np.full((4, 4, 3), k * 50, np.uint8) for k in range(1, 5)])  # front, left, rear, right
    m = rig_mosaic(v, [0, 90, 180, -90], gap=0)
    assert m.shape == (12, 12, 3)
    assert m[0, 4, 0] == 50 and m[4, 0, 0] == 100 and m[8, 4, 0] == 150 and m[4, 8, 0] == 200
    assert rig_mosaic(v[:2], [0, 0], gap=0).shape == (4, 8, 3)  # the same slot twice: side by side


# ---- the world model's view axis -------------------------------------------------------------------
RIG = (("front", 0.0, 0.5, 0.75), ("left", 90.0, 0.5, 0.75), ("rear", 180.0, 0.5, 0.75))


def _rig_model(**kw):
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModel, WorldModelConfig

    torch.manual_seed(0)
    m = WorldModel(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "cameras": RIG, **kw}))
    torch.nn.init.normal_(m.cam_emb[-1].weight, std=0.5)  # the camera embedding starts at zero otherwise
    return m.eval()


def _batch(B=2, T=4, V=3):
    g = torch.Generator().manual_seed(1)
    return {"tokens": torch.randint(16, (B, T, V, 4, 4), generator=g), "actions": torch.rand(B, T, 2, generator=g) * 2 - 1,
            "reward": torch.rand(B, T, generator=g), "terminated": torch.zeros(B, T, dtype=torch.bool)}


def test_view_axis_shapes_through_forward_step_and_a_smaller_rig():
    from gaia_gym.models.world_model import KVCache, make_sampler

    m = _rig_model()
    b = _batch()
    assert m.layout.block == 3 * 4 + 2 and m.layout.view_tokens == 4
    out = m(b["tokens"], b["actions"])
    assert out.image_logits.shape[:3] == (2, 4, 12)
    assert m.next_frame_logits(out).shape[:3] == (2, 3, 12)
    cache = KVCache()
    m.prefill(cache, b["tokens"], b["actions"])
    nxt, mem, r, e = m.step(cache, 3, b["tokens"][:, -1], b["actions"][:, -1], make_sampler(1.0, 0, torch.Generator().manual_seed(0)))
    assert nxt.shape == (2, 3, 4, 4) and mem.shape == (2, 32)
    two = m.for_cameras(RIG[:2])
    assert two.layout.block == 2 * 4 + 2
    assert torch.equal(two.pos_emb, m.pos_emb)
    assert two(b["tokens"][:, :, :2], b["actions"]).image_logits.shape[2] == 8


def test_a_camera_rig_needs_parallel_decoding_and_distinct_names():
    from gaia_gym.models.world_model import WorldModelConfig

    with pytest.raises(ConfigError):
        WorldModelConfig(cameras=RIG, decoding="autoregressive")
    with pytest.raises(ConfigError):
        WorldModelConfig(cameras=(RIG[0], RIG[0]))
    with pytest.raises(ConfigError):
        WorldModelConfig(cameras=(("front", "ahead"),))


def test_the_camera_pose_enters_the_prediction():
    from dataclasses import replace

    m = _rig_model()
    b = _batch()
    moved = replace(m.cfg, cameras=(RIG[0], ("left", 60.0, 0.5, 0.75), RIG[2]))
    from gaia_gym.models.world_model import WorldModel

    m2 = WorldModel(moved).eval()
    m2.load_state_dict(m.state_dict())
    assert not torch.allclose(m(b["tokens"], b["actions"]).image_logits, m2(b["tokens"], b["actions"]).image_logits)


def test_a_hidden_view_does_not_reach_the_model():
    m = _rig_model()
    b = _batch()
    other = b["tokens"].clone()
    other[:, :, 1] = (other[:, :, 1] + 5) % 16  # change only the left view
    vis = torch.tensor([[True, False, True]] * 2)
    a = m(b["tokens"], b["actions"], visible=vis).image_logits
    assert torch.allclose(a, m(other, b["actions"], visible=vis).image_logits)
    assert not torch.allclose(m(b["tokens"], b["actions"]).image_logits, m(other, b["actions"]).image_logits)
    with m.seeing(["front", "rear"]):  # the same, through the context manager the evaluation uses
        assert torch.allclose(m(b["tokens"], b["actions"]).image_logits, a)
    assert m.visible is None


def test_view_dropout_hides_views_per_clip_and_keeps_one():
    m = _rig_model(view_dropout=0.9)
    torch.manual_seed(0)
    masks = torch.cat([m.view_dropout_mask(64, "cpu") for _ in range(20)])
    assert masks.any(1).all()  # at least one view shown in every clip
    assert (~masks).any()  # some views hidden
    assert masks.all(1).float().mean() < 0.5
    assert _rig_model(view_dropout=0.0).view_dropout_mask(8, "cpu") is None
    m.train()
    loss, _ = m.compute_loss(_batch())
    loss.backward()
    assert m.missing_view.grad is not None and m.missing_view.grad.abs().sum() > 0


def test_single_camera_models_keep_their_layout():
    from gaia_gym.bundle import load_bundle

    b = load_bundle()
    wm = b.world_model
    assert wm.cfg.cameras == () and wm.pos_emb.shape[0] == wm.layout.block
    assert b.backend.latent_shape == (8, 8) and b.backend.frame_shape == (64, 64, 3) and b.backend.cameras == ()
    with pytest.raises(ConfigError):
        wm.for_cameras(RIG)


# ---- envs over a rig -----------------------------------------------------------------------------------
def test_gaia_drive_over_a_rig_passes_both_checkers_and_renders_the_rig():
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check

    import gaia_gym  # noqa: F401
    from gaia_gym.testing import tiny_bundle

    b = tiny_bundle(cameras=["front", "left", "rear", "right"])
    env = gym.make("GaiaDrive-v0", bundle=b, render_mode="rgb_array", horizon=20)
    obs, _ = env.reset(seed=0)
    assert obs["frame"].shape == (4, 64, 64, 3) and obs["tokens"].shape == (4, 4, 4)
    env.step(np.zeros(2, np.float32))
    img = env.render()
    assert img.shape[0] == img.shape[1] and img.shape[0] >= 3 * 64
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check(gym.make("GaiaDrive-v0", bundle=b, horizon=20, obs_mode="tokens+features").unwrapped)


def test_sb3_vecenv_and_ppo_run_on_a_rig():
    from stable_baselines3 import PPO

    from gaia_gym.testing import tiny_bundle
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = GaiaDriveVecEnv(num_envs=4, bundle=tiny_bundle(cameras=["front", "rear"]), obs_mode="features", horizon=8)
    PPO("MlpPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, verbose=0).learn(32)  # one key: a Box
    assert venv.reset().shape == (4, 32)


def test_real_env_renders_the_models_rig():
    from gaia_gym.testing import tiny_bundle
    from gaia_gym.envs.real import RealCarRacingEnv

    env = RealCarRacingEnv(bundle=tiny_bundle(cameras=["front", "rear"]), render_mode="rgb_array")
    obs, _ = env.reset(options={"track": 1_000_000})
    assert obs["frame"].shape == (2, 64, 64, 3) and obs["tokens"].shape == (2, 4, 4)
    obs, *_ = env.step(np.array([0.0, 0.2], np.float32))
    assert not np.array_equal(obs["frame"][0], obs["frame"][1])
    assert env.render().shape[0] == 4 * (3 * 64 + 4)
    env.close()


def test_planner_runs_on_a_rig():
    from gaia_gym.testing import tiny_bundle
    from gaia_gym.imagination import Imagination
    from gaia_gym.rl.planner import Planner, PlannerConfig

    b = tiny_bundle(cameras=["front", "rear"])
    eng = Imagination(b, n=1, seed=0)
    eng.reset()
    a = Planner(b, PlannerConfig(horizon=3, candidates=8, iterations=1)).act(eng.state())
    assert tuple(a.shape) == (2,)


# ---- dataset, training, evaluation ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def rig_data(tmp_path_factory):
    from gaia_gym.config import CarRacingCollectConfig, preset
    from gaia_gym.sims.carracing_collect import collect_carracing

    out = tmp_path_factory.mktemp("rig") / "data"
    cfg = preset(CarRacingCollectConfig, "tiny", max_steps=22, val_every=2, cameras=("front", "left", "rear"))
    collect_carracing(cfg, out, progress=False)
    return out


def test_rig_dataset_holds_the_views_and_the_poses(rig_data):
    from gaia_gym.config import CarRacingCollectConfig, preset
    from gaia_gym.data.format import load_episode
    from gaia_gym.errors import DatasetError
    from gaia_gym.sims.carracing_collect import collect_carracing
    from gaia_gym.sims.rig import CAMERAS

    m = json.loads((rig_data / "manifest.json").read_text())
    assert [c["name"] for c in m["cameras"]] == ["front", "left", "rear"]
    assert m["cameras"][1]["yaw_deg"] == CAMERAS["left"].yaw_deg
    ep = load_episode(rig_data / m["episodes"][0]["file"])
    assert ep["views"].shape == (len(ep["frames"]), 3, 64, 64, 3)
    assert np.array_equal(ep["views"][:, 0], ep["frames"]) and np.array_equal(ep["last_views"][0], ep["last_frame"])
    with pytest.raises(DatasetError):  # another rig into the same directory
        collect_carracing(preset(CarRacingCollectConfig, "tiny", max_steps=22, val_every=2, cameras=("front",)),
                          rig_data, progress=False)


@pytest.fixture(scope="module")
def rig_run(rig_data, tmp_path_factory):
    """(single-camera tiny model dir, tiny rig model trained 3 steps from it on `rig_data`)."""
    from gaia_gym.bundle import save_bundle
    from gaia_gym.testing import tiny_bundle
    from gaia_gym.train.loop import TrainConfig
    from gaia_gym.train.world_model import train_world_model

    d = tmp_path_factory.mktemp("rigrun")
    save_bundle(tiny_bundle(), d / "single")
    tc = TrainConfig(steps=3, batch_size=2, log_every=1, image_every=0)
    train_world_model(rig_data, d / "single" / "tokenizer", d / "rig", preset="tiny", train_cfg=tc, progress=False,
                      cameras=("front", "rear"), init=d / "single", view_dropout=0.3, context=6)
    return d / "single", d / "rig"


def test_train_a_rig_model_warm_started_then_evaluate_it(rig_data, rig_run):
    from gaia_gym.bundle import load_bundle
    from gaia_gym.evaluation.multiview import evaluate_multiview

    single, b = load_bundle(rig_run[0]), load_bundle(rig_run[1])
    assert b.world_model.cfg.camera_names == ("front", "rear") and b.prompts.tokens.shape[2:] == (2, 4, 4)
    # warm start: the transformer came from the single-camera model (training moved it only a little)
    assert torch.allclose(b.world_model.blocks[0].mlp[0].weight, single.world_model.blocks[0].mlp[0].weight, atol=0.05)
    assert not torch.equal(b.world_model.blocks[0].mlp[0].weight, single.world_model.blocks[0].mlp[0].weight)
    r = evaluate_multiview(b, rig_data, single, max_clips=2, horizons=(1, 2), context=2, steer_steps=2, progress=False)
    c = r["cross_view_consistency"]
    assert set(c) >= {"real_rig", "reconstructed_rig", "joint", "isolated", "independent"}
    assert c["pairs"] == ["front-rear"] and c["real_rig"]["1"] > 30.0  # the renderer agrees with itself
    assert set(r["per_view_psnr"]["rear"]) == {"copy_last", "tokenizer_ceiling", "joint", "isolated", "independent"}
    assert "sign_agreement_with_front" in r["counterfactual_steering"]["per_view"]["rear"]


def test_eval_multiview_cli_writes_the_record_and_the_picture(rig_data, rig_run, tmp_path, capsys):
    from gaia_gym.cli import main

    js, gif = tmp_path / "mv.json", tmp_path / "rig.gif"
    assert main(["eval", "multiview", "--model", str(rig_run[1]), "--data", str(rig_data), "--single", str(rig_run[0]),
                 "--max-clips", "1", "--picture", str(gif), "--json", str(js), "--quiet"]) in (0, None)
    r = json.loads(js.read_text())
    assert r["command"].startswith("gaia-gym eval multiview --model") and r["clips"] == 1
    assert "16" in r["cross_view_consistency"]["joint"] and gif.exists() and gif.with_suffix(".png").exists()
    assert main(["eval", "multiview", "--model", str(rig_run[0]), "--data", str(rig_data), "--quiet"]) == 2
    assert "no camera rig" in capsys.readouterr().err


def test_rig_training_refuses_a_camera_the_dataset_lacks(rig_data, tmp_path):
    from gaia_gym.bundle import save_bundle
    from gaia_gym.testing import tiny_bundle
    from gaia_gym.train.world_model import train_world_model

    save_bundle(tiny_bundle(), tmp_path / "single")
    with pytest.raises(ConfigError, match="right"):
        train_world_model(rig_data, tmp_path / "single" / "tokenizer", tmp_path / "x", preset="tiny",
                          cameras=("front", "right"), progress=False)


def test_a_sub_rig_of_the_same_weights_through_the_env_and_its_errors():
    import gymnasium as gym

    import gaia_gym  # noqa: F401
    from gaia_gym.testing import tiny_bundle

    b = tiny_bundle(cameras=["front", "left", "rear"])
    env = gym.make("GaiaDrive-v0", bundle=b, cameras="rear,front", horizon=5)
    obs, _ = env.reset(seed=0)
    assert obs["frame"].shape == (2, 64, 64, 3)
    assert env.unwrapped.core.bundle.world_model.cfg.camera_names == ("rear", "front")
    assert torch.equal(env.unwrapped.core.bundle.prompts.tokens[:, :, 1], b.prompts.tokens[:, :, 0])
    moved = b.with_cameras([("front", 0.0, 0.5, 0.75), ("left", 45.0, 0.5, 0.75)])
    assert moved.world_model.cfg.cameras[1][1] == 45.0
    with pytest.raises(ConfigError, match="right"):
        b.with_cameras("front,right")
    with pytest.raises(ConfigError, match="no camera rig"):
        tiny_bundle().with_cameras("front")


def test_rig_cost_measures_every_rig_size_against_the_real_rig():
    from gaia_gym.testing import tiny_bundle
    from gaia_gym.evaluation.multiview import rig_cost

    r = rig_cost(tiny_bundle(cameras=["front", "rear"]), view_counts=(1, 2), batch=4, seconds=0.2, real_seconds=0.5,
                 rounds=1)
    one, two = r["per_views"]["1"], r["per_views"]["2"]
    assert one["cameras"] == ["front"] and two["cameras"] == ["front", "rear"]
    assert all(v["real_rig_steps_per_s"] > 0 and v["tokens_vs_real"] > 0 for v in (one, two))


def test_shipped_rig_model_loads_imagines_every_view_and_beats_copy_last():
    from gaia_gym.bundle import RIG_WORLD_MODEL, load_bundle
    from gaia_gym.imagination import Imagination

    b = load_bundle(RIG_WORLD_MODEL)
    assert b.world_model.cfg.camera_names == ("front", "left", "rear", "right")
    assert b.backend.latent_shape == (4, 8, 8) and b.backend.frame_shape == (4, 64, 64, 3)
    eng = Imagination(b, n=8, seed=0, temperature=0.0)
    eng.reset(prompt=torch.arange(8))
    out = eng.step(b.prompts.actions[:8, -1])  # the real action after the context
    real = eng.frames(b.prompts.next_tokens[:8, 0]).float()  # (8, 4, 64, 64, 3)
    last = eng.frames(b.prompts.tokens[:8, -1]).float()
    err = (eng.frames(out.latents).float() - real).pow(2).mean(dim=(0, 2, 3, 4))
    assert (err < (last - real).pow(2).mean(dim=(0, 2, 3, 4))).all()  # in every view


def test_eval_multiview_names_a_dataset_without_the_models_cameras(rig_data, rig_run, tmp_path):
    from gaia_gym.bundle import load_bundle
    from gaia_gym.config import CarRacingCollectConfig, preset
    from gaia_gym.errors import DatasetError
    from gaia_gym.evaluation.multiview import evaluate_multiview
    from gaia_gym.sims.carracing_collect import collect_carracing

    plain = tmp_path / "plain"
    collect_carracing(preset(CarRacingCollectConfig, "tiny", episodes=1), plain, progress=False)
    b = load_bundle(rig_run[1])
    with pytest.raises(DatasetError, match="no camera rig"):
        evaluate_multiview(b, plain, progress=False)
    with pytest.raises(ConfigError, match="no camera 'right'"):
        evaluate_multiview(_with_right(b), rig_data, progress=False)


def _with_right(b):
    """`b` with its rear camera renamed "right" (a camera the tiny rig dataset does not have)."""
    from dataclasses import replace

    from gaia_gym.models.world_model import WorldModel

    cams = tuple(("right", *c[1:]) if c[0] == "rear" else c for c in b.world_model.cfg.cameras)
    wm = WorldModel(replace(b.world_model.cfg, cameras=cams)).eval()
    wm.load_state_dict(b.world_model.state_dict())
    return replace(b, world_model=wm)
