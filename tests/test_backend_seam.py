"""The backend seam: a continuous-latent world model (float latents, GAIA-2 style) plugs into the engine,
the Gymnasium env, the SB3 VecEnv and the planner through `gaia_gym.backends.Backend` alone, with no change
to any of them. The toy backend below is not a world model worth using; it only exercises the interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gaia_gym.backends import Backend
from gaia_gym.bundle import PromptBank, WorldBundle
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination
from gaia_gym.models.layout import ActionCodec

LATENT = (2, 4, 4)  # channels x height x width: a continuous latent per frame


class RowState:
    """Memory: one running summary vector per row."""

    def __init__(self, h: torch.Tensor) -> None:
        self.h = h

    def clone(self) -> "RowState":
        return RowState(self.h.clone())

    def select(self, index: torch.Tensor) -> "RowState":
        return RowState(self.h[index].clone())

    def assign_rows(self, rows: torch.Tensor, other: "RowState") -> None:
        self.h[rows] = other.h


class ToyFlowBackend(nn.Module):
    """Float latents; the next latent is the current one moved by the action, plus seeded noise."""

    latent_key = "latents"
    latent_shape = LATENT
    latent_dtype = torch.float32
    latent_range = (-np.inf, np.inf)
    feature_dim = 8
    action_dim = 2
    frame_size = 16
    frame_shape = (16, 16, 3)
    cameras = ()
    window = 4

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(int(np.prod(LATENT)) + 2, 8)

    @property
    def device(self) -> torch.device:
        return self.mix.weight.device

    def sampler(self, temperature: float, top_k: int, generator: torch.Generator):
        return lambda shape: temperature * torch.randn(shape, generator=generator, device=generator.device)

    def start(self, latents, actions, start_block):
        h = self.mix(torch.cat([latents[:, -1].flatten(1), actions[:, -1]], 1))
        return RowState(h), h

    def step(self, memory, block, current, actions, sampler, guidance=1.0):
        h = torch.tanh(memory.h + self.mix(torch.cat([current.flatten(1), actions], 1)))
        memory.h = h
        nxt = current + 0.1 * actions[:, :1, None, None] + (0 if sampler is None else 0.01 * sampler(current.shape))
        return nxt, h, h.mean(1), h[:, 0] - 5.0

    def reward_spread(self, features):
        return features.std(1)

    def encode(self, frames):
        x = frames.float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
        return nn.functional.adaptive_avg_pool2d(x, 4).repeat(1, 2, 1, 1)

    def decode(self, latents):
        x = nn.functional.interpolate(latents[:, :1], size=16).clamp(0, 1) * 255
        return x.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).to(torch.uint8)


@pytest.fixture(scope="module")
def flow_bundle() -> WorldBundle:
    backend = ToyFlowBackend().eval()
    assert isinstance(backend, Backend)
    g = torch.Generator().manual_seed(0)
    bank = PromptBank(torch.rand(6, 4, *LATENT, generator=g), torch.rand(6, 4, 2, generator=g) * 2 - 1)
    b = WorldBundle(backend, backend, bank, ActionCodec(), Path("<toy flow>"), kind="toy_flow")
    b._backend = backend
    return b


def test_engine_runs_a_continuous_backend(flow_bundle):
    eng = Imagination(flow_bundle, n=3, seed=0)
    lat, feat = eng.reset()
    assert lat.dtype == torch.float32 and lat.shape == (3, *LATENT) and feat.shape == (3, 8)
    out = eng.step(torch.zeros(3, 2))
    assert out.latents.shape == (3, *LATENT) and eng.frames().shape == (3, 16, 16, 3)
    eng.branch(0, 4)
    assert eng.n == 4


def test_gymnasium_env_over_a_continuous_backend_passes_the_checker(flow_bundle):
    from gymnasium.utils.env_checker import check_env

    from gaia_gym.envs import GaiaDriveEnv

    env = GaiaDriveEnv(bundle=flow_bundle, horizon=10)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"latents", "frame", "features"} and obs["latents"].dtype == np.float32
    with pytest.raises(ConfigError, match="'latents', not 'tokens'"):
        GaiaDriveEnv(bundle=flow_bundle, obs_mode="tokens")


def test_sb3_vecenv_and_planner_over_a_continuous_backend(flow_bundle):
    from gaia_gym.envs import GaiaDriveVecEnv
    from gaia_gym.rl.planner import Planner, PlannerConfig

    venv = GaiaDriveVecEnv(num_envs=2, bundle=flow_bundle, obs_mode="latents+features", horizon=5)
    obs = venv.reset()
    obs, rew, done, info = venv.step(np.zeros((2, 2), np.float32))
    assert obs["latents"].shape == (2, *LATENT) and rew.shape == (2,)
    planner = Planner(flow_bundle, PlannerConfig(candidates=4, horizon=2, samples=1, iterations=1, elites=2))
    eng = Imagination(flow_bundle, n=1, seed=0)
    eng.reset()
    a = planner.plan(eng.state())
    assert a.shape == (2,) and bool(torch.isfinite(a).all())
