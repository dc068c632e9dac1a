"""Tiny untrained bundles for tests and smoke runs: every code path in milliseconds, imagination is noise."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from gaia_gym.bundle import FLOW_WORLD_MODEL_KIND, PromptBank, WorldBundle
from gaia_gym.models.flow import build_flow_model
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.tokenizer import build_tokenizer
from gaia_gym.models.vae import build_vae
from gaia_gym.models.world_model import build_world_model
from gaia_gym.sims.rig import cameras_from_names


def tiny_bundle(seed: int = 0, prompts: int = 8, device: str | torch.device = "cpu", cameras: Sequence[str] = (),
                conditions: str | None = None) -> WorldBundle:
    """An untrained, tiny bundle (4x4 tokens, 16 codes, 32-wide transformer) for tests and smoke runs:
    it exercises every code path in milliseconds; its imagination is noise. `cameras`: names of
    `gaia_gym.sims.rig.CAMERAS` for a camera-rig model (frames (V, 64, 64, 3), tokens (V, 4, 4)).
    `conditions`: "cross" or "adaln" for a highway-style conditioned model (metadata, 8 agent boxes,
    16-wide text from a tiny untrained text encoder)."""
    from gaia_gym.models.tokenizer import TokenizerConfig
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModelConfig
    torch.manual_seed(seed)
    tok = build_tokenizer(TokenizerConfig(enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8), fsq_levels=(4, 4)))
    rig = tuple(c.row() for c in cameras_from_names(cameras))
    text = None
    cond = None
    if conditions:
        from gaia_gym.models.conditions import ConditionSpec
        from gaia_gym.models.text import HashTextEncoder, TextEncoderConfig
        from gaia_gym.sims.highway_scene import METADATA, agent_map_spec

        text = HashTextEncoder(TextEncoderConfig(buckets=256, width=16, dim=16)).eval()
        cond = ConditionSpec(metadata=tuple(METADATA.items()), agents=8, text_dim=16, mode=conditions,
                             **agent_map_spec())
    wm = build_world_model(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "code_levels": (4, 4), "cameras": rig,
                                               "conditions": cond}))
    g = torch.Generator().manual_seed(seed)
    C, L = wm.cfg.context, ((len(rig),) if rig else ()) + (4, 4)
    bank = PromptBank(torch.randint(0, 16, (prompts, C, *L), generator=g),
                      torch.rand(prompts, C, 2, generator=g) * 2 - 1,
                      torch.randint(0, 16, (prompts, 8, *L), generator=g), torch.rand(prompts, 8, 2, generator=g) * 2 - 1,
                      metadata=torch.randint(0, 3, (prompts, 3), generator=g) if conditions else None)
    return WorldBundle(wm.to(device).eval(), tok.to(device).eval(), bank, ActionCodec(), Path("<tiny>"),
                       text_encoder=text)


def tiny_flow_bundle(seed: int = 0, prompts: int = 8, device: str | torch.device = "cpu") -> WorldBundle:
    """An untrained, tiny flow bundle (4x4x4 latents, 32-wide transformer) for tests and smoke runs."""
    from gaia_gym.models.flow import FLOW_PRESETS, FlowConfig
    from gaia_gym.models.vae import VAE_PRESETS, VAEConfig

    torch.manual_seed(seed)
    vae = build_vae(VAEConfig(**VAE_PRESETS["tiny"]))
    wm = build_flow_model(FlowConfig(**FLOW_PRESETS["tiny"]))
    g = torch.Generator().manual_seed(seed)
    C, L = wm.cfg.context, wm.cfg.latent_shape
    bank = PromptBank(torch.randn(prompts, C, *L, generator=g), torch.rand(prompts, C, 2, generator=g) * 2 - 1,
                      torch.randn(prompts, 8, *L, generator=g), torch.rand(prompts, 8, 2, generator=g) * 2 - 1)
    return WorldBundle(wm.to(device).eval(), vae.to(device).eval(), bank, ActionCodec(), Path("<tiny-flow>"),
                       kind=FLOW_WORLD_MODEL_KIND)

