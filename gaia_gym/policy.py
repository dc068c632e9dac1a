"""Policies for GaiaDrive-v0 initialised from the world model (Stable-Baselines3).

`WorldModelExtractor` is an SB3 features extractor for the Dict observations of GaiaDrive-v0 (and of
`RealCarRacingEnv`, which has the same space) with the keys ``tokens`` and/or ``features``:

- ``tokens`` (g, g): the frame's token grid, embedded with the world model's OWN token embedding table
  (a copy of `WorldModel.tok_emb`): the grid is cut into patches exactly as the world model does
  (`patchify`), each patch embedded as the sum of its sub-tokens' embeddings (`embed_image`), and the
  patch embeddings mean-pooled over positions -> (d,) (or, with ``spatial=k``, each patch's embedding
  projected to k numbers and kept in place -> (P k,): a steering policy needs to know *where* the road
  is, which the mean discards). The agent starts from the world model's notion
  of which codes look alike instead of from random vectors;
- ``features`` (d,): the world model's hidden state, through a LayerNorm (its scale is arbitrary);

concatenated: ``features_dim`` = 2d with both keys, d with one.

``freeze_embedding=True`` (default) keeps the copied table fixed (``requires_grad=False``: the
optimizer sees no gradient for it, so it stays bit-identical to the world model's); ``False``
fine-tunes it with the policy.

**Orthogonal initialisation.** PPO/A2C (``ortho_init=True``, SB3's default) re-initialise the features
extractor with ``module.apply(init_weights)``, and ``ActorCriticPolicy.init_weights`` only touches
``nn.Linear`` and ``nn.Conv2d``. The copied table is kept an ``nn.Embedding`` (and the features' norm a
``nn.LayerNorm``), so the re-initialisation leaves the world model's values in place (tests check it).
Do not replace the table by a Linear layer over one-hot codes: ortho_init would overwrite it. Every
extractor holds its own copy (SAC builds three: actor, critic and target critic; the target is
Polyak-averaged over all its parameters, frozen ones included, so its copy may drift from the world
model's by float rounding, ~1e-8).

**Saving and loading.** SB3 stores ``policy_kwargs`` in the agent's zip and rebuilds the policy from
them when loading, so the extractor reads the world model named there again (the table is then
overwritten by the saved weights anyway). `load_agent` loads a PPO or SAC zip and can point it at a
world model that moved (``world_model=``).

    from stable_baselines3 import PPO
    from gaia_gym.envs import GaiaDriveVecEnv
    from gaia_gym.policy import policy_kwargs
    venv = GaiaDriveVecEnv(num_envs=16, obs_mode="tokens+features", horizon=50)
    PPO("MultiInputPolicy", venv, policy_kwargs=policy_kwargs()).learn(100_000)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from gaia_gym.errors import ConfigError, MissingFileError

EXTRACTOR_KEYS = ("tokens", "latents", "features")


@functools.lru_cache(maxsize=4)
def _world_model_table(path: str | None) -> tuple[torch.Tensor, int, int]:
    """(tok_emb weight (S*vocab, d) on CPU, patch, vocab) of the world model at `path` (None: shipped).
    Cached: SAC builds an actor, a critic and a target critic, each with its own extractor."""
    from gaia_gym.errors import ModelFileError
    from gaia_gym.bundle import DEFAULT_WORLD_MODEL, load_world_model

    p = Path(path) if path is not None else DEFAULT_WORLD_MODEL
    if not p.is_dir():
        raise ModelFileError(f"{p}: no such world-model directory")
    wm = load_world_model(p)
    return wm.tok_emb.weight.detach().cpu().clone(), wm.cfg.patch, wm.cfg.vocab


@functools.lru_cache(maxsize=4)
def _flow_input(path: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(input projection weight (d, C p^2), its bias (d,), spatial positions (P, d), patch) of the flow
    world model at `path` (None: the shipped flow model)."""
    from gaia_gym.bundle import DEFAULT_FLOW_WORLD_MODEL, FLOW_WORLD_MODEL_KIND, load_world_model
    from gaia_gym.errors import ModelFileError

    p = Path(path) if path is not None else DEFAULT_FLOW_WORLD_MODEL
    if not p.is_dir():
        raise ModelFileError(f"{p}: no such world-model directory")
    wm = load_world_model(p, kind=FLOW_WORLD_MODEL_KIND)
    return (wm.inp.weight.detach().cpu().clone(), wm.inp.bias.detach().cpu().clone(), wm.pos_emb.detach().cpu().clone(),
            wm.cfg.patch)


class WorldModelExtractor(BaseFeaturesExtractor):
    """Tokens embedded with the world model's token table (mean-pooled), or float latents projected with
    the flow world model's own input layer (mean-pooled), + LayerNorm'd hidden features.

    Args:
        observation_space: a Dict space with ``tokens`` (g, g) or ``latents`` (C, h, w), and/or
            ``features`` (d,) (no other key).
        world_model: world-model directory to copy the table from (None: the shipped model); ignored
            when ``embedding`` is given.
        embedding: the table itself, (patch**2 * vocab, d) (for tests), with ``patch`` and ``vocab``.
        freeze_embedding: keep the table fixed (True) or fine-tune it (False).
    """

    def __init__(self, observation_space: spaces.Dict, world_model: str | Path | None = None,
                 embedding: torch.Tensor | None = None, patch: int | None = None, vocab: int | None = None,
                 freeze_embedding: bool = True, spatial: int = 0) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise ConfigError(f"WorldModelExtractor needs a Dict observation space, got {observation_space}")
        keys = tuple(observation_space.spaces)
        extra = [k for k in keys if k not in EXTRACTOR_KEYS]
        if extra or not keys:
            raise ConfigError(f"WorldModelExtractor reads the keys 'tokens' or 'latents', and/or 'features'; the "
                             f"observation has {list(keys)} (use obs_mode='tokens+features')")
        self.keys = tuple(k for k in EXTRACTOR_KEYS if k in keys)
        table = None
        if "tokens" in self.keys:
            if embedding is None:
                table, patch, vocab = _world_model_table(None if world_model is None else str(world_model))
            else:
                if patch is None or vocab is None:
                    raise ConfigError("WorldModelExtractor: pass patch and vocab with embedding")
                table = torch.as_tensor(embedding).detach().float().cpu()
            grid = observation_space["tokens"].shape[-1]
            if table.dim() != 2 or table.shape[0] != patch * patch * vocab or grid % patch:
                raise ConfigError(f"the token table {tuple(table.shape)} does not fit patch {patch}, vocab {vocab}, "
                                 f"grid {grid}: is it the world model these observations come from?")
            if int(observation_space["tokens"].high.max()) >= vocab:
                raise ConfigError(f"observation tokens go up to {int(observation_space['tokens'].high.max())}, "
                                 f"the world model's vocabulary has {vocab} codes")
        proj = None
        if "latents" in self.keys:
            w, b, pos, lp = _flow_input(None if world_model is None else str(world_model))
            c, g = observation_space["latents"].shape[0], observation_space["latents"].shape[-1]
            if w.shape[1] != c * lp * lp or pos.shape[0] != (g // lp) ** 2:
                raise ConfigError(f"the flow model's input layer {tuple(w.shape)} does not fit latents "
                                  f"{observation_space['latents'].shape}: is it the model these observations come from?")
            proj = (w, b, pos, lp)
        if spatial < 0 or (spatial and table is None):
            raise ConfigError(f"spatial={spatial}: a per-position token projection needs the 'tokens' key and a "
                              "width >= 1 (0: mean-pool)")
        n_pos = 0 if table is None else (observation_space["tokens"].shape[-1] // patch) ** 2
        d_tok = 0 if table is None else (spatial * n_pos if spatial else table.shape[1])
        d_tok += 0 if proj is None else proj[0].shape[0]
        d_feat = int(observation_space["features"].shape[0]) if "features" in self.keys else 0
        super().__init__(observation_space, features_dim=d_tok + d_feat)
        self.freeze_embedding = bool(freeze_embedding)
        if table is not None:
            self.patch, self.vocab = int(patch), int(vocab)
            # an nn.Embedding, never a Linear: SB3's ortho_init only re-initialises Linear/Conv2d. Its own
            # copy (from_pretrained shares storage): SAC's target critic is Polyak-averaged in place
            self.embedding = nn.Embedding.from_pretrained(table.clone(), freeze=self.freeze_embedding)
            self.register_buffer("offset", torch.arange(self.patch**2) * self.vocab, persistent=False)
        if proj is not None:  # plain Parameters, not a Linear (SB3's ortho_init would re-initialise it)
            need = not self.freeze_embedding
            self.lat_w, self.lat_b, self.lat_pos = (nn.Parameter(t.clone(), requires_grad=need) for t in proj[:3])
            self.lat_patch = int(proj[3])
        if d_feat:
            self.norm = nn.LayerNorm(d_feat)
        self.spatial = int(spatial)
        if self.spatial:  # each patch's embedding projected to `spatial` numbers, kept in place (not pooled)
            self.spatial_proj = nn.Linear(table.shape[1], self.spatial)

    def embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float latents -> (B, d): the flow model's token projection, mean-pooled."""
        p = self.lat_patch
        t = rearrange(latents.float(), "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
        return (F.linear(t, self.lat_w, self.lat_b) + self.lat_pos).mean(1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, g, g) token grid (any dtype: SB3 hands Box observations over as floats) -> (B, d)."""
        t = tokens.round().long().clamp_(0, self.vocab - 1)
        B, g, p = t.shape[0], t.shape[-1], self.patch
        # (B, g, g) -> (B, P, S), as WorldModel.patchify: "b (h p1) (w p2) -> b (h w) (p1 p2)"
        t = t.reshape(B, g // p, p, g // p, p).permute(0, 1, 3, 2, 4).reshape(B, (g // p) ** 2, p * p)
        e = self.embedding(t + self.offset).sum(-2)  # (B, P, d)
        if self.spatial:
            return torch.relu(self.spatial_proj(e)).flatten(1)  # (B, P * spatial): where things are survives
        return e.mean(-2)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        out = []
        if "tokens" in self.keys:
            out.append(self.embed_tokens(observations["tokens"]))
        if "latents" in self.keys:
            out.append(self.embed_latents(observations["latents"]))
        if "features" in self.keys:
            out.append(self.norm(observations["features"].float()))
        return torch.cat(out, dim=-1)


def policy_kwargs(world_model: str | Path | None = None, freeze: bool = True,
                  net_arch: list[int] | dict[str, list[int]] | None = (256, 256), spatial: int = 0,
                  **extra: Any) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for a "MultiInputPolicy" (PPO, SAC, ...) using `WorldModelExtractor`.

    ``world_model``: the world-model directory whose token table is copied (None: the shipped model;
    kept as given, a string, so that saved agents name it); ``freeze``: keep the table fixed;
    ``net_arch``: SB3's hidden layers after the extractor; ``spatial``: project each token patch's
    embedding to this many numbers and keep them per position (0: mean-pool over positions, which
    loses where things are in the frame); ``extra``: more policy kwargs.
    """
    kw: dict[str, Any] = {"world_model": None if world_model is None else str(world_model),
                          "freeze_embedding": bool(freeze)}
    if spatial:
        kw["spatial"] = int(spatial)
    out: dict[str, Any] = {"features_extractor_class": WorldModelExtractor, "features_extractor_kwargs": kw}
    if net_arch is not None:
        out["net_arch"] = dict(net_arch) if isinstance(net_arch, dict) else list(net_arch)
    return {**out, **extra}


ALGOS = ("ppo", "sac")


def algo_class(name: str):
    """The SB3 algorithm class for "ppo" / "sac"."""
    from stable_baselines3 import PPO, SAC

    classes = {"ppo": PPO, "sac": SAC}
    if name not in classes:
        raise ConfigError(f"unknown algorithm {name!r}: choose from {', '.join(ALGOS)}")
    return classes[name]


def agent_algo(path: str | Path) -> str:
    """"ppo" or "sac": which algorithm saved the zip at `path` (read from its stored policy class)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(path, load_data=True, device="cpu", custom_objects=None)
    module = getattr(data.get("policy_class"), "__module__", "")
    # SAC's policies live in stable_baselines3.sac; PPO's MultiInputPolicy is stable_baselines3.common's
    return "sac" if ".sac." in f".{module}." else "ppo"


def load_agent(path: str | Path, env=None, device: str = "auto", world_model: str | Path | None = None,
               **kwargs: Any):
    """Load a PPO or SAC agent saved by SB3 (the algorithm is read from the zip); "shipped" loads the
    agent shipped in the package (`SHIPPED_AGENT`).

    ``world_model``: a world-model directory to take the token table from instead of the one named in
    the agent's policy_kwargs (when it moved; the trained table in the zip is loaded over it anyway).
    A missing file raises FileNotFoundError with a one-line message.
    """
    from stable_baselines3.common.save_util import load_from_zip_file

    p = resolve_agent_path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: no such policy file (an SB3 .zip saved by agents/train_imagination.py)")
    try:
        algo = agent_algo(p)
    except Exception as e:  # not a zip, or not an SB3 one
        raise ConfigError(f"{p}: not an SB3 agent zip ({type(e).__name__}: {e})") from None
    custom = None
    if world_model is not None:
        data, _, _ = load_from_zip_file(p, load_data=True, device="cpu")
        pk = dict(data.get("policy_kwargs", {}))
        fk = dict(pk.get("features_extractor_kwargs", {}))
        fk["world_model"] = str(world_model)
        custom = {"policy_kwargs": {**pk, "features_extractor_kwargs": fk}}
    return algo_class(algo).load(p, env=env, device=device, custom_objects=custom, **kwargs)


# ---------------------------------------------------------------------------------------------
# the agent's action range
# ---------------------------------------------------------------------------------------------
class ActionRange:
    """Maps the agent's actions u in [-1, 1]^2 linearly onto [low, high] of the env's [steering, speed].

    A world model is only right about actions its data contains: CarRacing's logged drives command
    speed actions up to ~0.5 (95th percentile; 0.82 at most), and an agent free to ask for +1 (100 m/s)
    learns where the model extrapolates. Training in imagination therefore narrows the speed range
    (`--speed-max`); the range is stored on the saved agent (``agent.gaia_action_range``) so that the
    real-simulator evaluator applies the same mapping."""

    def __init__(self, low=(-1.0, -1.0), high=(1.0, 1.0)) -> None:
        import numpy as np

        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if self.low.shape != (2,) or self.high.shape != (2,) or not (self.low < self.high).all() or (
                self.low < -1).any() or (self.high > 1).any():
            raise ConfigError(f"action range must be 2 lows below 2 highs within [-1, 1], got {low} .. {high}")

    def __call__(self, u):
        import numpy as np

        u = np.clip(np.asarray(u, np.float32), -1.0, 1.0)
        return self.low + (u + 1.0) / 2.0 * (self.high - self.low)

    def as_dict(self) -> dict[str, list[float]]:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def of_agent(cls, agent) -> "ActionRange":
        """The range an agent was trained with (the identity for agents saved without one)."""
        r = getattr(agent, "gaia_action_range", None)
        return cls(**r) if r else cls()


def agent_actor(agent, deterministic: bool = True):
    """obs -> action of an SB3 agent, mapped through the action range it was trained with
    (`ActionRange.of_agent`); batched or not, as `agent.predict` takes it."""
    rng = ActionRange.of_agent(agent)
    return lambda obs: rng(agent.predict(obs, deterministic=deterministic)[0])


def ranged_vec_env(venv, action_range: ActionRange):
    """An SB3 VecEnv wrapper applying `action_range` to the agent's actions before `venv` sees them."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class _Ranged(VecEnvWrapper):
        def reset(self):
            return self.venv.reset()

        def step_async(self, actions) -> None:
            self.venv.step_async(action_range(actions))

        def step_wait(self):
            return self.venv.step_wait()

    return _Ranged(venv)


# ---------------------------------------------------------------------------------------------
# the shipped agent
# ---------------------------------------------------------------------------------------------
SHIPPED_AGENT = Path(__file__).resolve().parent / "assets" / "agents" / "driver.zip"


def resolve_agent_path(policy: str | Path) -> Path:
    """"shipped" -> the agent shipped in the package; anything else is a path."""
    return SHIPPED_AGENT if str(policy) == "shipped" else Path(policy)


def export_agent(src: str | Path, dst: str | Path = SHIPPED_AGENT) -> Path:
    """Copy an agent zip without its optimizer state (to ship it: about a third smaller; it still loads
    and acts the same, and training can restart from it with a fresh optimizer), atomically."""
    from gaia_gym.fileio import atomic_write_bytes

    agent = load_agent(src, device="cpu")
    opt = agent.policy.optimizer
    agent.policy.optimizer = type(opt)(agent.policy.parameters(), **opt.defaults)  # same settings, no moments
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, lambda f: agent.save(f))
    return dst
