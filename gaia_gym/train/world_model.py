"""The world-model stage: tokenize a dataset with a trained tokenizer, then train the world model on
token clips (`gaia-gym train world-model`).

Tokens are small (200k frames x 64 codes x 2 bytes = 26 MB), so a tokenized split lives in one file
and in memory; clips are sampled uniformly over every valid (episode, start) pair.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from gaia_gym.bundle import (PROMPTS, copy_model_dir, WORLD_MODEL_KIND, PromptBank, load_tokenizer, record_training_sources,
                             stored_latents, weights_sha256)
from gaia_gym.checkpoint import read_model_info
from gaia_gym.data.format import load_episode
from gaia_gym.errors import ConfigError, DatasetError
from gaia_gym.fileio import atomic_write_bytes
from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.models.layout import HIGHWAY_CODEC, ActionCodec
from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModel, WorldModelConfig
from gaia_gym.models.tokenizer import config_from_dict
from gaia_gym.sims.highway_scene import episode_metadata
from gaia_gym.sims.rig import dataset_rig
from gaia_gym.precision import autocast

KIND = WORLD_MODEL_KIND


def world_model_config(preset: str = "default", **overrides) -> WorldModelConfig:
    if preset not in WORLD_MODEL_PRESETS:
        raise ConfigError(f"unknown world-model preset {preset!r}; choose from {', '.join(WORLD_MODEL_PRESETS)}")
    return WorldModelConfig(**{**WORLD_MODEL_PRESETS[preset], **overrides})


def dataset_cameras(data: Path, names) -> tuple[tuple, ...]:
    """The (name, yaw_deg, anchor_x, anchor_y) of cameras `names` of rig dataset `data` (its manifest's
    rig, `gaia-gym collect carracing --cameras`), in the order asked."""
    have = {c.name: c for c in dataset_rig(data)}
    bad = [n for n in names if n not in have]
    if bad:
        raise ConfigError(f"camera {bad[0]!r} is not in {data}'s rig ({', '.join(have)})")
    return tuple(have[n].row() for n in names)


@torch.no_grad()
def tokenize_split(data: Path, tokenizer_dir: Path, split: str, out: Path, codec: ActionCodec,
                   batch_size: int = 256, progress: bool = True, cameras: tuple[str, ...] = ()) -> Path:
    """Encode every frame of `split` into `out` (one .npz): "tokens" (the frames' latents: uint16 token
    grids from a discrete tokenizer, float16 latents from a VAE; with `cameras`, the rig's views
    (T, V, g, g), each view encoded alone), model actions, reward, terminated and episode boundaries.
    Skipped when `out` exists for the same tokenizer weights and cameras."""
    tid = weights_sha256(tokenizer_dir) + (":" + ",".join(cameras) if cameras else "")
    idx = EpisodeIndex(data, split=split)
    scene = is_scene_dataset(idx)
    tid += ":scene" if scene else ""
    if out.exists():
        with np.load(out) as z:
            if str(z["tokenizer_id"]) == tid:
                return out
    tok = load_tokenizer(tokenizer_dir, kind=None)
    pick = [[c.name for c in dataset_rig(data)].index(c) for c in cameras] if cameras else None
    parts: dict[str, list] = {"tokens": [], "actions": [], "reward": [], "terminated": []}
    scene_keys = ("others", "others_track", "speed_mps", "steering")
    if scene:
        parts.update({k: [] for k in scene_keys})
    episode_meta = []
    starts = [0]
    bar = tqdm(total=idx.total_steps, unit="frame", desc=f"encode {split}", disable=not progress)
    for path in idx.paths:
        image = "views" if pick else "frames"
        ep = load_episode(path, fields=[image, "steering", "target_speed_mps", "reward", "terminated",
                                        *(("others", "others_track", "speed_mps") if scene else ())])
        f = torch.from_numpy(ep[image][:, pick] if pick else ep[image])
        lead = f.shape[: f.dim() - 3]
        f = f.reshape(-1, *f.shape[-3:])
        toks = []
        for i in range(0, len(f), batch_size):
            with autocast(f.device):
                toks.append(tok.encode(f[i : i + batch_size]))
            bar.update(len(f[i : i + batch_size]) / (len(pick) if pick else 1))
        lat = torch.cat(toks)
        lat = lat.reshape(*lead, *lat.shape[1:])
        parts["tokens"].append(lat.numpy().astype(np.float16 if lat.is_floating_point() else np.uint16))
        parts["actions"].append(codec.encode(ep["steering"], ep["target_speed_mps"]))
        parts["reward"].append(ep["reward"].astype(np.float32))
        parts["terminated"].append(ep["terminated"].astype(bool))
        if scene:
            for k in scene_keys:
                parts[k].append(ep[k])
            episode_meta.append(episode_metadata(ep["meta"], ep["others"]))
        starts.append(starts[-1] + len(lat))
    bar.close()
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    buf = io.BytesIO()
    extra = {"episode_metadata": np.array(json.dumps(episode_meta))} if scene else {}
    np.savez(buf, **arrays, **extra, episode_starts=np.asarray(starts, np.int64), tokenizer_id=np.array(tid))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda fh: fh.write(buf.getvalue()))
    return out


def is_scene_dataset(idx: EpisodeIndex) -> bool:
    """A dataset whose episodes record scene conditions (highway-env: other vehicles, metadata)."""
    return idx.manifest.get("source") == "highway"


class TokenClips:
    """In-memory clips of one encoded split (tokens or float latents; `key` names them in each batch)."""

    def __init__(self, path: Path, clip_len: int, key: str = "tokens") -> None:
        self.key = key
        with np.load(path) as z:
            self.tokens = stored_latents(z["tokens"])
            self.actions = torch.from_numpy(z["actions"])
            self.reward = torch.from_numpy(z["reward"])
            self.terminated = torch.from_numpy(z["terminated"])
            starts = z["episode_starts"]
        self.clip_len = clip_len
        valid = [np.arange(a, b - clip_len + 1) for a, b in zip(starts[:-1], starts[1:]) if b - a >= clip_len]
        if not valid:
            raise DatasetError(f"{path}: no episode has {clip_len} steps")
        self.starts = torch.from_numpy(np.concatenate(valid))

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = starts[:, None] + torch.arange(self.clip_len)
        return {self.key: self.tokens[idx], "actions": self.actions[idx], "reward": self.reward[idx],
                "terminated": self.terminated[idx]}

    def sampler(self, batch_size: int):
        def make(rank: int, world_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
            g = torch.Generator().manual_seed(seed * 1009 + rank)
            while True:
                pick = self.starts[torch.randint(len(self.starts), (batch_size,), generator=g)]
                yield self.batch(pick)

        return make


class SceneClips(TokenClips):
    """Token clips of a scene dataset (highway-env) with their conditions in every batch: "metadata"
    (B, F) value ids of the clip's episode, "agents" (B, T, N, F) normalised boxes of the frame each block
    predicts (frame t+1; the episode's last block repeats its own), "agent_tracks" (B, T, N) and, with a
    text encoder, "text" (B, E): a random description of the clip (`highway_scene.describe`) embedded."""

    def __init__(self, path: Path, clip_len: int, spec, text_encoder=None, seed: int = 0) -> None:
        from gaia_gym.sims.highway_scene import agent_boxes, check_view, clip_facts, normalise_boxes

        super().__init__(path, clip_len)
        self.spec = spec
        with np.load(path) as z:
            if "episode_metadata" not in z:
                raise DatasetError(f"{path}: no scene records (not a highway-env dataset)")
            others, tracks = z["others"].astype(np.float32), z["others_track"].astype(np.int64)
            speed, steering = z["speed_mps"].astype(np.float32), z["steering"].astype(np.float32)
            metas = json.loads(str(z["episode_metadata"]))
            starts = z["episode_starts"]
        if spec.agent_map_scale:
            for m in metas:
                check_view(m)
        n = len(others)
        nxt = np.minimum(np.arange(n) + 1, np.repeat(starts[1:] - 1, np.diff(starts)))  # t+1 within the episode
        self.boxes = torch.from_numpy(normalise_boxes(agent_boxes(others[nxt]))[:, : spec.agents])
        self.tracks = torch.from_numpy(tracks[nxt][:, : spec.agents])
        ep_of = np.repeat(np.arange(len(metas)), np.diff(starts))
        ids = np.stack([spec.metadata_ids(m) for m in metas]) if spec.metadata else np.zeros((len(metas), 0), np.int64)
        self.metadata = torch.from_numpy(ids[ep_of])
        self.text_encoder = text_encoder
        self.rng = np.random.default_rng(seed)
        self.facts = {int(s0): clip_facts(metas[ep_of[s0]], others[s0 : s0 + clip_len], speed[s0 : s0 + clip_len],
                                          steering[s0 : s0 + clip_len]) for s0 in self.starts.tolist()} if text_encoder else {}

    def batch(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        from gaia_gym.sims.highway_scene import describe

        out = super().batch(starts)
        idx = starts[:, None] + torch.arange(self.clip_len)
        out["metadata"] = self.metadata[starts]
        out["agents"], out["agent_tracks"] = self.boxes[idx], self.tracks[idx]
        if self.text_encoder is not None:
            texts = [describe(self.facts[int(s0)], self.rng)[0] for s0 in starts.tolist()]
            with torch.no_grad():
                out["text"] = self.text_encoder(texts).float()
        return out


def head_levels(tokenizer_cfg, head: str) -> tuple[int, ...]:
    """`code_levels` for an image head kind: "codes" (one softmax over the vocabulary) or "digits" (one per
    FSQ digit; needs an FSQ tokenizer)."""
    if head == "codes":
        return ()
    if head == "digits":
        if tokenizer_cfg.quantizer != "fsq":
            raise ConfigError("the digits head needs an FSQ tokenizer; use --head codes with a VQ tokenizer")
        return tuple(tokenizer_cfg.fsq_levels)
    raise ConfigError(f"head must be 'codes' or 'digits', got {head!r}")


def warm_start(model: WorldModel, init_dir: Path) -> list[str]:
    """Copy into `model` every tensor of world model `init_dir` whose name and shape match (e.g. a
    single-camera model into a rig model: the rig's camera embedding and missing-view input stay
    fresh); returns the names left fresh. Nothing matching: a ConfigError."""
    from gaia_gym.checkpoint import model_dir, read_weights

    info = read_model_info(init_dir)
    if info.get("kind") != KIND:
        raise ConfigError(f"--init {init_dir} is a {info.get('kind')} file, expected a discrete world model")
    theirs = read_weights(model_dir(init_dir), info)
    mine = model.state_dict()
    took = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    if not took:
        raise ConfigError(f"--init {init_dir}: no tensor fits this world model (another width or layout)")
    model.load_state_dict(took, strict=False)
    return sorted(set(mine) - set(took))


def train_world_model(data: Path, tokenizer_dir: Path, out: Path, preset: str = "default", train_cfg=None,
                      progress: bool = True, head: str = "digits", cameras: tuple[str, ...] = (),
                      init: Path | None = None, conditions: str = "cross", text_encoder: Path | None = None,
                      agent_map: bool = True, **overrides) -> dict:
    """Tokenize `data` (cached in OUT/tokens) and train (or resume) a world model into `out`.

    head: "digits" (default; one small softmax per FSQ digit) or "codes" (one softmax over all codes).
    cameras: names from the dataset's rig (its `views`): one world model over all of them at once.
    init: a world model directory to start from (tensors of the same name and shape; a resumed run
    continues from its own checkpoint instead).
    conditions: for a scene dataset (highway-env), how metadata, agent boxes and text enter the
    transformer: "cross" (cross-attention), "adaln" or "none" (actions only); text_encoder: the text
    encoder directory (`gaia-gym train text-encoder`; copied into OUT/text_encoder), None: no text;
    agent_map: also draw the boxes into the token grid (`ConditionSpec.agent_map_scale`)."""
    from gaia_gym.train.loop import TrainConfig, train

    tokenizer_dir = Path(tokenizer_dir)
    tok_info = read_model_info(tokenizer_dir)
    if tok_info.get("kind") != "tokenizer":
        raise ConfigError(f"{tokenizer_dir} is a {tok_info.get('kind')} file, expected a tokenizer")
    tcfg = config_from_dict(tok_info["config"])
    rig = {"cameras": dataset_cameras(Path(data), tuple(cameras))} if cameras else {}
    cfg = world_model_config(preset, **{"grid": tcfg.grid, "vocab": tcfg.vocab_size,
                                        "code_levels": head_levels(tcfg, head), **rig, **overrides})
    scene = is_scene_dataset(EpisodeIndex(data, split="train"))
    codec = HIGHWAY_CODEC if scene else ActionCodec()
    enc = None
    if scene and conditions != "none":
        from gaia_gym.bundle import TEXT_ENCODER_DIR, load_text_encoder
        from gaia_gym.models.conditions import ConditionSpec
        from gaia_gym.sims.highway_scene import METADATA, agent_map_spec

        if text_encoder is not None:
            enc = load_text_encoder(text_encoder)
            copy_model_dir(text_encoder, Path(out) / TEXT_ENCODER_DIR)
        spec = ConditionSpec(metadata=tuple(METADATA.items()), agents=8, text_dim=enc.dim if enc else 0,
                             mode=conditions, **(agent_map_spec() if agent_map else {}))
        cfg = replace(cfg, conditions=spec)
    elif conditions not in ("cross", "adaln", "none"):
        raise ConfigError(f"conditions must be cross, adaln or none, got {conditions!r}")
    train_cfg = train_cfg or TrainConfig(steps=4000, batch_size=16, lr=6e-4, warmup_steps=200,
                                         log_every=25, image_every=0)
    tokens = tokenize_split(Path(data), tokenizer_dir, "train", Path(out) / "tokens" / "train.npz", codec,
                            progress=progress, cameras=tuple(cameras))
    clips = SceneClips(tokens, cfg.context, cfg.condition_spec, enc) if cfg.conditions else TokenClips(tokens, cfg.context)
    prompts = Path(out) / PROMPTS
    if not prompts.exists():  # the bank imagination starts from (GAIA-1's video prompt)
        meta = clips.metadata.numpy() if isinstance(clips, SceneClips) else None
        PromptBank.from_token_file(tokens, context=cfg.context, n=64, seed=0, metadata=meta).save(prompts)
    model = WorldModel(cfg)
    if init is not None and not (Path(out) / "config.json").exists():
        fresh = warm_start(model, Path(init))
        if progress:
            print(f"warm start from {init}; fresh: {', '.join(fresh) or 'nothing'}")
    fps = EpisodeIndex(data, split="train").fps or 12.5
    record_training_sources(out, tokenizer_dir, codec, 1.0 / fps, data)  # OUT/tokenizer + OUT/sources.json
    return train(model, KIND, cfg, clips.sampler(train_cfg.batch_size), train_cfg, Path(out), progress=progress)
