"""The world model: a transformer over image and action tokens that predicts the next frame's tokens,
the reward and the end of the episode (GAIA-1's dynamics model with IRIS's reward/termination heads).

Token layout and action codec: `gaia_gym.models.layout`. Shapes use B batch, T blocks (time steps),
P image positions per block (after patching), S = patch^2 tokens per position, V vocabulary, d width.

Two decoding schemes (config ``decoding``) share weights' shapes and the KV cache:
``parallel`` predicts all of frame t+1's tokens in one pass from block t; ``autoregressive`` predicts
them one position at a time. Temporal positions are rotary (RoPE over the block index), so cached keys
stay valid when the context window slides: long rollouts keep a bounded cost.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gaia_gym.models.conditions import ConditionEncoder, Conditions, ConditionSpec, training_conditions
from gaia_gym.models.layout import TokenLayout
from gaia_gym.specs import camera_pose
from gaia_gym.errors import ConfigError


@dataclass(frozen=True)
class WorldModelConfig:
    """Architecture, layout and loss settings (stored in every world-model file)."""

    grid: int = 8  # the tokenizer's token grid side
    vocab: int = 1000  # the tokenizer's vocabulary
    patch: int = 2  # token patch side: (grid/patch)^2 positions per frame, patch^2 tokens each
    action_dim: int = 2  # [steering, speed] in [-1, 1] (see ActionCodec)
    context: int = 16  # frames in the attention window (training clips and rollouts)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    decoding: str = "parallel"  # "parallel" (one pass per frame) or "autoregressive" (one per position)
    action_dropout: float = 0.2  # training: a_t replaced by the learned null action (enables CFG)
    reward_bins: int = 41  # two-hot bins over symlog(reward) in [-reward_range, reward_range]
    reward_range: float = 5.0  # symlog units: covers |r| <= e^5 - 1 = 147
    reward_weight: float = 1.0
    end_weight: float = 1.0
    # image head: () = one softmax over the whole vocabulary; the tokenizer's FSQ levels (e.g. (8, 5, 5, 5))
    # = one small softmax per FSQ digit (factorized: 23 logits instead of 1000 per token; neighbouring
    # digit values decode to similar pixels, and sampling costs a few draws instead of a top-k)
    code_levels: tuple[int, ...] = ()
    # image input embedding: "codes" = one vector per (sub-position, code) (patch^2 x vocab rows); "digits" =
    # the sum of one vector per (sub-position, FSQ digit value) (patch^2 x sum(code_levels) rows: 368 instead
    # of 16,000 at patch 4), so codes that share digits share parameters (needs code_levels)
    embedding: str = "codes"
    # camera rig: () = one camera, frames are (g, g) token grids; else one (name, yaw_deg, anchor_x, anchor_y)
    # per camera (gaia_gym.sims.rig.Camera) and frames are (V, g, g): all views of a time step in one block,
    # attended jointly (across views and space within a frame, causally over time), each view's positions
    # tagged by an embedding of its camera's pose (so a model can be given another rig: `for_cameras`)
    cameras: tuple = ()
    view_dropout: float = 0.0  # training: share of clips in which a random subset of the views is hidden
    # scene conditions beside the action (gaia_gym.models.conditions.ConditionSpec as a dict; None: none):
    # metadata, agent boxes, text, how they enter (cross-attention or adaLN) and their training dropouts
    conditions: dict | None = None
    # training: each clip's input tokens are replaced by random codes with a probability drawn uniformly in
    # [0, token_noise] per clip (the targets stay clean), so the model learns to predict from a context
    # that holds its own sampling errors, as in an open-loop rollout (DIAMOND / GAIA-1 style robustness)
    token_noise: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_levels", tuple(int(x) for x in self.code_levels))
        try:
            cams = tuple((str(c[0]), float(c[1]), float(c[2]), float(c[3])) for c in self.cameras)
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"cameras must be (name, yaw_deg, anchor_x, anchor_y) per camera, got {self.cameras!r}") from None
        object.__setattr__(self, "cameras", cams)
        if len({c[0] for c in cams}) != len(cams):
            raise ConfigError(f"cameras {[c[0] for c in cams]}: a camera name appears twice")
        if cams and self.decoding != "parallel":
            raise ConfigError("a camera rig needs parallel decoding (all views of a frame in one pass)")
        if not 0.0 <= self.view_dropout < 1.0:
            raise ConfigError(f"view_dropout must be in [0, 1), got {self.view_dropout}")
        if self.code_levels and math.prod(self.code_levels) != self.vocab:
            raise ConfigError(f"code_levels {self.code_levels} do not multiply to the vocabulary {self.vocab}")
        if self.embedding not in ("codes", "digits"):
            raise ConfigError(f"embedding must be 'codes' or 'digits', got {self.embedding!r}")
        if self.embedding == "digits" and not self.code_levels:
            raise ConfigError("the digits embedding needs code_levels (an FSQ tokenizer's levels)")
        if self.conditions:
            spec = ConditionSpec(**self.conditions) if isinstance(self.conditions, dict) else self.conditions
            object.__setattr__(self, "conditions", _spec_dict(spec))
            if self.decoding != "parallel":
                raise ConfigError("scene conditions need parallel decoding")
        else:
            object.__setattr__(self, "conditions", None)

    @property
    def condition_spec(self) -> ConditionSpec | None:
        return ConditionSpec.from_dict(self.conditions)

    @property
    def head_width(self) -> int:
        """Logits per image token."""
        return sum(self.code_levels) if self.code_levels else self.vocab

    @property
    def views(self) -> int:
        return max(1, len(self.cameras))

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c[0] for c in self.cameras)

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(image_tokens=self.views * (self.grid // self.patch) ** 2, image_vocab=self.vocab,
                           action_tokens=self.action_dim, views=self.views)


def _spec_dict(spec: ConditionSpec) -> dict:
    from dataclasses import asdict

    d = asdict(spec)
    d["metadata"] = [[k, list(v)] for k, v in spec.metadata]
    d["agent_fields"] = list(spec.agent_fields)
    return d


WORLD_MODEL_PRESETS = {
    "tiny": dict(grid=4, vocab=16, patch=2, context=4, d_model=32, n_layers=2, n_heads=2, reward_bins=9),
    "default": {},
}


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def reward_spread(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(..., K) reward-head logits over symlog `bins` -> (...) the standard deviation of the predicted
    reward in reward units: how unsure the head is of this transition's reward."""
    p = logits.float().softmax(-1)
    vals = symexp(bins.float())
    mean = (p * vals).sum(-1, keepdim=True)
    return (p * (vals - mean) ** 2).sum(-1).clamp_min(0).sqrt()


def two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """x (...,) -> (..., K) weights on the two bins around x (DreamerV3)."""
    x = x.clamp(bins[0], bins[-1])
    idx = torch.searchsorted(bins, x.contiguous()).clamp(1, len(bins) - 1)
    lo, hi = bins[idx - 1], bins[idx]
    w_hi = (x - lo) / (hi - lo)
    out = torch.zeros(*x.shape, len(bins), device=x.device)
    out.scatter_(-1, (idx - 1).unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, idx.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


# ----------------------------------------------------------------------------------------------
# transformer pieces
# ----------------------------------------------------------------------------------------------
def rope_tables(pos: torch.Tensor, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (N, hd/2) float32 of the rotary angles at temporal positions pos (N,)."""
    freqs = 1.0 / (1000.0 ** (torch.arange(0, hd, 2, device=pos.device, dtype=torch.float32) / hd))
    ang = pos.float()[:, None] * freqs[None]  # (N, hd/2)
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, pos: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of x (B, H, N, hd) at temporal positions pos (N,), or with the `rope_tables` of
    those positions (computed once per pass and shared by every layer, q and k: the same floats)."""
    cos, sin = rope_tables(pos, x.shape[-1]) if isinstance(pos, torch.Tensor) else pos
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class KVCache:
    """Keys/values of the tokens seen so far, per layer, in preallocated buffers (B, H, capacity, hd).

    The live tokens occupy ``[start, end)`` of every buffer; `pos` and `kind` (length `length`) hold each
    live token's block index and slot inside its block (for the attention mask). Appending writes in
    place and `trim` (the sliding window) only moves `start`, so an imagined step copies nothing; when
    the buffer is full the live part is moved to the front (once every few steps) or the buffer grows.

    As in any sliding-window KV cache (Transformer-XL, Mistral), the cached keys of the oldest blocks were
    computed when those blocks could still see older ones, so after the window slides a step is not the
    same as recomputing the window from scratch: information older than the window fades out through the
    layers instead of being cut off. Until the window is full the two are identical (tested).
    """

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.start = 0
        self.end = 0
        self.pos: torch.Tensor | None = None
        self.kind: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    def keys(self, layer: int) -> torch.Tensor:
        return self.k[layer][:, :, self.start : self.end]

    def values(self, layer: int) -> torch.Tensor:
        return self.v[layer][:, :, self.start : self.end]

    def reserve(self, m: int) -> None:
        """Make room for m more tokens after `end` (compacting or growing the buffers)."""
        if not self.k or self.end + m <= self.k[0].shape[2]:
            return
        n = self.length
        cap = self.k[0].shape[2]
        if n + m > cap // 2:  # grow: keep at least as much free room as live tokens
            cap = 2 * (n + m)
        for bufs in (self.k, self.v):
            for i, b in enumerate(bufs):
                new = b.new_empty(b.shape[0], b.shape[1], cap, b.shape[3])
                new[:, :, :n] = b[:, :, self.start : self.end]
                bufs[i] = new
        self.start, self.end = 0, n

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, H, m, hd) after the live ones (`reserve` first); returns the live
        keys and values including them. `commit` makes them part of the cache."""
        m = k.shape[2]
        if len(self.k) <= layer:  # first use: allocate
            cap = max(64, 2 * m)
            self.k.append(k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3]))
            self.v.append(v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3]))
        self.k[layer][:, :, self.end : self.end + m] = k
        self.v[layer][:, :, self.end : self.end + m] = v
        return self.k[layer][:, :, self.start : self.end + m], self.v[layer][:, :, self.start : self.end + m]

    def commit(self, blocks: torch.Tensor, slots: torch.Tensor) -> None:
        """Advance `end` past the tokens just written (blocks/slots: their block index and slot)."""
        self.end += len(blocks)
        self.pos = blocks if self.pos is None else torch.cat([self.pos, blocks])
        self.kind = slots if self.kind is None else torch.cat([self.kind, slots])

    def trim(self, keep_from_block: int) -> None:
        """Drop cached tokens of blocks < keep_from_block (the sliding window)."""
        if self.pos is None:
            return
        i = int((self.pos < keep_from_block).sum())  # blocks are appended in order: dropped = a prefix
        if i:
            self.start += i
            self.pos, self.kind = self.pos[i:], self.kind[i:]

    def view(self) -> "KVCache":
        """A cache sharing these buffers: what it writes after `end` is overwritten by this cache's next
        write (used for the unconditional pass of classifier-free guidance). Call `reserve` first."""
        c = KVCache()
        c.k, c.v, c.start, c.end, c.pos, c.kind = list(self.k), list(self.v), self.start, self.end, self.pos, self.kind
        return c

    def clone(self) -> "KVCache":
        """An independent copy of the live part."""
        return self.select(slice(None))

    def assign_rows(self, rows: torch.Tensor, other: "KVCache") -> None:
        """Overwrite batch rows `rows` with `other`'s (len(rows) rows, same blocks and slots): resets one
        imagined env while the others keep driving."""
        if other.length != self.length or not torch.equal(other.pos, self.pos) or not torch.equal(other.kind, self.kind):
            raise ConfigError("assign_rows needs a cache over the same blocks")
        for i in range(len(self.k)):
            self.k[i][rows, :, self.start : self.end] = other.keys(i).to(self.k[i].dtype)
            self.v[i][rows, :, self.start : self.end] = other.values(i).to(self.v[i].dtype)

    def select(self, index: torch.Tensor | slice) -> "KVCache":
        """A cache of the batch rows `index` (copies; for branching / CFG)."""
        # a tensor index copies; a slice is a view (of the whole buffer when the live part fills it), so clone
        take = (lambda t: t[index].clone(memory_format=torch.contiguous_format)) if isinstance(index, slice) else (
            lambda t: t[index].contiguous())
        c = KVCache()
        c.k = [take(self.keys(i)) for i in range(len(self.k))]
        c.v = [take(self.values(i)) for i in range(len(self.v))]
        c.start, c.end = 0, self.length
        c.pos, c.kind = self.pos, self.kind
        return c


class Attention(nn.Module):
    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.h = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = cfg.dropout

    def forward(self, x, pos, mask, cache: KVCache | None = None, layer: int = 0):
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.h)
        q, k = rope(q, pos), rope(k, pos)
        if cache is not None:
            k, v = cache.write(layer, k, v)
            q = q.to(k.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.drop if self.training else 0.0)
        return self.proj(rearrange(y, "b h n e -> b n (h e)"))


class CrossAttention(nn.Module):
    """Each token attends to the condition tokens of its own block (time step)."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.h = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, ctx, ctx_mask, n: int):
        """x (B, T*n, d), ctx (B, T, C, d), ctx_mask (B, T, C) bool."""
        B, T = ctx.shape[:2]
        q = rearrange(self.q(x), "b (t n) (h e) -> (b t) h n e", n=n, h=self.h)
        k, v = rearrange(self.kv(ctx), "b t c (two h e) -> two (b t) h c e", two=2, h=self.h)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=ctx_mask.reshape(B * T, 1, 1, -1))
        return self.proj(rearrange(y, "(b t) h n e -> b (t n) (h e)", b=B))


class Block(nn.Module):
    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))
        spec = cfg.condition_spec
        self.mode = spec.mode if spec else None
        if self.mode == "adaln":  # adaLN: scale, shift and gate of both sublayers from the pooled condition
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        elif self.mode == "cross":
            self.ln_c = nn.LayerNorm(d)
            self.xattn = CrossAttention(cfg)

    def zero_condition_init(self) -> None:
        """Conditions start with no effect (adaLN-Zero; a zero cross-attention output)."""
        if self.mode == "adaln":
            nn.init.zeros_(self.ada[-1].weight)
            nn.init.zeros_(self.ada[-1].bias)
        elif self.mode == "cross":
            nn.init.zeros_(self.xattn.proj.weight)
            nn.init.zeros_(self.xattn.proj.bias)

    def forward(self, x, pos, mask, cache: KVCache | None = None, layer: int = 0, cond=None):
        if cond is None or self.mode is None:
            x = x + self.attn(self.ln1(x), pos, mask, cache, layer)
            return x + self.mlp(self.ln2(x))
        tokens, key_mask, pooled, n = cond
        if self.mode == "adaln":
            m = self.ada(pooled).repeat_interleave(n, dim=1)  # (B, T*n, 6d)
            s1, b1, g1, s2, b2, g2 = m.to(x.dtype).chunk(6, dim=-1)
            x = x + (1 + g1) * self.attn(self.ln1(x) * (1 + s1) + b1, pos, mask, cache, layer)
            return x + (1 + g2) * self.mlp(self.ln2(x) * (1 + s2) + b2)
        x = x + self.attn(self.ln1(x), pos, mask, cache, layer)
        x = x + self.xattn(self.ln_c(x), tokens, key_mask, n)
        return x + self.mlp(self.ln2(x))


@dataclass
class TeacherForced:
    """A world model's scores on real clips fed whole (what `teacher_forced` returns, for either kind):
    `sums` of per-element scores over `count` elements (e.g. {"val_cross_entropy": ..., "token_accuracy":
    ...}), the reward (B, T) and end logits (B, T) of every step."""

    sums: dict[str, float]
    count: int
    reward: torch.Tensor
    end_logit: torch.Tensor


@dataclass
class WorldModelOutput:
    """Outputs for the blocks that were run."""

    image_logits: torch.Tensor  # (B, T, P, S, K): parallel: frame t+1's tokens; AR: see `next_frame_logits`
    memory: torch.Tensor  # (B, T, d): hidden state after block t (frame t and a_t seen)
    reward: torch.Tensor  # (B, T) expected reward of the step t -> t+1
    end_logit: torch.Tensor  # (B, T) logit of "the episode ends after step t"
    hidden: torch.Tensor  # (B, T, block, d) final-layer outputs


class WorldModel(nn.Module):
    """Action-conditioned next-frame token predictor with reward and termination heads."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        if cfg.decoding not in ("parallel", "autoregressive"):
            raise ConfigError(f"decoding must be 'parallel' or 'autoregressive', got {cfg.decoding!r}")
        if cfg.grid % cfg.patch:
            raise ConfigError(f"patch {cfg.patch} does not divide the token grid {cfg.grid}")
        self.cfg = cfg
        self.layout = L = cfg.layout
        d, S = cfg.d_model, cfg.patch**2
        self.S = S
        per_sub = sum(cfg.code_levels) if cfg.embedding == "digits" else cfg.vocab
        self.tok_emb = nn.Embedding(S * per_sub, d)  # one table per sub-position of a patch
        # position inside one view's frame + the action slots (a rig's views share the spatial part)
        self.pos_emb = nn.Parameter(torch.zeros(L.view_tokens + L.action_tokens, d))
        self.visible: torch.Tensor | None = None  # (V,) bool: the views the model is shown (`seeing`)
        if cfg.cameras:
            self.cam_emb = nn.Sequential(nn.Linear(4, d), nn.GELU(), nn.Linear(d, d))  # camera pose -> d
            self.missing_view = nn.Parameter(torch.zeros(d))  # input of a hidden view (view dropout)
            self.register_buffer("camera_pose", camera_poses(cfg.cameras), persistent=False)
        self.act_w = nn.Parameter(torch.randn(cfg.action_dim, d) * 0.02)
        self.act_b = nn.Parameter(torch.zeros(cfg.action_dim, d))
        self.null_action = nn.Parameter(torch.zeros(cfg.action_dim, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.spec = cfg.condition_spec
        if self.spec is not None:
            if self.spec.agent_map_scale and cfg.cameras:
                raise ConfigError("the agent map draws boxes into one top view; a camera rig takes boxes as a set")
            self.cond_enc = ConditionEncoder(self.spec, d, cfg.grid, cfg.patch)
            self.missing_frame = nn.Parameter(torch.zeros(d))  # input of a hidden frame (generation from scratch)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, S * cfg.head_width)
        if cfg.code_levels:
            lv = torch.tensor(cfg.code_levels)
            self.register_buffer("_levels", lv, persistent=False)
            self.register_buffer("_basis", torch.cumprod(torch.cat([torch.ones(1, dtype=lv.dtype), lv[:-1]]), 0),
                                 persistent=False)
            if cfg.embedding == "digits":  # row of digit i = value v at sub-position s: s*sum(levels) + offset_i + v
                digit_off = torch.cumsum(torch.cat([lv.new_zeros(1), lv[:-1]]), 0)  # (nd,)
                self.register_buffer("_digit_rows", torch.arange(S)[:, None] * int(lv.sum()) + digit_off,
                                     persistent=False)  # (S, nd)
        self.reward_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.reward_bins))
        self.end_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.register_buffer("bins", torch.linspace(-cfg.reward_range, cfg.reward_range, cfg.reward_bins),
                             persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.zeros_(self.reward_head[-1].weight)  # start by predicting reward 0
        if self.spec is not None:
            nn.init.normal_(self.missing_frame, std=0.02)
            for blk in self.blocks:
                blk.zero_condition_init()
        if cfg.cameras:  # start with every view looking like the single camera (warm starts from one)
            nn.init.zeros_(self.cam_emb[-1].weight)
            nn.init.normal_(self.missing_view, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # ---- camera rig ----------------------------------------------------------------------------
    def block_pos(self) -> torch.Tensor:
        """(block, d): what is added to each slot of a block (position; with a rig, also the camera)."""
        if not self.cfg.cameras:
            return self.pos_emb
        P, V = self.layout.view_tokens, self.cfg.views
        cam = self.cam_emb(self.camera_pose.to(self.pos_emb.dtype))  # (V, d)
        img = self.pos_emb[:P].repeat(V, 1) + cam.repeat_interleave(P, 0)
        return torch.cat([img, self.pos_emb[P:]])

    def _hide_views(self, img: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """img (B, T, V*P, d): the positions of views not `visible` ((B, V) or (V,) bool) get the learned
        missing-view input."""
        visible = self.visible if visible is None else visible
        if visible is None or not self.cfg.cameras:
            return img
        vis = visible.to(img.device).repeat_interleave(self.layout.view_tokens, -1)
        vis = vis.view(-1, 1, vis.shape[-1], 1)
        return torch.where(vis, img, self.missing_view.to(img.dtype))

    @contextlib.contextmanager
    def seeing(self, views):
        """Context manager: the model is shown only `views` (indices or names) of its rig, the others enter
        as hidden (as in view dropout), e.g. to imagine one camera alone with the same weights."""
        names = self.cfg.camera_names
        idx = [names.index(v) if isinstance(v, str) else int(v) for v in views]
        vis = torch.zeros(self.cfg.views, dtype=torch.bool, device=self.pos_emb.device)
        vis[idx] = True
        old, self.visible = self.visible, vis
        try:
            yield self
        finally:
            self.visible = old

    def for_cameras(self, cameras) -> "WorldModel":
        """The same weights over another rig (camera tuples as in the config, e.g. a subset of this one's
        or new poses): a rig model's parameters do not depend on the number of views."""
        if not self.cfg.cameras:
            raise ConfigError("this world model has no camera rig (it was trained on one camera)")
        from dataclasses import replace

        m = WorldModel(replace(self.cfg, cameras=tuple(cameras))).to(self.pos_emb.device)
        m.load_state_dict(self.state_dict())
        return m.train(self.training)

    # ---- token <-> position plumbing -------------------------------------------------------
    def patchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, g, g) token grid (a rig: (B, T, V, g, g)) -> (B, T, P, S)."""
        p = self.cfg.patch
        if self.cfg.cameras:
            return rearrange(tokens, "b t v (h p1) (w p2) -> b t (v h w) (p1 p2)", p1=p, p2=p)
        return rearrange(tokens, "b t (h p1) (w p2) -> b t (h w) (p1 p2)", p1=p, p2=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P, S) -> (B, T, g, g) (a rig: (B, T, V, g, g))."""
        p, g = self.cfg.patch, self.cfg.grid
        if self.cfg.cameras:
            return rearrange(x, "b t (v h w) (p1 p2) -> b t v (h p1) (w p2)", v=self.cfg.views, h=g // p, p1=p, p2=p)
        return rearrange(x, "b t (h w) (p1 p2) -> b t (h p1) (w p2)", h=g // p, p1=p, p2=p)

    def embed_image(self, patched: torch.Tensor) -> torch.Tensor:
        """(..., S) tokens of a patch -> (..., d): the sum of the patch's sub-token embeddings (per code, or
        per FSQ digit of each code: see `WorldModelConfig.embedding`)."""
        if self.cfg.embedding == "digits":
            idx = self.to_digits(patched) + self._digit_rows  # (..., S, nd) rows of the digit table
            lead = patched.shape[:-1]
            return F.embedding_bag(idx.reshape(-1, idx.shape[-2] * idx.shape[-1]), self.tok_emb.weight,
                                   mode="sum").view(*lead, -1)
        offset = torch.arange(self.S, device=patched.device) * self.cfg.vocab
        return self.tok_emb(patched + offset).sum(-2)

    def embed_action(self, actions: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, A) in [-1, 1] -> (B, T, A, d); rows with null=True get the learned null action."""
        e = actions.unsqueeze(-1) * self.act_w + self.act_b
        if null is not None:
            e = torch.where(null[..., None, None], self.null_action.expand_as(e), e)
        return e

    def _mask(self, q_block: torch.Tensor, q_slot: torch.Tensor, k_block: torch.Tensor,
              k_slot: torch.Tensor) -> torch.Tensor:
        """Boolean (Nq, Nk) attention mask from each token's block index and slot inside the block."""
        earlier = k_block[None, :] < q_block[:, None]
        same = k_block[None, :] == q_block[:, None]
        if self.cfg.decoding == "parallel":
            return earlier | same
        return earlier | (same & (k_slot[None, :] <= q_slot[:, None]))

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, actions: torch.Tensor, null_action: torch.Tensor | None = None,
                cache: KVCache | None = None, start_block: int = 0,
                visible: torch.Tensor | None = None, cond: Conditions | None = None,
                hidden: torch.Tensor | None = None) -> WorldModelOutput:
        """Run T whole blocks: tokens (B, T, g, g) int64 (a rig: (B, T, V, g, g)), actions (B, T, A).

        With `cache`, the blocks continue the cached sequence (block indices from `start_block`) and their
        keys/values are appended to it. `visible` (B, V) bool: a rig's views shown per row (default all,
        or those of `seeing`). `cond`: the blocks' scene conditions (`gaia_gym.models.conditions`; a model
        with conditions treats None as all of them dropped); `hidden` (B, T) bool: frames replaced by the
        learned missing-frame input (generation from scratch).
        """
        B, T = tokens.shape[:2]
        L = self.layout
        img = self._hide_views(self.embed_image(self.patchify(tokens)), visible)  # (B, T, P, d)
        img = self._add_agent_map(self._hide_frames(img, hidden), cond, B, T)
        act = self.embed_action(actions, null_action)  # (B, T, A, d)
        x = torch.cat([img, act], dim=2) + self.block_pos()  # (B, T, block, d)
        x = rearrange(x, "b t n d -> b (t n) d")
        dev = x.device
        blocks = torch.arange(start_block, start_block + T, device=dev).repeat_interleave(L.block)
        slots = torch.arange(L.block, device=dev).repeat(T)
        hid = self._run(x, blocks, slots, cache, self._condition(cond, B, T, L.block, x.device))
        return self._heads(rearrange(hid, "b (t n) d -> b t n d", n=L.block))

    def _hide_frames(self, img: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """img (B, T, P, d): frames with hidden (B, T) True get the learned missing-frame input."""
        if hidden is None or self.spec is None:
            return img
        return torch.where(hidden.to(img.device)[:, :, None, None], self.missing_frame.to(img.dtype), img)

    def _add_agent_map(self, img: torch.Tensor, cond: Conditions | None, B: int, T: int) -> torch.Tensor:
        """img (B, T, P, d) plus the agent map of the boxes each block predicts (a spec with one)."""
        if self.spec is None:
            return img
        m = self.cond_enc.agent_map(cond, B, T, img.device)
        return img if m is None else img + m.to(img.dtype)

    def _condition(self, cond: Conditions | None, B: int, T: int, n: int, device):
        """What the blocks take from the conditions: (tokens, key mask, pooled, tokens per block), or None
        for a model without conditions."""
        if self.spec is None:
            if cond is not None and cond.batch:
                raise ConfigError("this world model takes no scene conditions (it was trained on actions only)")
            return None
        tokens, mask, pooled = self.cond_enc(cond, B, T, device)
        return tokens, mask, pooled, n

    def _run(self, x, blocks, slots, cache: KVCache | None, cond=None):
        if cache is not None and cache.length:
            k_blocks, k_slots = torch.cat([cache.pos, blocks]), torch.cat([cache.kind, slots])
        else:
            k_blocks, k_slots = blocks, slots
        mask = self._mask(blocks, slots, k_blocks, k_slots)
        if bool(mask.all()):
            mask = None  # e.g. a parallel step over a full window: SDPA's unmasked path is faster
        if cache is not None:
            cache.reserve(len(blocks))
        rot = rope_tables(blocks, self.cfg.d_model // self.cfg.n_heads)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rot, mask, cache, i, cond)
        if cache is not None:
            cache.commit(blocks, slots)
        return self.ln_f(x)

    def _heads(self, h: torch.Tensor) -> WorldModelOutput:
        L = self.layout
        h_img = h[:, :, L.image_slice]
        mem = h[:, :, L.memory_index]
        logits = self.image_logits(h_img)
        return WorldModelOutput(logits, mem, self.expected_reward(mem), self.end_head(mem).squeeze(-1).float(), h)

    # ---- the image head: logits, loss and sampling for either head kind -----------------------
    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d) of image positions -> logits (..., S, head_width)."""
        return rearrange(self.head(h), "... (s v) -> ... s v", s=self.S)

    def to_digits(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids (...) -> FSQ digits (..., n_levels) (the tokenizer's FSQ index order)."""
        return (ids.unsqueeze(-1) // self._basis) % self._levels

    def from_digits(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits * self._basis).sum(-1)

    def _digit_slices(self):
        o = 0
        for n in self.cfg.code_levels:
            yield slice(o, o + n)
            o += n

    def image_nll(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token negative log-likelihood of the target ids and whether the argmax got them right:
        logits (..., head_width), target (...) -> (nll (...), correct (...) bool). With the factorized
        head a token's likelihood is the product of its digits' (so the two heads' NLLs compare)."""
        logits = logits.float()
        if not self.cfg.code_levels:
            nll = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none").view(target.shape)
            return nll, logits.argmax(-1) == target
        digits = self.to_digits(target)
        nll = torch.zeros(target.shape, device=logits.device)
        correct = torch.ones(target.shape, dtype=torch.bool, device=logits.device)
        for i, sl in enumerate(self._digit_slices()):
            lg = logits[..., sl]
            nll = nll + F.cross_entropy(lg.flatten(0, -2), digits[..., i].flatten(), reduction="none").view(target.shape)
            correct &= lg.argmax(-1) == digits[..., i]
        return nll, correct

    def sample_ids(self, logits: torch.Tensor, sample) -> torch.Tensor:
        """Logits (..., head_width) -> code ids (...), drawing with `sample` (see `make_sampler`); the
        factorized head draws each digit with it."""
        if not self.cfg.code_levels:
            return sample(logits)
        digits = torch.stack([sample(logits[..., sl]) for sl in self._digit_slices()], dim=-1)
        return self.from_digits(digits)

    def reward_logits(self, memory: torch.Tensor) -> torch.Tensor:
        return self.reward_head(memory).float()

    def expected_reward(self, memory: torch.Tensor) -> torch.Tensor:
        """The reward head's expectation, back in reward units (symexp of the two-hot mean)."""
        return symexp((self.reward_logits(memory).softmax(-1) * self.bins).sum(-1))

    # ---- training ----------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: tokens (B, T, g, g), actions (B, T, A), reward (B, T), terminated (B, T)."""
        tokens, actions = batch["tokens"], batch["actions"]
        B, T = tokens.shape[:2]
        null = torch.rand(B, T, device=tokens.device) < self.cfg.action_dropout if self.training else None
        visible = self.view_dropout_mask(B, tokens.device) if self.training else None
        cond, hidden = self.batch_conditions(batch, train=self.training)
        if cond is not None and self.training:
            null = null | cond.dropped.pop("action")[:, None]
        inputs = self.noisy_tokens(tokens) if self.training and self.cfg.token_noise > 0 else tokens
        out = self.forward(inputs, actions, null, visible=visible, cond=cond, hidden=hidden)
        logits, target = self.next_frame_logits(out), self.patchify(tokens[:, 1:])  # (B,T-1,P,S,K), (B,T-1,P,S)
        nll, correct = self.image_nll(logits, target)
        ce, acc = nll.mean(), correct.float().mean()
        r_target = two_hot(symlog(batch["reward"].float()), self.bins)
        r_loss = -(r_target * self.reward_logits(out.memory).log_softmax(-1)).sum(-1).mean()
        end = batch["terminated"].float()
        e_loss = F.binary_cross_entropy_with_logits(out.end_logit, end)
        loss = ce + self.cfg.reward_weight * r_loss + self.cfg.end_weight * e_loss
        return loss, {"ce": ce.item(), "token_acc": acc.item(), "reward_loss": r_loss.item(),
                      "end_loss": e_loss.item(),
                      "reward_mae": (out.reward - batch["reward"].float()).abs().mean().item()}

    def noisy_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` (B, T, ...) with each code replaced by a uniformly random one with probability
        u ~ U(0, token_noise), drawn once per clip (`WorldModelConfig.token_noise`)."""
        B = tokens.shape[0]
        rate = torch.rand(B, device=tokens.device) * self.cfg.token_noise
        hit = torch.rand(tokens.shape, device=tokens.device) < rate.view(B, *([1] * (tokens.ndim - 1)))
        return torch.where(hit, torch.randint_like(tokens, self.cfg.vocab), tokens)

    def batch_conditions(self, batch: dict, train: bool = False) -> tuple[Conditions | None, torch.Tensor | None]:
        """The conditions of a training/evaluation batch (keys "metadata" (B, F), "agents" (B, T, N, F)
        normalised boxes of the frames each block predicts, "agent_tracks" (B, T, N), "text" (B, E)):
        with `train`, the spec's dropouts drawn (the all-dropped rows under ``dropped["action"]``) and
        the hidden frames of generation from scratch; else everything given and nothing hidden."""
        if self.spec is None:
            return None, None
        meta, agents, text = (batch.get(k) if n in self.spec.names else None
                              for k, n in (("metadata", "metadata"), ("agents", "agents"), ("text", "text")))
        tokens = batch["tokens"]
        B, T = tokens.shape[:2]
        if not train:
            return Conditions(metadata=meta, agents=agents, text=text), None
        cond, every, hidden = training_conditions(self.spec, B, T, tokens.device, meta, agents,
                                                  batch.get("agent_tracks"), text)
        cond.dropped["action"] = every
        return cond, hidden

    def view_dropout_mask(self, B: int, device) -> torch.Tensor | None:
        """(B, V) bool views shown in training: in a `view_dropout` share of the clips each view is hidden
        with probability 1/2 (at least one stays), held for the whole clip; the hidden views are still
        predicted, from the ones shown."""
        V, p = self.cfg.views, self.cfg.view_dropout
        if not self.cfg.cameras or V < 2 or p <= 0:
            return None
        hide = (torch.rand(B, V, device=device) < 0.5) & (torch.rand(B, 1, device=device) < p)
        every = hide.all(1)
        keep = torch.randint(V, (B,), device=device)
        hide[every, keep[every]] = False
        return ~hide

    @torch.no_grad()
    def teacher_forced(self, tokens: torch.Tensor, actions: torch.Tensor, cond: Conditions | None = None) -> TeacherForced:
        """Evaluation on real clips (tokens (B, T, g, g), actions (B, T, A)), no action dropout: next-frame
        negative log-likelihood and argmax accuracy summed over frames 1..T-1, and every block's reward
        and end logit."""
        out = self.forward(tokens, actions, cond=cond)
        nll, ok = self.image_nll(self.next_frame_logits(out).float(), self.patchify(tokens[:, 1:]))
        return TeacherForced({"val_cross_entropy": float(nll.sum()), "token_accuracy": float(ok.sum())}, nll.numel(),
                             out.reward, out.end_logit)

    def next_frame_logits(self, out: WorldModelOutput) -> torch.Tensor:
        """Teacher-forced logits for frames 1..T-1 from a forward over blocks 0..T-1: (B, T-1, P, S, V)."""
        if self.cfg.decoding == "parallel":
            return out.image_logits[:, :-1]
        # autoregressive: position p of frame t+1 is predicted by the token before it in the sequence:
        # the memory (last action token) of block t for p = 0, else image position p-1 of block t+1
        L = self.layout
        src = torch.cat([out.hidden[:, :-1, L.memory_index : L.memory_index + 1],
                         out.hidden[:, 1:, L.image_slice][:, :, :-1]], dim=2)  # (B, T-1, P, d)
        return self.image_logits(src)

    # ---- generation --------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Blocks attended when predicting a frame (training clips have `context` frames: the last
        prediction in a clip sees context - 1 blocks)."""
        return self.cfg.context - 1

    def _block_embedding(self, tokens: torch.Tensor, actions: torch.Tensor, null: torch.Tensor | None = None,
                         hidden: torch.Tensor | None = None, cond: Conditions | None = None):
        """One block per row: tokens (B, g, g), actions (B, A) -> (B, block, d); hidden (B,) bool rows get
        the missing-frame input; `cond` the block's conditions (its agent map)."""
        img = self._hide_views(self.embed_image(self.patchify(tokens[:, None])), None)
        img = self._hide_frames(img, None if hidden is None else hidden[:, None])
        img = self._add_agent_map(img, cond, len(tokens), 1)[:, 0]
        act = self.embed_action(actions[:, None], None if null is None else null[:, None])[:, 0]
        return torch.cat([img, act], dim=1) + self.block_pos()

    def _feed(self, cache: KVCache, x: torch.Tensor, block: int, slots: torch.Tensor,
              cond: Conditions | None = None) -> torch.Tensor:
        blocks = torch.full_like(slots, block)
        return self._run(x, blocks, slots, cache, self._condition(cond, x.shape[0], 1, x.shape[1], x.device))

    @torch.no_grad()
    def prefill(self, cache: KVCache, tokens: torch.Tensor, actions: torch.Tensor, start_block: int = 0,
                cond: Conditions | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Feed real context blocks (of tokens (B, T, g, g), actions (B, T, A)) except the last into an
        empty cache at block indices start_block.., keeping the window; the last frame is fed by the first
        `step`, with its action. Returns the memory after the last fed block (B, d): the hidden feature
        observed with the last frame (zeros when T == 1)."""
        T = tokens.shape[1]
        if T == 1:
            return torch.zeros(tokens.shape[0], self.cfg.d_model, device=tokens.device)
        out = self.forward(tokens[:, : T - 1], actions[:, : T - 1], cache=cache, start_block=start_block,
                           cond=None if cond is None else cond.blocks(slice(0, T - 1)),
                           hidden=None if hidden is None else hidden[:, : T - 1])
        cache.trim(start_block + T - 1 - self.window + 1)
        return out.memory[:, -1]

    @torch.no_grad()
    def step(self, cache: KVCache, block: int, tokens: torch.Tensor, actions: torch.Tensor, sample,
             guidance: float = 1.0, cond: Conditions | None = None, hidden: torch.Tensor | None = None,
             contrast: Conditions | None = None, guide_action: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One imagined step from frame `block`: append (tokens (B, g, g), actions (B, A)) to `cache` and
        generate frame block+1. `sample(logits (..., V)) -> ids`. Returns (next tokens (B, g, g),
        memory (B, d), reward (B,), end logit (B,)).

        `cond`: this block's scene conditions (agents (B, 1, N, F)); `hidden` (B,) bool: the current frame
        is hidden (generation from scratch). `guidance` > 1: classifier-free guidance (parallel decoding
        only): logits = contrast + guidance * (conditioned - contrast), where the contrast pass has the
        action nulled (`guide_action`) and takes the `contrast` conditions (e.g. `cond.without(["text"])`,
        or a negative prompt's text: GAIA-1's negative prompting); the history stays conditioned."""
        L = self.layout
        dev = tokens.device
        if self.cfg.decoding == "parallel":
            slots = torch.arange(L.block, device=dev)
            if guidance != 1.0:
                cache.reserve(L.block)
                tmp = cache.view()  # its writes are overwritten by the conditional pass below
                null = torch.full((len(tokens),), bool(guide_action), dtype=torch.bool, device=dev)
                other = contrast if contrast is not None else cond
                hu = self._feed(tmp, self._block_embedding(tokens, actions, null, hidden, other), block, slots, other)
            h = self._feed(cache, self._block_embedding(tokens, actions, None, hidden, cond), block, slots, cond)
            logits = self.image_logits(h[:, L.image_slice]).float()
            if guidance != 1.0:
                lu = self.image_logits(hu[:, L.image_slice]).float()
                logits = lu + guidance * (logits - lu)
            nxt = self.sample_ids(logits, sample)  # (B, P, S)
            mem = h[:, L.memory_index]
        else:
            if guidance != 1.0:
                raise ConfigError("classifier-free guidance is implemented for parallel decoding only")
            if cond is not None or hidden is not None:
                raise ConfigError("scene conditions need parallel decoding")
            nxt, mem = self._step_autoregressive(cache, block, tokens, actions, sample)
        cache.trim(block + 1 - self.window + 1)
        reward = self.expected_reward(mem)
        end = self.end_head(mem).squeeze(-1).float()
        return self.unpatchify(nxt[:, None])[:, 0], mem, reward, end

    def _step_autoregressive(self, cache, block, tokens, actions, sample):
        """Token-by-token with the KV cache: feed what of block `block` is not cached yet (its image
        tokens, then the action), then generate frame block+1 one image position at a time, feeding each
        sampled position back (its last position is fed by the next step)."""
        L = self.layout
        dev = tokens.device
        have = 0 if cache.pos is None else int((cache.pos == block).sum())
        x = self._block_embedding(tokens, actions)
        h = self._feed(cache, x[:, have:], block, torch.arange(have, L.block, device=dev))
        mem = src = h[:, -1]
        out: list[torch.Tensor] = []
        for p in range(L.image_tokens):
            ids = self.sample_ids(self.image_logits(src).float(), sample)  # (B, S)
            out.append(ids)
            if p < L.image_tokens - 1:  # feed position p of frame block+1
                xe = self.embed_image(ids) + self.block_pos()[L.image_slice][p]
                src = self._feed(cache, xe[:, None], block + 1, torch.tensor([L.image_slice.start + p], device=dev))[:, 0]
        return torch.stack(out, dim=1), mem


def camera_poses(cameras) -> torch.Tensor:
    """(V, 4) float32 pose vectors (`gaia_gym.specs.camera_pose`) of (name, yaw_deg, anchor_x, anchor_y) cameras."""
    return torch.from_numpy(np.stack([camera_pose(*(tuple(c[1:4]) + (0.0, 0.5, 0.75)[len(c) - 1:])) for c in cameras]))


DEFAULT_TOP_K = 50  # imagination samples among the 50 likeliest codes (GAIA-1 samples top-k too)


def make_sampler(temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None):
    """logits (..., V) -> ids (...): argmax at temperature 0, else softmax sampling (optionally top-k)."""

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        lg = logits / temperature
        if top_k and top_k < lg.shape[-1]:
            # draw among the k best only: k random numbers per position instead of V (the draw was half
            # of an imagined step's time at V = 1000)
            vals, idx = lg.topk(top_k, dim=-1)
            pick = torch.multinomial(vals.softmax(-1).flatten(0, -2), 1, generator=generator)
            return idx.flatten(0, -2).gather(1, pick).view(logits.shape[:-1])
        probs = lg.softmax(-1).flatten(0, -2)
        ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return ids.view(logits.shape[:-1])

    return sample


def build_world_model(config: dict | WorldModelConfig) -> WorldModel:
    """World model from a config dataclass or its stored dict."""
    if isinstance(config, dict):
        config = WorldModelConfig(**config)
    return WorldModel(config)
