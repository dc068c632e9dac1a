"""A world model ready to drive: its kinds (`kinds`), the model directory (`directory`), the prompt bank
(`prompts`) and the loaded bundle with the one function that builds it (`loading.load_bundle`).

Nothing here imports training, evaluation or CLI code: those layers sit above this package.
"""

from gaia_gym.bundle.directory import (ASSETS, DEFAULT_FLOW_WORLD_MODEL, DEFAULT_STEP_SECONDS, DEFAULT_TOKENIZER,
                                       DEFAULT_WORLD_MODEL, FAST_WORLD_MODEL, HIGHWAY_WORLD_MODEL, PROMPTS,
                                       RIG_WORLD_MODEL, SOURCES, TEXT_ENCODER_DIR, TOKENIZER_DIR, Sources,
                                       copy_model_dir, load_text_encoder, load_tokenizer, load_world_model,
                                       record_training_sources, resolve_tokenizer, weights_sha256)
from gaia_gym.bundle.kinds import (FLOW_WORLD_MODEL_KIND, KINDS, TEXT_ENCODER_KIND, TOKENIZER_KIND, TOKENIZER_KINDS,
                                   VAE_KIND, WORLD_MODEL_KIND, Kind, kind_of, make_backend)
from gaia_gym.bundle.loading import WorldBundle, load_bundle, save_bundle
from gaia_gym.bundle.prompts import PromptBank, stored_latents

__all__ = ["ASSETS", "DEFAULT_FLOW_WORLD_MODEL", "DEFAULT_STEP_SECONDS", "DEFAULT_TOKENIZER", "DEFAULT_WORLD_MODEL",
           "FAST_WORLD_MODEL", "FLOW_WORLD_MODEL_KIND", "HIGHWAY_WORLD_MODEL", "KINDS", "Kind", "PROMPTS", "PromptBank",
           "RIG_WORLD_MODEL", "SOURCES", "Sources", "TEXT_ENCODER_DIR", "TEXT_ENCODER_KIND", "TOKENIZER_DIR",
           "TOKENIZER_KIND", "TOKENIZER_KINDS", "VAE_KIND", "WORLD_MODEL_KIND", "WorldBundle", "copy_model_dir",
           "kind_of", "load_bundle", "load_text_encoder", "load_tokenizer", "load_world_model", "make_backend",
           "record_training_sources", "resolve_tokenizer", "save_bundle", "stored_latents", "weights_sha256"]
