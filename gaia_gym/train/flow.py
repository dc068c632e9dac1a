"""The flow world-model stage (`gaia-gym train flow-world-model`): encode a dataset with a trained VAE,
then train the flow-matching world model (`gaia_gym.models.flow`) on latent clips.

Latents are stored as float16 in OUT/tokens/train.npz (1,024 floats per frame: 2 KB; 200k frames are
400 MB), held in memory, and clips are drawn uniformly over every valid (episode, start) pair. OUT becomes
a model directory like the discrete one: weights + config (kind "flow_world_model"), prompts.npz,
sources.json and the VAE copied into OUT/tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from gaia_gym.bundle import FLOW_WORLD_MODEL_KIND, PROMPTS, VAE_KIND, PromptBank, record_training_sources
from gaia_gym.checkpoint import read_model_info
from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.errors import ConfigError
from gaia_gym.models.flow import FLOW_PRESETS, FlowConfig, FlowWorldModel
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.vae import vae_config_from_dict
from gaia_gym.train.world_model import TokenClips, tokenize_split

KIND = FLOW_WORLD_MODEL_KIND


def flow_config(preset: str = "default", **overrides) -> FlowConfig:
    if preset not in FLOW_PRESETS:
        raise ConfigError(f"unknown flow world-model preset {preset!r}; choose from {', '.join(FLOW_PRESETS)}")
    return FlowConfig(**{**FLOW_PRESETS[preset], **overrides})


def train_flow_world_model(data: Path, vae_dir: Path, out: Path, preset: str = "default", train_cfg=None,
                           progress: bool = True, **overrides) -> dict:
    """Encode `data` with the VAE in `vae_dir` (cached in OUT/tokens) and train (or resume) a flow world
    model into `out`."""
    from gaia_gym.train.loop import TrainConfig, train

    vae_dir = Path(vae_dir)
    info = read_model_info(vae_dir)
    if info.get("kind") != VAE_KIND:
        raise ConfigError(f"{vae_dir} is a {info.get('kind')} file, expected a vae (gaia-gym train vae)")
    vcfg = vae_config_from_dict(info["config"])
    cfg = flow_config(preset, **{"latent_channels": vcfg.latent_channels, "grid": vcfg.grid, **overrides})
    codec = ActionCodec()
    train_cfg = train_cfg or TrainConfig(steps=3000, batch_size=16, lr=5e-4, warmup_steps=100,
                                         log_every=25, image_every=0)
    latents = tokenize_split(Path(data), vae_dir, "train", Path(out) / "tokens" / "train.npz", codec,
                             progress=progress)
    clips = TokenClips(latents, cfg.context, key="latents")
    prompts = Path(out) / PROMPTS
    if not prompts.exists():
        PromptBank.from_token_file(latents, context=cfg.context, n=64, seed=0).save(prompts)
    model = FlowWorldModel(cfg)
    fps = EpisodeIndex(data, split="train").fps or 12.5
    record_training_sources(out, vae_dir, codec, 1.0 / fps, data)
    return train(model, KIND, cfg, clips.sampler(train_cfg.batch_size), train_cfg, Path(out), progress=progress)


__all__ = ["flow_config", "train_flow_world_model"]
