"""Scene conditions (metadata, agent boxes, text) on tiny presets: the dropouts, classifier-free guidance
and negative prompts, an agent box that moves what the model predicts, GaiaHighway-v0's checkers and
determinism, and one-line errors for bad conditions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import gaia_gym  # noqa: F401  (registers the envs)
from gaia_gym.bundle import save_bundle, load_bundle
from gaia_gym.testing import tiny_bundle
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination, SceneRows
from gaia_gym.models.conditions import ConditionSpec, Conditions, training_conditions
from gaia_gym.models.world_model import KVCache, WorldModel, WorldModelConfig, WORLD_MODEL_PRESETS, make_sampler
from gaia_gym.sims.highway_scene import FACTS, METADATA, clip_facts, describe, fact_labels, words_of

SPEC = ConditionSpec(metadata=tuple(METADATA.items()), agents=8, text_dim=16)


@pytest.fixture(scope="module", params=["cross", "adaln"])
def cbundle(request):
    return tiny_bundle(conditions=request.param)


# ---- the dropouts -----------------------------------------------------------------------------
def test_training_dropouts_have_their_rates_and_shapes():
    B, T, N = 4000, 6, 8
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(B, T, N, 9) + torch.tensor([1.0] + [0.0] * 8)  # every box present
    tracks = torch.arange(N).expand(B, T, N).clone()
    cond, every, hidden = training_conditions(SPEC, B, T, "cpu", torch.zeros(B, 3, dtype=torch.long), boxes, tracks,
                                              torch.randn(B, 16), generator=g)
    assert abs(float(cond.dropped["metadata"].float().mean()) - (0.5 + 0.5 * 0.1)) < 0.03
    assert abs(float(cond.dropped["text"].float().mean()) - (0.5 + 0.5 * 0.1)) < 0.03
    assert abs(float(every.float().mean()) - 0.1) < 0.02
    assert abs(float(1 - cond.agent_keep.mean()) - SPEC.field_dropout) < 0.01
    # instance dropout hides a vehicle (a track) for the whole clip, not a slot here and there
    gone = cond.agents[..., 0] < 0.5  # (B, T, N)
    assert torch.equal(gone, gone[:, :1].expand_as(gone))
    assert abs(float(gone[:, 0].float().mean()) - SPEC.instance_dropout) < 0.02
    # the agent horizon cuts the boxes from a block on, never in between
    cut = cond.dropped["agents"]
    assert cut.shape == (B, T)
    assert bool((cut[:, 1:] >= cut[:, :-1]).all())
    # generation from scratch hides a prefix of the frames (up to all of them, as a scratch reset does)
    assert bool((hidden[:, 1:] <= hidden[:, :-1]).all()) and bool(hidden.all(1).any())
    assert abs(float(hidden[:, 0].float().mean()) - SPEC.scratch) < 0.03


def test_a_dropped_condition_is_its_null():
    torch.manual_seed(0)
    wm = WorldModel(WorldModelConfig(**WORLD_MODEL_PRESETS["tiny"], conditions=SPEC))
    enc = wm.cond_enc
    meta = torch.tensor([[0, 1, 2], [3, 2, 1]])
    text = torch.randn(2, 16)
    full = Conditions(metadata=meta, text=text)
    _, _, p_drop = enc(full.without(["metadata", "text"]), 2, 1, "cpu")
    _, _, p_full = enc(full, 2, 1, "cpu")
    drop_meta_only = enc(full.without(["metadata"]), 2, 1, "cpu")[2]
    assert not torch.allclose(p_full, drop_meta_only)
    assert torch.allclose(p_drop[0], p_drop[1])  # with everything dropped the rows are the same


# ---- guidance -----------------------------------------------------------------------------------
def test_guidance_contrasts_the_named_condition(cbundle):
    wm = cbundle.world_model
    for blk in wm.blocks:  # give the (zero-initialised) condition paths an effect
        for p in blk.parameters():
            if p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.2)
    B = 2
    tokens = torch.randint(16, (B, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    acts = torch.zeros(B, 3, 2)
    text = cbundle.text_encoder(["a highway", "a roundabout"])
    neg = cbundle.text_encoder(["dense traffic"] * 2)
    cond = Conditions(metadata=torch.zeros(B, 3, dtype=torch.long), text=text)

    def logits(guidance, contrast):
        c = KVCache()
        wm.prefill(c, tokens, acts, cond=cond)
        grab = {}

        def sample(lg):
            grab.setdefault("lg", lg.clone())
            return lg.argmax(-1)

        wm.step(c, 2, tokens[:, -1], acts[:, -1], sample, guidance=guidance, cond=cond, contrast=contrast,
                guide_action=False)
        return grab["lg"]

    plain = logits(1.0, None)
    same = logits(3.0, cond)  # a contrast equal to the condition: guidance changes nothing
    assert torch.allclose(plain, same, atol=1e-5)
    no_text = cond.without(["text"])
    negative = Conditions(metadata=cond.metadata, text=neg)
    g1, g2 = logits(3.0, no_text), logits(3.0, negative)
    assert not torch.allclose(plain, g1, atol=1e-4)
    assert not torch.allclose(g1, g2, atol=1e-4)  # a negative prompt is not the same as no prompt


def test_engine_guidance_with_a_negative_prompt_runs_and_branches(cbundle):
    e = Imagination(cbundle, n=2, seed=0, guidance=2.0, guide=("text", "agents"))
    sc = SceneRows.empty(cbundle.conditions, 2, "cpu")
    sc.text = cbundle.text_encoder(["a highway", "a merge"])
    sc.negative = cbundle.text_encoder(["dense traffic", "dense traffic"])
    sc.agents[:] = torch.from_numpy(cbundle.conditions.check_agents([[10.0, 0.0, 2.0, 0.0]]))
    sc.agents_left[:] = 2
    e.reset(scene=sc, scratch=True)
    s0 = e.state()
    e.step(torch.zeros(2, 2))
    assert e.scene.agents[0, 0, 1] == pytest.approx(10.0 + 2.0 * 0.2)  # moved at its velocity for one step
    e.restore(s0)
    assert int(e.scene.agents_left[0]) == 2 and bool(e.scene.hidden.all())
    with pytest.raises(ConfigError, match="cannot contrast 'weather'"):
        Imagination(cbundle, n=1, guide=("weather",))


# ---- an agent box moves the prediction ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cross", "adaln", "map"])
def test_an_agent_box_moves_what_the_tiny_model_predicts(mode):
    """Synthetic frames: all code 0 except code 1 in the grid column given by the box's x. A tiny model
    conditioned on the box learns to put the code where the box says; the same model with the box
    condition dropped cannot. ("map": adaLN plus the agent map, the box drawn into the token grid.)"""
    torch.manual_seed(0)
    extra = dict(agent_map_scale=0.5, agent_map_default=(0.5, 0.5)) if mode == "map" else {}
    spec = ConditionSpec(agents=1, mode="adaln" if mode == "map" else mode, drop=0.0, drop_all=0.0,
                         field_dropout=0.0, instance_dropout=0.0, agent_horizon=0.0, scratch=0.0, **extra)
    wm = WorldModel(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "context": 2}, conditions=spec))
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)

    def batch(B, col=None):
        col = torch.randint(4, (B, 2)) if col is None else col
        tok = torch.zeros(B, 2, 4, 4, dtype=torch.long)
        for t in range(2):
            tok[torch.arange(B), t, :, col[:, t]] = 1
        boxes = torch.zeros(B, 2, 1, 9)
        boxes[:, 0, 0, 0] = 1.0
        boxes[:, 0, 0, 1] = (col[:, 1].float() - 1.5) / 2  # block 0's box says where frame 1's code is
        return {"tokens": tok, "actions": torch.zeros(B, 2, 2), "reward": torch.zeros(B, 2),
                "terminated": torch.zeros(B, 2, dtype=torch.bool), "agents": boxes}, col

    wm.train()
    for _ in range(800):  # cross-attention learns the box slower than adaLN (400 steps fell short on AVX2 machines)
        b, _ = batch(32)
        loss, _ = wm.compute_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    wm.eval()
    b, col = batch(64)
    with torch.no_grad():
        out = wm(b["tokens"], b["actions"], cond=Conditions(agents=b["agents"]))
        pred = wm.unpatchify(wm.next_frame_logits(out).argmax(-1))[:, 0]  # (B, 4, 4) predicted frame 1
        hit = (pred[torch.arange(64), 0, col[:, 1]] == 1).float().mean()
        blind = wm(b["tokens"], b["actions"], cond=Conditions(agents=b["agents"], dropped={"agents": torch.ones(64, dtype=torch.bool)}))
        pred_b = wm.unpatchify(wm.next_frame_logits(blind).argmax(-1))[:, 0]
        hit_blind = (pred_b[torch.arange(64), 0, col[:, 1]] == 1).float().mean()
    assert float(hit) > 0.7  # chance (4 columns): 0.25
    assert float(hit_blind) < float(hit) - 0.3, (float(hit), float(hit_blind))  # the box, not the frames, places it


def _map_encoder(d: int = 8):
    from gaia_gym.models.conditions import ConditionEncoder
    from gaia_gym.sims.highway_scene import agent_map_spec

    spec = ConditionSpec(metadata=tuple(METADATA.items()), agents=8, **agent_map_spec())
    return ConditionEncoder(spec, d, grid=8, patch=4), spec


def _raw_map(enc, cond):
    """The splatted presence channel as an (8, 8) grid: the projection replaced by a read-out of its input."""
    C = enc.map_channels
    lin = torch.nn.Linear(16 * C, 16 * C, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(16 * C))
    enc.map_proj, enc.map_null = lin, torch.nn.Parameter(torch.full((16 * C,), -1.0))
    m = enc.agent_map(cond, 1, 1, "cpu")  # (1, 1, 4, 16 C): 2x2 patches of 4x4 cells
    return m.view(2, 2, 4, 4, C).permute(0, 2, 1, 3, 4).reshape(8, 8, C)[..., 0]


@pytest.mark.parametrize("scenario", ["highway", "roundabout"])
def test_the_agent_map_draws_a_box_where_the_frame_shows_it(scenario):
    """A box at (x, y) m is splatted around the pixel where highway-env draws it: the ego's place in the
    frame (the scenario's centring) plus (x, y) at the frame's px/m (the read-out's convention)."""
    from gaia_gym.evaluation.highway import PX_PER_M
    from gaia_gym.sims.highway_scene import VIEW_ORIGIN, normalise_boxes

    enc, spec = _map_encoder()
    box = np.zeros((1, 1, 8, 9), np.float32)
    box[0, 0, 0] = [1, 10.0, -3.0, 0, 0, 1, 0, 5, 2]
    meta = torch.from_numpy(spec.metadata_ids({"scenario": scenario}))[None]
    grid = _raw_map(enc, Conditions(metadata=meta, agents=torch.from_numpy(normalise_boxes(box))))
    assert float(grid.sum()) == pytest.approx(1.0, abs=1e-5)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    cx, cy = float((grid * (xs + 0.5)).sum() * 8), float((grid * (ys + 0.5)).sum() * 8)  # centroid in px
    u0, v0 = VIEW_ORIGIN[scenario]
    assert cx == pytest.approx(u0 * 64 + 10.0 * PX_PER_M, abs=1e-3)
    assert cy == pytest.approx(v0 * 64 - 3.0 * PX_PER_M, abs=1e-3)


def test_the_agent_map_leaves_out_dropped_rows_and_hidden_positions():
    from gaia_gym.sims.highway_scene import normalise_boxes

    enc, spec = _map_encoder()
    box = np.zeros((1, 1, 8, 9), np.float32)
    box[0, 0, :2] = [[1, 10.0, 0, 0, 0, 1, 0, 5, 2], [1, -8.0, 4.0, 0, 0, 1, 0, 5, 2]]
    a = torch.from_numpy(normalise_boxes(box))
    keep = torch.ones_like(a)
    keep[0, 0, 1, 2] = 0.0  # the second box's y is hidden by field dropout: it cannot be drawn
    grid = _raw_map(enc, Conditions(agents=a, agent_keep=keep))
    assert float(grid.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(grid[:, :3].sum()) == 0.0  # nothing where the hidden box was (8 m behind: 6 px from the left)
    dropped = _raw_map(enc, Conditions(agents=a, dropped={"agents": torch.ones(1, dtype=torch.bool)}))
    assert bool((dropped == -1.0).all())  # the learned null, not an empty map
    empty = _raw_map(enc, Conditions(agents=torch.zeros_like(a)))
    assert float(empty.abs().sum()) == 0.0


def test_an_agent_map_spec_checks_its_fields():
    with pytest.raises(ConfigError, match="first metadata field"):
        ConditionSpec(metadata=tuple(METADATA.items()), agents=8, agent_map_scale=0.5,
                      agent_map_origins=(("motorway", 0.3, 0.5),))
    with pytest.raises(ConfigError, match="agent boxes"):
        ConditionSpec(metadata=tuple(METADATA.items()), agent_map_scale=0.5)


# ---- the env ------------------------------------------------------------------------------------
def test_gaia_highway_env_checkers_and_determinism(cbundle):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check

    # end_threshold 1: an untrained model's end head is arbitrary; this test needs whole 4-step rollouts
    env = gym.make("GaiaHighway-v0", bundle=cbundle, obs_mode="tokens+features", end_threshold=1.0)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check(env.unwrapped, warn=False)
    runs = []
    for _ in range(2):
        obs, info = env.reset(seed=3, options={"metadata": {"scenario": "highway", "lanes": "3"},
                                               "text": "dense traffic", "vehicles": [[8.0, 4.0, 1.0, 0.0]]})
        assert info["scratch"]
        seq = [obs["tokens"]]
        for _ in range(4):
            obs, r, term, trunc, _ = env.step([0.1, 0.5])
            seq.append(obs["tokens"])
        runs.append(np.stack(seq))
    assert np.array_equal(runs[0], runs[1])
    obs, info = env.reset(seed=3, options={"prompt": 1, "text": "a roundabout"})
    assert not info["scratch"]


def test_vector_and_sb3_adapters_take_a_conditioned_model(cbundle):
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    venv = gym.make_vec("GaiaHighway-v0", num_envs=3, bundle=cbundle, obs_mode="features")
    obs, _ = venv.reset(seed=0)
    for _ in range(3):
        obs, *_ = venv.step(np.zeros((3, 2), np.float32))
    assert obs.shape[0] == 3  # a single key: the bare (3, d) features
    sb = GaiaDriveVecEnv(2, bundle=cbundle, obs_mode="features", horizon=3)
    sb.reset()
    for _ in range(4):
        sb.step(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("options, message", [
    ({"metadata": {"scenario": "moon"}}, "unknown value 'moon' for metadata field 'scenario'"),
    ({"metadata": {"weather": "rain"}}, "unknown metadata field 'weather'"),
    ({"vehicles": [[1, 2, 3, 4, 5, 6, 7, 8, 9]]}, "vehicles must be a \\(N, 2..8\\) list"),
    ({"vehicles": [1.0, 2.0]}, "vehicles must be a \\(N, 2..8\\) list"),
    ({"vehicles": [[1.0, 2.0]] * 9}, "at most 8 vehicles"),
    ({"vehicles": [[np.nan, 2.0]]}, "finite"),
    ({"text": 5}, "text must be a string"),
    ({"agent_steps": -1, "vehicles": [[1.0, 2.0]]}, "agent_steps must be an integer"),
    ({"weather": "rain"}, "unknown option 'weather'"),
])
def test_bad_conditions_are_one_line_errors(cbundle, options, message):
    env = gym.make("GaiaHighway-v0", bundle=cbundle)
    with pytest.raises(ConfigError, match=message) as e:
        env.reset(options=options)
    assert "\n" not in str(e.value)


def test_a_text_encoder_of_the_wrong_width_is_refused(cbundle):
    with pytest.raises(ConfigError, match="7-wide embeddings; this world model was trained on 16-wide"):
        gym.make("GaiaHighway-v0", bundle=cbundle, text_encoder=lambda texts: torch.zeros(len(texts), 7))
    ok = gym.make("GaiaHighway-v0", bundle=cbundle, text_encoder=lambda texts: torch.ones(len(texts), 16))
    ok.reset(options={"text": "anything"})


def test_a_model_without_conditions_refuses_scene_options(bundle):
    with pytest.raises(ConfigError, match="takes no scene conditions"):
        gym.make("GaiaHighway-v0", bundle=bundle)
    env = gym.make("GaiaDrive-v0", bundle=bundle)
    with pytest.raises(ConfigError, match="unknown option 'text'"):
        env.reset(options={"text": "a highway"})


def test_conditioned_bundle_round_trips(tmp_path, cbundle):
    d = save_bundle(cbundle, tmp_path / "m")
    b = load_bundle(d)
    assert b.conditions == cbundle.conditions
    assert torch.equal(b.prompts.metadata, cbundle.prompts.metadata)
    assert torch.allclose(b.text_encoder(["a highway"]), cbundle.text_encoder(["a highway"]))


# ---- descriptions ---------------------------------------------------------------------------------
def test_descriptions_say_what_their_labels_say():
    rng = np.random.default_rng(0)
    others = np.zeros((8, 8, 7), np.float32)
    others[:, 0, :3] = (1.0, 10.0, 0.5)  # a car 10 m ahead in the ego's lane
    facts = clip_facts({"scenario": "highway", "lanes": "3", "density": "high"}, others,
                       np.linspace(30, 20, 8), np.zeros(8))
    assert facts["ahead"] == "close" and facts["ego"] == "brakes"
    for _ in range(50):
        text, said = describe(facts, rng, phrasings="held_out")
        lab = fact_labels(said)
        for j, k in enumerate(FACTS):
            if k in said:
                assert any(w in text for w in words_of(k, said[k])[-1:])
                assert lab[j] == FACTS[k].index(said[k])
            else:
                assert lab[j] == len(FACTS[k])
    train_words = {w for k in FACTS for v in FACTS[k] for w in words_of(k, v)[:-1]}
    for _ in range(20):
        text, _ = describe(facts, rng, phrasings="train")
        assert any(w in text for w in train_words)


# ---- the pipeline on a tiny highway-env dataset ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_highway(tmp_path_factory):
    pytest.importorskip("highway_env")
    from gaia_gym import cli

    root = tmp_path_factory.mktemp("hwpipe")
    data, tok, text, wm = root / "data", root / "tok", root / "text", root / "wm"
    assert cli.main(["collect", "highway", "--preset", "tiny", "--out", str(data), "--quiet", "--episodes", "12",
                     "--max-steps", "10"]) == 0
    assert cli.main(["train", "tokenizer", "--data", str(data), "--out", str(tok), "--preset", "tiny", "--steps", "3",
                     "--quiet"]) == 0
    assert cli.main(["train", "text-encoder", "--data", str(data), "--out", str(text), "--steps", "20", "--quiet"]) == 0
    assert cli.main(["train", "world-model", "--data", str(data), "--tokenizer", str(tok), "--out", str(wm), "--preset",
                     "tiny", "--steps", "3", "--context", "4", "--text-encoder", str(text), "--quiet"]) == 0
    return data, wm


def test_a_world_model_trained_on_highway_data_is_conditioned(tiny_highway):
    data, wm = tiny_highway
    b = load_bundle(wm)
    spec = b.conditions
    assert spec is not None and spec.mode == "cross" and spec.agents == 8 and spec.text_dim == 64
    assert dict(spec.metadata)["scenario"] == METADATA["scenario"]
    assert b.codec.max_speed_mps == 40.0 and b.text_encoder is not None
    assert b.prompts.metadata is not None and b.prompts.metadata.shape[1] == 3
    env = gym.make("GaiaHighway-v0", model=str(wm))
    obs, info = env.reset(seed=0, options={"text": "a roundabout", "vehicles": [[6.0, 0.0]]})
    assert obs["frame"].shape == (64, 64, 3) and info["scratch"]


def test_imagine_takes_scene_flags(tiny_highway, tmp_path):
    from gaia_gym import cli

    _, wm = tiny_highway
    agents = tmp_path / "agents.json"
    agents.write_text("[[10.0, 0.0, -1.0, 0.0], [15.0, 4.0]]")
    out = tmp_path / "im.gif"
    assert cli.main(["imagine", "--model", str(wm), "--out", str(out), "--steps", "2", "--futures", "1",
                     "--text", "dense traffic", "--negative", "an empty road", "--guidance", "2", "--guide", "text,agents",
                     "--meta", "lanes=3", "--agents", str(agents), "--scratch"]) == 0
    assert out.exists()
    assert cli.main(["imagine", "--model", str(wm), "--out", str(out), "--meta", "lanes=9"]) == 2


def test_eval_highway_quick_and_the_real_env(tiny_highway, tmp_path):
    from gaia_gym import cli
    from gaia_gym.envs.real_highway import RealHighwayEnv
    from gaia_gym.evaluation.real import run_episode

    data, wm = tiny_highway
    js = tmp_path / "hw.json"
    assert cli.main(["eval", "highway", "--model", str(wm), "--data", str(data), "--quick", "--json", str(js),
                     "--picture", str(tmp_path / "grid.png"), "--quiet"]) == 0
    import json

    r = json.loads(js.read_text())
    for k in ("agent_placement", "metadata_adherence", "text_adherence", "negative_prompt_effect", "fidelity"):
        assert k in r
    assert set(r["fidelity"]["psnr_by_horizon"]) == {"1", "2", "4", "8"} or r["fidelity"]["clips"] == 0
    env = RealHighwayEnv(model=str(wm), obs_mode="features", max_steps=3)
    for act in ("scripted", "random"):
        ep = run_episode(env, act, seed=1_000_000, scenario="merge-v0")
        assert 1 <= ep["steps"] <= 3 and isinstance(ep["return"], float)
