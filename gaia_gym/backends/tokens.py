"""The discrete backend (GAIA-1): image tokens from the FSQ/VQ tokenizer, an autoregressive-in-time
transformer over image + action tokens, a KV cache as memory.

    backend = TokenBackend(world_model, tokenizer)     # built from the two components
    backend = TokenBackend(world_model, tokenizer, int8=True)  # Linear layers in int8 (CPU, opt-in)
    memory, features = backend.start(tokens (n, C, g, g), actions (n, C, 2), start_block=0)
    nxt, features, reward, end_logit = backend.step(memory, C - 1, tokens[:, -1], actions[:, -1], sampler)

Conventions (the world model's): block t = [tokens of frame t][a_t]; `start` feeds every context block
but the last (fed by the first `step`, with its action), so `step(memory, block=t, current=frame t, a_t)`
returns frame t+1.
"""

from __future__ import annotations

import torch

from gaia_gym.errors import ConfigError
from gaia_gym.models.tokenizer import Tokenizer
from gaia_gym.models.world_model import DEFAULT_TOP_K, KVCache, WorldModel, make_sampler, reward_spread
from gaia_gym.precision import int8_linears


def _skip_sampling(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)


class TokenBackend:
    """`gaia_gym.backends.Backend` over a discrete-token `WorldModel` and its `Tokenizer`."""

    latent_key = "tokens"
    default_top_k = DEFAULT_TOP_K

    def __init__(self, world_model: WorldModel, tokenizer: Tokenizer, int8: bool = False) -> None:
        tc, wc = tokenizer.cfg, world_model.cfg
        if tc.grid != wc.grid or tc.vocab_size != wc.vocab:
            raise ConfigError(f"the tokenizer ({tc.grid}x{tc.grid} tokens, {tc.vocab_size} codes) does not fit the "
                              f"world model ({wc.grid}x{wc.grid}, {wc.vocab} codes)")
        self.world_model = int8_linears(world_model) if int8 else world_model.eval()
        self.int8 = bool(int8)
        self.tokenizer = tokenizer.eval()
        self.cameras = wc.cameras  # () or one (name, yaw_deg, anchor_x, anchor_y) per view
        rig = (wc.views,) if wc.cameras else ()
        self.latent_shape = (*rig, wc.grid, wc.grid)
        self.latent_dtype = torch.int64
        self.latent_range = (0, wc.vocab - 1)
        self.feature_dim = wc.d_model
        self.action_dim = wc.action_dim
        self.frame_size = tc.frame_size
        self.frame_shape = (*rig, tc.frame_size, tc.frame_size, 3)
        self.window = wc.context
        self.conditions = wc.condition_spec  # ConditionSpec of the scene conditions, or None

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    def sampler(self, temperature: float, top_k: int, generator: torch.Generator):
        """Top-k sampling at `temperature` (0: greedy) with `generator`."""
        return make_sampler(temperature, top_k, generator)

    def start(self, latents: torch.Tensor, actions: torch.Tensor, start_block: int, cond=None,
              hidden=None) -> tuple[KVCache, torch.Tensor]:
        cache = KVCache()
        features = self.world_model.prefill(cache, latents.long(), actions.float(), start_block=start_block,
                                            cond=cond, hidden=hidden)
        return cache, features

    def step(self, memory: KVCache, block: int, current: torch.Tensor, actions: torch.Tensor, sampler,
             guidance: float = 1.0, **scene):
        sample = _skip_sampling if sampler is None else sampler
        return self.world_model.step(memory, block, current, actions, sample, guidance=guidance, **scene)

    @torch.no_grad()
    def reward_spread(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) features of a step -> (n,) the reward head's predictive standard deviation."""
        return reward_spread(self.world_model.reward_logits(features), self.world_model.bins)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, *frame_shape) uint8 -> (n, *latent_shape); a rig's views are encoded one by one (shared weights)."""
        if not self.cameras:
            return self.tokenizer.encode(frames)
        n = frames.shape[0]
        return self.tokenizer.encode(frames.reshape(-1, *frames.shape[-3:])).reshape(n, *self.latent_shape)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.cameras:
            return self.tokenizer.decode(latents)
        n = latents.shape[0]
        return self.tokenizer.decode(latents.reshape(-1, *latents.shape[-2:])).reshape(n, *self.frame_shape)


__all__ = ["TokenBackend"]
