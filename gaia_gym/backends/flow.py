"""The continuous backend (GAIA-2): float latents from the VAE, a flow-matching space-time transformer,
the clean context frames' keys/values as memory.

    backend = FlowBackend(flow_model, vae, steps=2)     # 2 sampling steps per imagined frame
    memory, features = backend.start(latents (n, C, c, h, w), actions (n, C, 2), start_block=0)
    nxt, features, reward, end_logit = backend.step(memory, C - 1, latents[:, -1], actions[:, -1], sampler)

Conventions are the discrete backend's (block t = frame t with a_t; `step(memory, t, frame t, a_t)`
returns frame t+1). Sampling: the sampler draws the starting noise, scaled by the temperature (0: zero
noise, a deterministic prediction; with one step it is the model's mean prediction of the next frame);
`top_k` has no meaning here and is ignored. `steps` and `plain` default to the model's config
(`sampling_steps`, `sampling_embedding`). Latents have unit global scale (the VAE's normalisation);
generated ones are clipped to +-LATENT_BOUND, the observation space's bounds. `steps` (1, 2, 4, ...) trades speed for quality; `plain=True`
integrates with the flow-matching step embedding instead of the shortcut's (the comparison of
`gaia-gym eval world-model --sampling-steps`).
"""

from __future__ import annotations

import torch

from gaia_gym.errors import ConfigError
from gaia_gym.models.flow import FlowMemory, FlowWorldModel, check_steps
from gaia_gym.models.vae import VAE
from gaia_gym.models.world_model import reward_spread
from gaia_gym.precision import int8_linears


LATENT_BOUND = 20.0  # |latent| in units of the VAE's global latent std


class FlowSampler:
    """Starting noise for the next frame: temperature * N(0, 1), drawn with the engine's generator."""

    def __init__(self, temperature: float, generator: torch.Generator) -> None:
        self.temperature, self.generator = float(temperature), generator

    def noise(self, shape, device) -> torch.Tensor:
        if self.temperature <= 0:
            return torch.zeros(shape, device=device)
        return self.temperature * torch.randn(shape, generator=self.generator, device=device)


class FlowBackend:
    """`gaia_gym.backends.Backend` over a `FlowWorldModel` and its `VAE`."""

    latent_key = "latents"
    default_top_k = 0  # a flow model samples no codes: top_k does not apply
    latent_dtype = torch.float32
    latent_range = (-LATENT_BOUND, LATENT_BOUND)  # latents have unit global scale; generated ones are clipped here

    def __init__(self, world_model: FlowWorldModel, vae: VAE, steps: int | None = None, plain: bool | None = None,
                 int8: bool = False) -> None:
        wc, vc = world_model.cfg, vae.cfg
        if tuple(vc.latent_shape) != tuple(wc.latent_shape):
            raise ConfigError(f"the VAE's latents {vc.latent_shape} do not fit the flow world model's {wc.latent_shape}")
        self.world_model = int8_linears(world_model) if int8 else world_model.eval()
        self.int8 = bool(int8)
        self.tokenizer = vae.eval()
        self.latent_shape = tuple(wc.latent_shape)
        self.feature_dim = wc.d_model
        self.action_dim = wc.action_dim
        self.frame_size = vc.frame_size
        self.frame_shape = (vc.frame_size, vc.frame_size, 3)
        self.cameras = ()  # one camera (the rig is built on the discrete backend)
        self.window = wc.context
        self.steps = check_steps(wc.sampling_steps if steps is None else steps, wc)
        self.plain = (wc.sampling_embedding == "flow") if plain is None else bool(plain)

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    def sampler(self, temperature: float, top_k: int, generator: torch.Generator) -> FlowSampler:
        return FlowSampler(temperature, generator)

    def start(self, latents: torch.Tensor, actions: torch.Tensor, start_block: int) -> tuple[FlowMemory, torch.Tensor]:
        memory = FlowMemory(capacity=self.world_model.window + 10)  # compacted once every ~9 steps
        feats = self.world_model.prefill(memory, latents.float(), actions.float(), start_block=start_block)
        return memory, feats

    def step(self, memory: FlowMemory, block: int, current: torch.Tensor, actions: torch.Tensor, sampler,
             guidance: float = 1.0):
        noise = None if sampler is None else sampler.noise(current.shape, current.device)
        nxt, feats, reward, end = self.world_model.step(memory, block, current.float(), actions, noise, self.steps,
                                                        guidance=guidance, plain=self.plain)
        if nxt is None:
            nxt = torch.zeros_like(current, dtype=torch.float32)
        return nxt.float().clamp_(-LATENT_BOUND, LATENT_BOUND), feats, reward, end

    @torch.no_grad()
    def reward_spread(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) features of a step -> (n,) the reward head's predictive standard deviation."""
        return reward_spread(self.world_model.reward_logits(features), self.world_model.bins)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(latents.float())

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, *L) -> (B, T, H, W, 3): each frame decoded with the ones before it (no flicker)."""
        return self.tokenizer.decode_video(latents.float())


__all__ = ["FlowBackend", "FlowSampler"]
