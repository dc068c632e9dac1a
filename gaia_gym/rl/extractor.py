"""The SB3 features extractor that reads GaiaDrive-v0's observations with the world model's own layers.

`WorldModelExtractor` is an SB3 features extractor for the Dict observations of GaiaDrive-v0 (and of
`RealCarRacingEnv`, which has the same space) with the keys ``tokens`` or ``latents``, and/or ``features``:

- ``tokens`` (g, g): the frame's token grid, embedded exactly as the world model embeds it: cut into
  patches (`WorldModel.patchify`), each patch the sum of its sub-tokens' rows of a copy of the model's
  table (`WorldModel.embed_image`: one row per (sub-position, code) for a "codes" model, per
  (sub-position, FSQ digit value) for a "digits" model), mean-pooled over positions -> (d,) (or, with
  ``spatial=k``, each patch projected to k numbers and kept in place -> (P k,): a steering policy needs
  to know *where* the road is, which the mean discards);
- ``latents`` (C, h, w): a flow model's float latents through its own input projection, mean-pooled;
- ``features`` (d,): the world model's hidden state, through a LayerNorm (its scale is arbitrary).

**Where the tables come from.** SB3 pickles ``policy_kwargs`` into the agent zip and rebuilds the policy
from them, so they hold only small, path-free things: the table's shape, the patch, the code levels and
the world model's weights sha256 (`world_model_sha`). `policy_kwargs(bundle)` copies the model's tables
into a per-process cache keyed by that sha, and every extractor built in this process (SAC builds three)
starts from them; an agent loaded from a zip starts from zeros of the recorded shape, and its state_dict
(which carries the frozen tables) fills them in.

**Orthogonal initialisation.** PPO/A2C (``ortho_init=True``) re-initialise the extractor with
``module.apply(init_weights)``, which only touches ``nn.Linear`` and ``nn.Conv2d``: the table is kept an
``nn.Embedding`` (the flow projection plain Parameters), so the world model's values stay in place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from gaia_gym.errors import ConfigError

EXTRACTOR_KEYS = ("tokens", "latents", "features")


@dataclass(frozen=True)
class Tables:
    """The world-model layers an extractor copies: the token table (codes or digits) or the flow input."""

    sha: str
    table: torch.Tensor | None = None  # (S * rows_per_sub, d)
    patch: int = 0
    vocab: int = 0
    code_levels: tuple[int, ...] = ()  # non-empty: the "digits" embedding
    flow: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None  # (weight, bias, positions, patch)
    observation_sha: str | None = None  # `world_model_sha(model, heads=False)`

    def shapes(self) -> dict[str, Any]:
        """The small, path-free description stored in policy_kwargs."""
        out: dict[str, Any] = {"world_model_sha": self.sha, "observation_sha": self.observation_sha}
        if self.table is not None:
            out.update(table_shape=tuple(self.table.shape), patch=self.patch, vocab=self.vocab,
                       code_levels=tuple(self.code_levels))
        if self.flow is not None:
            w, b, pos, lp = self.flow
            out["flow_shape"] = (tuple(w.shape), tuple(pos.shape), int(lp))
        return out


_CACHE: dict[str, Tables] = {}


def _module_of(model) -> nn.Module:
    wm = getattr(model, "world_model", model)
    if not isinstance(wm, nn.Module):
        raise ConfigError(f"the extractor needs a loaded world model or bundle, got {type(model).__name__}")
    return wm


# The layers that only score imagined steps: an agent's observations (tokens, latents, hidden features)
# never pass through them, so a round of real driving may retrain them under a trained agent.
HEAD_PREFIXES = ("reward_head.", "end_head.")


def world_model_sha(model, heads: bool = True) -> str:
    """The sha256 of a loaded world model's weights (its state_dict's names and float32 values, in name
    order): the same for a model in memory and for the directory it was saved to and loaded from.
    ``heads=False``: without the reward and end heads (`HEAD_PREFIXES`), i.e. of everything an agent's
    observations depend on (two models that differ only in their heads give an agent the same inputs)."""
    h = hashlib.sha256()
    for k, v in sorted(_module_of(model).state_dict().items()):
        if not heads and k.startswith(HEAD_PREFIXES):
            continue
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def world_model_tables(model) -> Tables:
    """The layers of a loaded world model (a bundle or the module) an extractor copies (cached by sha)."""
    sha = world_model_sha(model)
    if sha in _CACHE:
        return _CACHE[sha]
    wm = _module_of(model)
    cfg = wm.cfg
    if hasattr(wm, "tok_emb"):
        levels = tuple(int(v) for v in cfg.code_levels) if getattr(cfg, "embedding", "codes") == "digits" else ()
        t = Tables(sha, wm.tok_emb.weight.detach().float().cpu().clone(), int(cfg.patch), int(cfg.vocab), levels,
                   observation_sha=world_model_sha(wm, heads=False))
    elif hasattr(wm, "inp"):
        t = Tables(sha, flow=(wm.inp.weight.detach().float().cpu().clone(), wm.inp.bias.detach().float().cpu().clone(),
                              wm.pos_emb.detach().float().cpu().clone(), int(cfg.patch)),
                   observation_sha=world_model_sha(wm, heads=False))
    else:
        raise ConfigError(f"{type(wm).__name__} has neither a token table nor a latent input layer")
    _CACHE[sha] = t
    return t


class WorldModelExtractor(BaseFeaturesExtractor):
    """Tokens embedded with the world model's token table (or latents with a flow model's input layer),
    mean-pooled (or kept per position with ``spatial``), + LayerNorm'd hidden features.

    Args:
        observation_space: a Dict space with ``tokens`` (g, g) or ``latents`` (C, h, w), and/or ``features``.
        world_model_sha, observation_sha, table_shape, patch, vocab, code_levels, flow_shape: what
            `Tables.shapes` records (the shas only identify the model: `gaia_gym.rl.agent.load_agent` checks them).
        freeze_embedding: keep the copied layers fixed (True) or fine-tune them (False).
        spatial: per-position projection width of the token patches (0: mean-pool).
    """

    def __init__(self, observation_space: spaces.Dict, world_model_sha: str | None = None,
                 table_shape: tuple[int, int] | None = None, patch: int = 0, vocab: int = 0,
                 code_levels: tuple[int, ...] = (), flow_shape=None, freeze_embedding: bool = True,
                 spatial: int = 0, observation_sha: str | None = None, per_token: bool = False) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise ConfigError(f"WorldModelExtractor needs a Dict observation space, got {observation_space}")
        keys = tuple(observation_space.spaces)
        extra = [k for k in keys if k not in EXTRACTOR_KEYS]
        if extra or not keys:
            raise ConfigError(f"WorldModelExtractor reads the keys 'tokens' or 'latents', and/or 'features'; the "
                              f"observation has {list(keys)} (use obs_mode='tokens+features')")
        self.keys = tuple(k for k in EXTRACTOR_KEYS if k in keys)
        cached = _CACHE.get(world_model_sha) if world_model_sha else None
        table = None
        levels = tuple(int(v) for v in code_levels)
        if "tokens" in self.keys:
            if table_shape is None:
                raise ConfigError("the observation has 'tokens' but the world model has no token table "
                                  "(a flow model's observations are 'latents')")
            table = cached.table if cached is not None and cached.table is not None else torch.zeros(table_shape)
            grid = observation_space["tokens"].shape[-1]
            rows = sum(levels) if levels else vocab
            if table.dim() != 2 or table.shape[0] != patch * patch * rows or grid % patch:
                raise ConfigError(f"the token table {tuple(table.shape)} does not fit patch {patch}, "
                                  f"{'digit levels ' + str(list(levels)) if levels else f'vocab {vocab}'}, grid "
                                  f"{grid}: is it the world model these observations come from?")
            if int(observation_space["tokens"].high.max()) >= vocab:
                raise ConfigError(f"observation tokens go up to {int(observation_space['tokens'].high.max())}, "
                                  f"the world model's vocabulary has {vocab} codes")
        proj = None
        if "latents" in self.keys:
            if flow_shape is None:
                raise ConfigError("the observation has 'latents' but the world model has no latent input layer")
            (wshape, pshape, lp) = flow_shape
            proj = cached.flow if cached is not None and cached.flow is not None else (
                torch.zeros(wshape), torch.zeros(wshape[0]), torch.zeros(pshape), int(lp))
            c, g = observation_space["latents"].shape[0], observation_space["latents"].shape[-1]
            if proj[0].shape[1] != c * lp * lp or proj[2].shape[0] != (g // lp) ** 2:
                raise ConfigError(f"the flow model's input layer {tuple(proj[0].shape)} does not fit latents "
                                  f"{observation_space['latents'].shape}: is it the model these observations come from?")
        if spatial < 0 or (spatial and table is None):
            raise ConfigError(f"spatial={spatial}: a per-position token projection needs the 'tokens' key and a "
                              "width >= 1 (0: mean-pool)")
        # a camera rig's tokens are (V, g, g): its views' patches are positions too (as WorldModel.patchify)
        views = int(np.prod(observation_space["tokens"].shape[:-2])) if table is not None else 0
        n_pos = 0 if table is None else views * (observation_space["tokens"].shape[-1] // patch) ** 2
        if per_token and not spatial:
            raise ConfigError("per_token needs spatial > 0 (each token's projection width)")
        n_pos *= patch * patch if per_token else 1  # every token its own position, not every patch
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
            S = self.patch**2
            if levels:  # the row of digit i with value v at sub-position s: s*sum(levels) + offset_i + v
                lv = torch.tensor(levels)
                self.register_buffer("levels", lv, persistent=False)
                self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=lv.dtype), lv[:-1]]), 0),
                                     persistent=False)
                off = torch.cumsum(torch.cat([lv.new_zeros(1), lv[:-1]]), 0)
                self.register_buffer("offset", torch.arange(S)[:, None] * int(lv.sum()) + off, persistent=False)
            else:
                self.register_buffer("offset", torch.arange(S) * self.vocab, persistent=False)
            self.digits = bool(levels)
        if proj is not None:  # plain Parameters, not a Linear (SB3's ortho_init would re-initialise it)
            need = not self.freeze_embedding
            self.lat_w, self.lat_b, self.lat_pos = (nn.Parameter(t.clone(), requires_grad=need) for t in proj[:3])
            self.lat_patch = int(proj[3])
        if d_feat:
            self.norm = nn.LayerNorm(d_feat)
        self.spatial, self.per_token = int(spatial), bool(per_token)
        if self.spatial:  # each patch's embedding projected to `spatial` numbers, kept in place (not pooled)
            self.spatial_proj = nn.Linear(table.shape[1], self.spatial)

    def embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float latents -> (B, d): the flow model's token projection, mean-pooled."""
        p = self.lat_patch
        t = rearrange(latents.float(), "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
        return (F.linear(t, self.lat_w, self.lat_b) + self.lat_pos).mean(1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, g, g) token grid, or a rig's (B, V, g, g) (any dtype: SB3 hands Box observations over as
        floats) -> (B, d)."""
        t = tokens.round().long().clamp_(0, self.vocab - 1)
        B, g, p = t.shape[0], t.shape[-1], self.patch
        # (B, V, g, g) -> (B, P, S), as WorldModel.patchify: "b v (h p1) (w p2) -> b (v h w) (p1 p2)"
        t = t.reshape(B, -1, g // p, p, g // p, p).permute(0, 1, 2, 4, 3, 5).reshape(B, -1, p * p)
        if self.digits:  # as WorldModel.embed_image: the sum over sub-positions and FSQ digits
            idx = (t.unsqueeze(-1) // self.basis) % self.levels + self.offset  # (B, P, S, nd)
            e = self.embedding(idx).sum(-2)  # (B, P, S, d): each token's row (its sub-position's table)
        else:
            e = self.embedding(t + self.offset)  # (B, P, S, d)
        if self.per_token:  # every token kept in place: finer than a patch (a lane line's offset)
            return torch.relu(self.spatial_proj(e)).flatten(1)  # (B, P * S * spatial)
        e = e.sum(-2)  # (B, P, d): the patch embedding
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


def policy_kwargs(world_model, freeze: bool = True,
                  net_arch: list[int] | dict[str, list[int]] | None = (256, 256), spatial: int = 0,
                  per_token: bool = False, **extra: Any) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for a "MultiInputPolicy" (PPO, SAC, ...) using `WorldModelExtractor`.

    ``world_model``: the loaded bundle (or world-model module) whose layers are copied (recorded in the
    kwargs by shape and weights sha256 only); ``freeze``: keep them fixed; ``net_arch``: SB3's hidden
    layers after the extractor; ``spatial``: per-position token projection width (0: mean-pool);
    ``per_token``: with ``spatial``, every token is a position (not every patch: highway-env's frames hold
    a 4-patch grid, too coarse to see where the ego sits in its lane);
    ``extra``: more policy kwargs.
    """
    kw: dict[str, Any] = {**world_model_tables(world_model).shapes(), "freeze_embedding": bool(freeze)}
    if spatial:
        kw["spatial"] = int(spatial)
    if per_token:
        kw["per_token"] = True
    out: dict[str, Any] = {"features_extractor_class": WorldModelExtractor, "features_extractor_kwargs": kw}
    if net_arch is not None:
        out["net_arch"] = dict(net_arch) if isinstance(net_arch, dict) else list(net_arch)
    return {**out, **extra}


__all__ = ["EXTRACTOR_KEYS", "HEAD_PREFIXES", "Tables", "WorldModelExtractor", "policy_kwargs", "world_model_sha", "world_model_tables"]
