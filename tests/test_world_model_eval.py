"""World-model evaluation and the inverse-dynamics probe, on a tiny random model and synthetic drives.

The synthetic frames make both probe labels visible: a red vertical bar moves sideways by 2 px per unit
of steering each step (right for positive steering), and a green horizontal bar sits at a height that
grows with the measured speed.
"""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import S, make_dataset
from gaia_gym.data.loader import ClipDataset
from gaia_gym.metrics import psnr_uint8
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.tokenizer import Tokenizer, TokenizerConfig
from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModel, WorldModelConfig
from gaia_gym.evaluation.probe import ProbePairs
from gaia_gym.models.probe import IGNORE, Probe, ProbeConfig, load_probe, pair_labels
from gaia_gym.train.probe import train_probe
from gaia_gym.evaluation.common import branch_rollout, make_engine, roc_auc, select_clips
from gaia_gym.evaluation.pictures import counterfactual_grid, write_rollout_gif
from gaia_gym.evaluation.world_model import evaluate_world_model
from gaia_gym.train.loop import TrainConfig

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and OpenMP threads only contend on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("wm_eval") / "ds")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(enc_channels=(8, 16, 16, 16), dec_channels=(16, 16, 8, 8), fsq_levels=(4, 4)))
    wm = WorldModel(WorldModelConfig(**WORLD_MODEL_PRESETS["tiny"]))
    assert tok.cfg.grid == wm.cfg.grid == 4 and tok.cfg.vocab_size == wm.cfg.vocab == 16
    return wm.eval(), tok.eval()


# ----------------------------------------------------------------------------------------------
def test_roc_auc_by_ranking():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([1.0, 1.0, 1.0], [0, 1, 0]) == pytest.approx(0.5)  # ties count half
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert roc_auc([0.3, 0.1], [0, 0]) is None and roc_auc([0.3, 0.1], [True, True]) is None
    # against the pairwise definition on random data with ties
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    pairs = (s[y][:, None] > s[~y][None]).mean() + 0.5 * (s[y][:, None] == s[~y][None]).mean()
    assert roc_auc(s, y) == pytest.approx(pairs)


def test_pair_labels():
    cfg = ProbeConfig()
    assert pair_labels(np.array([0.5, 0.5, 0.5, 0.5, 0]), np.array([10, 0, 0, 0, 20.0]), 4, cfg) == (1.0, 1.0)
    assert pair_labels(np.array([-1.0, -1, 0, 0, 1]), np.array([10, 0, 0, 0, 5.0]), 4, cfg) == (0.0, 0.0)
    assert pair_labels(np.array([0.2] * 5), np.array([10, 0, 0, 0, 12.0]), 4, cfg) == (IGNORE, IGNORE)


def test_probe_learns_synthetic_steering(ds: Path, tmp_path: Path):
    cfg = dict(channels=(8, 16, 16, 16), hidden=32)
    tc = TrainConfig(steps=120, batch_size=32, lr=3e-3, warmup_steps=10, log_every=20, image_every=0, bf16=False,
                     checkpoint_minutes=60, seed=0)
    res = train_probe(ds, tmp_path / "probe", train_cfg=tc, workers=0, progress=False, **cfg)
    val = res["val"]
    assert val["steer"]["pairs"] > 30 and val["speed"]["pairs"] > 30
    assert val["steer_accuracy"] > 0.9, val
    assert val["speed_accuracy"] > 0.8, val
    assert set(val["by_k"]) == {"4", "8"}

    probe = load_probe(tmp_path / "probe")
    assert isinstance(probe, Probe) and probe.cfg.channels == (8, 16, 16, 16)
    from gaia_gym.checkpoint import read_model_info

    assert read_model_info(tmp_path / "probe")["meta"]["val"]["steer_accuracy"] == val["steer_accuracy"]
    # predict on real val pairs agrees with the labels
    pairs = [p for p, _ in zip(ProbePairs(ds, "val", probe.cfg, shuffle=False), range(64)) if p["steer"] != IGNORE]
    fa = torch.stack([p["frames"][0] for p in pairs])
    fb = torch.stack([p["frames"][1] for p in pairs])
    out = probe.predict(fa.numpy(), fb)
    assert out["steer_right_prob"].shape == (len(pairs),) and out["faster_prob"].shape == (len(pairs),)
    y = torch.stack([p["steer"] for p in pairs])
    assert ((out["steer_right_prob"] > 0.5).float() == y).float().mean() > 0.85


def test_probe_with_tokenizer_reconstructions(ds: Path, models, tmp_path: Path):
    _wm, tok = models
    tc = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, image_every=0, bf16=False, checkpoint_minutes=60)
    res = train_probe(ds, tmp_path / "p", train_cfg=tc, workers=0, progress=False, tokenizer=tok, val_max_pairs=16,
                      channels=(4, 4, 4, 4), hidden=8, frames=4)
    assert res["val_recon"]["frames"] == "tokenizer reconstructions" and res["val_recon"]["pairs"] == 16
    assert res["val"]["frames"] == "real"
    p = load_probe(tmp_path / "p")
    f = torch.zeros(2, S, S, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="4 frames"):
        p.predict(f, f)
    assert p.predict(f, f, f, f)["faster_prob"].shape == (2,)


def test_evaluate_world_model(ds: Path, models, tmp_path: Path):
    wm, tok = models
    probe = Probe(ProbeConfig(channels=(4, 4, 4, 4), hidden=8)).eval()
    context, horizons = 3, (1, 2, 4)
    grid = tmp_path / "grid.png"
    res = evaluate_world_model(wm, tok, ds, split="val", context=context, horizons=horizons, max_clips=None,
                               batch_size=4, probe=probe, progress=False, real_sim_seconds=0,
                               real_sim_frames_per_s=150.0, throughput_batch=8, throughput_seconds=0.05, grid_path=grid,
                               counterfactual_steps=4)
    keys = ["val_cross_entropy", "token_accuracy", "tokenizer_ceiling_psnr", "reward_mae_teacher_forced",
            "reward_mae_rollout", "termination_auc", "counterfactual_steering_accuracy",
            "counterfactual_speed_accuracy", "counterfactual_steering_accuracy_moving",
            "probe_steering_accuracy_on_reconstructions", "probe_speed_accuracy_on_reconstructions",
            "imagined_frames_per_s_b8", "imagined_vs_real_driving_ratio"]
    for k in keys:
        assert isinstance(res[k], float) and math.isfinite(res[k]), (k, res[k])
    for k in ("psnr_by_horizon", "ssim_by_horizon", "copy_last_psnr_by_horizon"):
        assert set(res[k]) == {"1", "2", "4"} and all(math.isfinite(v) for v in res[k].values()), k
    assert res["val_cross_entropy"] == pytest.approx(math.log(16), rel=0.2)  # a random model: ~uniform
    assert 0 <= res["token_accuracy"] <= 1 and 0 <= res["termination_auc"] <= 1
    assert res["termination_positives"] >= 2 and res["termination_end_windows"] == 2  # 2 of 4 val episodes end
    assert res["clips"] == 4 * (80 // (context + 4))
    assert res["probe_reference_pairs"]["steer"] > 0
    assert res["imagined_vs_real_driving_ratio"] == pytest.approx(res["imagined_frames_per_s_b8"] * 4 / 150.0)

    # copy-last PSNR by hand, over the same (all) clips
    clips = list(ClipDataset(ds, split="val", clip_len=context + 4, fields=("frames", "speed_mps"), shuffle=False))
    assert res["counterfactual_contexts_moving"] == sum(float(c["speed_mps"][context - 1]) > 10 for c in clips)
    for h in horizons:
        by_hand = torch.cat([psnr_uint8(c["frames"][context - 1][None], c["frames"][context - 1 + h][None])
                             for c in clips]).mean()
        assert res["copy_last_psnr_by_horizon"][str(h)] == pytest.approx(float(by_hand), rel=1e-5)

    img = iio.imread(grid)
    assert img.ndim == 3 and img.shape[0] > 5 * 2 * S and img.shape[1] > 5 * 2 * S  # 5 rows, 1 + 4 columns


def test_per_episode_figures_pool_to_the_overall_ones(ds: Path, models):
    wm, tok = models
    res = evaluate_world_model(wm, tok, ds, split="val", context=3, horizons=(1, 2), max_clips=2, batch_size=4,
                               progress=False, real_sim_seconds=0, throughput_seconds=0, counterfactual_steps=0,
                               per_episode=True)
    per = res["open_loop_by_episode"]
    assert res["clips"] == 4 * (80 // 5)  # every clip, max_clips ignored
    assert list(per) == [f"episodes/ep_{i:06d}.npz" for i in range(8, 12)]  # the 4 val shards, in order
    assert all(d["clips"] == 80 // 5 for d in per.values())
    for key in ("psnr_by_horizon", "copy_last_psnr_by_horizon"):
        for h in ("1", "2"):  # equal clips per episode: the pooled mean is the mean of the episodes'
            pooled = float(np.mean([d[key][h] for d in per.values()]))
            assert pooled == pytest.approx(res[key][h], rel=1e-5)
    assert len({d["copy_last_psnr_by_horizon"]["1"] for d in per.values()}) == 4  # four different drives


def test_max_clips_spreads_over_the_split(ds: Path):
    all_clips = select_clips(ds, "val", 7, None)
    some = select_clips(ds, "val", 7, 4)
    assert len(some) == 4 and len({int(c["episode"]) for c in some}) == 4  # one per val episode
    assert [(int(c["episode"]), int(c["start"])) for c in some] == \
           [(int(c["episode"]), int(c["start"])) for c in select_clips(ds, "val", 7, 4)]
    assert len(all_clips) == 4 * 11


def test_branches_share_the_context(ds: Path, models):
    wm, tok = models
    clip = select_clips(ds, "val", 6, 2)
    tokens = tok.encode(torch.stack([c["frames"] for c in clip]).flatten(0, 1)).view(2, 6, 4, 4)
    acts = torch.from_numpy(ActionCodec().encode(torch.stack([c["steering"] for c in clip]).numpy(),
                                                 torch.stack([c["target_speed_mps"] for c in clip]).numpy()))
    same = acts[:, 2:3].expand(2, 3, 2)  # three identical branches
    out = branch_rollout(make_engine(wm, tok, 0.0, 0, bf16=False), tokens[:, :3], acts[:, :3], same, 3)
    assert out.shape == (2, 3, 3, 4, 4)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_counterfactual_grid_and_gif(ds: Path, models, tmp_path: Path):
    wm, tok = models
    c = select_clips(ds, "val", 4, 1)[0]
    acts = ActionCodec().encode(c["steering"].numpy(), c["target_speed_mps"].numpy())
    p = counterfactual_grid(wm, tok, c["frames"].numpy(), acts, tmp_path / "cf.png", steps=3, bf16=False)
    img = iio.imread(p)
    assert img.shape[0] > 5 * 2 * S and img.shape[1] > 4 * 2 * S

    g = write_rollout_gif(wm, tok, ds, tmp_path / "roll.gif", n_futures=2, context=2, steps=3, bf16=False)
    frames = iio.imread(g, index=None)
    assert frames.shape[0] == 2 + 3 and frames.shape[-1] in (3, 4)
