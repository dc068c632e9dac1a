"""World-model kinds: how each kind (config.json's "kind") is rebuilt and which backend the engine
talks to. "world_model" is the discrete GAIA-1 design (tokens from an image tokenizer); "flow_world_model"
the continuous GAIA-2 design (latents from a VAE; `gaia_gym.models.flow`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gaia_gym.backends import Backend
from gaia_gym.backends.flow import FlowBackend
from gaia_gym.backends.tokens import TokenBackend
from gaia_gym.errors import ConfigError
from gaia_gym.models.flow import FlowConfig, FlowWorldModel, build_flow_model
from gaia_gym.models.tokenizer import TokenizerConfig, build_tokenizer
from gaia_gym.models.vae import VAEConfig, build_vae
from gaia_gym.models.world_model import WorldModel, WorldModelConfig, build_world_model

TOKENIZER_KIND = "tokenizer"
VAE_KIND = "vae"
WORLD_MODEL_KIND = "world_model"
FLOW_WORLD_MODEL_KIND = "flow_world_model"
TEXT_ENCODER_KIND = "text_encoder"


@dataclass(frozen=True)
class Kind:
    """How a world-model kind is rebuilt and driven: its builder, its tokenizer's kind and builder, and
    the backend (the engine's seam) over the two."""

    build: Callable
    tokenizer_kind: str
    build_tokenizer: Callable
    backend: Callable[..., Backend]
    model_class: type
    config: type  # the world model's config dataclass (config.json is checked against it)
    tokenizer_config: type


# model kind (config.json "kind") -> how it loads and how the engine talks to it (the backend seam)
KINDS: dict[str, Kind] = {
    WORLD_MODEL_KIND: Kind(build_world_model, TOKENIZER_KIND, build_tokenizer, TokenBackend, WorldModel,
                           WorldModelConfig, TokenizerConfig),
    FLOW_WORLD_MODEL_KIND: Kind(build_flow_model, VAE_KIND, build_vae, FlowBackend, FlowWorldModel, FlowConfig,
                                VAEConfig),
}
TOKENIZER_KINDS = {v.tokenizer_kind: v.build_tokenizer for v in KINDS.values()}
TOKENIZER_CONFIGS = {v.tokenizer_kind: v.tokenizer_config for v in KINDS.values()}


def kind_of(world_model) -> str:
    """The kind string of a world-model instance ("world_model" or "flow_world_model")."""
    for name, k in KINDS.items():
        if isinstance(world_model, k.model_class):
            return name
    raise ConfigError(f"{type(world_model).__name__} is not a gaia_gym world model")


def make_backend(world_model, tokenizer, **options) -> Backend:
    """The engine's backend over a world model and its tokenizer, whichever kind they are (`options`:
    the backend's own, e.g. ``steps=4`` for a flow model)."""
    return KINDS[kind_of(world_model)].backend(world_model, tokenizer, **options)

