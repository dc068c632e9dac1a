"""The conditioning interface: what a world model can be told about a scene besides the ego's action.

One owner for every condition a world model consumes, whichever world it drives in:

- **metadata**: categorical scene fields (e.g. highway-env's scenario, lane count, traffic density), one
  value index per field per clip (-1: not given, the field's learned null);
- **agents**: the other road users as a set of boxes per time step (B, T, N, F) in the spec's
  `agent_fields` (presence, position, velocity, heading, size relative to the ego, normalised); the box
  row of block t describes frame t+1, the frame that block predicts;
- **text**: one embedding (B, E) per clip from a text encoder (`gaia_gym.models.text`; any module mapping
  strings to E-wide embeddings).

`ConditionSpec` (stored in the world model's config) says which conditions a model takes, their
vocabularies and widths, how they enter the transformer (``mode``: adaLN modulation from a pooled
condition vector, or cross-attention to condition tokens) and the training dropouts:

- each condition dropped independently per clip (``drop``; all of them together with ``drop_all``), so
  classifier-free guidance works per condition: a dropped condition is its learned null embedding;
- GAIA-2's agent dropouts: ``field_dropout`` hides single fields of single boxes, ``instance_dropout``
  hides whole vehicles (a random subset, the same vehicles for the whole clip: boxes carry track
  numbers); ``agent_horizon``: in that share of clips the boxes stop after a random block, so a model
  told where vehicles are at the start carries on by itself;
- ``agent_map_scale`` > 0: the boxes are also drawn into the frame's token grid (the *agent map*, GAIA-2's
  boxes projected into the camera, here a top view): each present box is splatted bilinearly onto the
  token cells around where it appears (presence, velocity, heading and size as channels), and the map's
  patch rows are projected and added to the image input of the block whose frame they describe. The view
  is world-aligned: a box at normalised (x, y) appears at image (u, v) = origin + scale * (x, y), with
  the ego's place in the frame (the origin) set by the scene's first metadata field (``agent_map_origins``,
  e.g. highway-env's per-scenario camera centring; ``agent_map_default`` when it is not given). Position
  then needs no learning from a pooled vector: a vehicle asked at a cell is an input at that cell;
- ``scratch``: in that share of clips the first k frames are hidden (a learned missing-frame input; k from
  1 to all of them, the targets stay the real frames), so the model learns to generate a scene from its
  conditions alone (GAIA-2's generation from scratch), as a scratch reset asks it to.

`Conditions` is the batch every model call takes; `ConditionEncoder` turns it into condition tokens
(B, T, C, d) with a key mask, and a pooled vector (B, T, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from einops import rearrange
from torch import nn

from gaia_gym.errors import ConfigError
from gaia_gym.specs import AGENT_FIELDS, DEFAULT_SIZE_M

NAMES = ("metadata", "agents", "text")
AGENT_LIMIT = 10_000.0  # metres / m/s: far past any scene a model was trained on, far from float32 overflow


@dataclass(frozen=True)
class ConditionSpec:
    metadata: tuple = ()  # ((field, (value, ...)), ...)
    agents: int = 0  # boxes per time step (0: no agent condition)
    agent_fields: tuple[str, ...] = AGENT_FIELDS
    text_dim: int = 0  # width of the text embeddings (0: no text condition)
    mode: str = "cross"  # "cross" (cross-attention to condition tokens) or "adaln" (pooled vector -> adaLN)
    drop: float = 0.5  # training: each condition dropped per clip with this probability ...
    drop_all: float = 0.1  # ... and all of them (with the action) together with this one
    field_dropout: float = 0.3  # training: single box fields hidden
    instance_dropout: float = 0.3  # training: whole vehicles hidden, per clip
    agent_horizon: float = 0.5  # training: share of clips whose boxes stop after a random block
    scratch: float = 0.3  # training: share of clips whose first k frames are hidden
    agent_map_scale: float = 0.0  # image units per normalised box unit (0: no agent map, boxes as a set only)
    agent_map_origins: tuple = ()  # ((value of the first metadata field, u, v), ...): the ego's place in the frame
    agent_map_default: tuple = (0.5, 0.5)  # the ego's place when that field is not given

    def __post_init__(self) -> None:
        try:
            meta = tuple((str(k), tuple(str(v) for v in vals)) for k, vals in self.metadata)
        except (TypeError, ValueError):
            raise ConfigError(f"metadata must be ((field, (value, ...)), ...), got {self.metadata!r}") from None
        object.__setattr__(self, "metadata", meta)
        object.__setattr__(self, "agent_fields", tuple(str(f) for f in self.agent_fields))
        if self.mode not in ("cross", "adaln"):
            raise ConfigError(f"condition mode must be 'cross' or 'adaln', got {self.mode!r}")
        for name in ("drop", "drop_all", "field_dropout", "instance_dropout", "agent_horizon", "scratch"):
            v = getattr(self, name)
            if not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v}")
        if self.agents and self.agent_fields[0] != "presence":
            raise ConfigError("the first agent field must be 'presence'")
        try:
            origins = tuple((str(v), float(u), float(w)) for v, u, w in self.agent_map_origins)
            default = tuple(float(x) for x in self.agent_map_default)
        except (TypeError, ValueError):
            raise ConfigError("agent_map_origins must be ((value, u, v), ...) and agent_map_default (u, v)") from None
        object.__setattr__(self, "agent_map_origins", origins)
        object.__setattr__(self, "agent_map_default", default)
        if self.agent_map_scale:
            if not self.agents or self.agent_fields[1:3] != ("x", "y"):
                raise ConfigError("the agent map needs agent boxes whose fields start presence, x, y")
            known = set(self.metadata[0][1]) if self.metadata else set()
            bad = [v for v, _, _ in origins if v not in known]
            if bad:
                raise ConfigError(f"agent_map_origins names {bad[0]!r}, not a value of the first metadata field")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ConditionSpec | None":
        if not d:
            return None
        return cls(**d)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, on in zip(NAMES, (bool(self.metadata), self.agents > 0, self.text_dim > 0)) if on)

    @property
    def fields(self) -> dict[str, tuple[str, ...]]:
        return dict(self.metadata)

    def origin_table(self) -> torch.Tensor:
        """(values of the first metadata field + 1, 2): the ego's image place (u, v) per value, then the
        default (for a field not given, id -1)."""
        vals = self.metadata[0][1] if self.metadata else ()
        place = {v: (u, w) for v, u, w in self.agent_map_origins}
        return torch.tensor([place.get(v, self.agent_map_default) for v in vals] + [self.agent_map_default],
                            dtype=torch.float32)

    # ---- user input -> tensors (one-line errors) ---------------------------------------------
    def metadata_ids(self, values: dict | None) -> np.ndarray:
        """{field: value} -> (F,) int64 value indices (-1 for fields not given)."""
        out = np.full(len(self.metadata), -1, dtype=np.int64)
        if not values:
            return out
        if not isinstance(values, dict):
            raise ConfigError(f"metadata must be a dict of field -> value, got {type(values).__name__}")
        fields = self.fields
        for k, v in values.items():
            if k not in fields:
                raise ConfigError(f"unknown metadata field {k!r}; this model knows {', '.join(fields) or 'none'}")
            vals = fields[k]
            if isinstance(v, float) and v.is_integer() and str(v) not in vals:
                v = int(v)  # lanes 4.0 is lanes 4 (values are stored as strings: "4")
            if str(v) not in vals:
                raise ConfigError(f"unknown value {v!r} for metadata field {k!r}; choose from {', '.join(vals)}")
            out[list(fields).index(k)] = vals.index(str(v))
        return out

    def check_agents(self, boxes) -> np.ndarray:
        """A list of vehicles (N', F) in `agent_fields` without presence (x, y, vx, vy, cos_h, sin_h, length,
        width; trailing fields may be left out: heading 0, size 5 x 2 m) -> (agents, F) raw boxes."""
        if not self.agents:
            raise ConfigError("this world model takes no agent boxes")
        width = len(self.agent_fields) - 1
        default = np.array([0, 0, 0, 0, 1, 0, *DEFAULT_SIZE_M], dtype=np.float64)[:width]
        try:
            rows = [np.asarray(r, dtype=np.float64) for r in boxes] if isinstance(boxes, (list, tuple)) else None
            if rows is not None and rows and all(r.ndim == 1 and 2 <= len(r) <= width for r in rows):
                boxes = [np.concatenate([r, default[len(r):]]) for r in rows]  # rows may leave out trailing fields
            a = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"vehicles must be a list of [x, y, vx, vy, ...] rows, got {boxes!r}"[:200]) from None
        if a.size == 0:
            return np.zeros((self.agents, width + 1), dtype=np.float32)
        if a.ndim != 2 or not 2 <= a.shape[1] <= width:
            raise ConfigError(f"vehicles must be a (N, 2..{width}) list of rows "
                              f"[{', '.join(self.agent_fields[1:])}], got shape {a.shape}")
        if len(a) > self.agents:
            raise ConfigError(f"at most {self.agents} vehicles can be placed, got {len(a)}")
        if not np.isfinite(a).all():
            raise ConfigError("vehicles must be finite numbers")
        if np.abs(a).max() > AGENT_LIMIT:  # huge boxes overflow the float32 embedding into NaN probabilities
            raise ConfigError(f"vehicles: every value must be within +-{AGENT_LIMIT:g} (metres and m/s relative to "
                              f"the ego), got {np.abs(a).max():g}")
        full = np.tile(default, (len(a), 1))
        full[:, : a.shape[1]] = a
        out = np.zeros((self.agents, width + 1), dtype=np.float32)
        out[: len(a), 0] = 1.0
        out[: len(a), 1:] = full
        return out


@dataclass
class Conditions:
    """A batch of conditions (any may be None: not given). Shapes: metadata (B, F) int64 (-1 = field
    not given), agents (B, T, N, F) float normalised boxes of the frames each block predicts, agent_keep
    (B, T, N, F) float 1/0 (field dropout; None = all kept), text (B, E) float; `dropped` {name: (B,) or
    (B, T) bool} rows where a condition is replaced by its null."""

    metadata: torch.Tensor | None = None
    agents: torch.Tensor | None = None
    agent_keep: torch.Tensor | None = None
    text: torch.Tensor | None = None
    dropped: dict = field(default_factory=dict)

    def select(self, idx) -> "Conditions":
        t = (lambda x: None if x is None else x[idx])
        return Conditions(t(self.metadata), t(self.agents), t(self.agent_keep), t(self.text),
                          {k: v[idx] for k, v in self.dropped.items()})

    def blocks(self, sl) -> "Conditions":
        """The time slice `sl` of the per-block parts."""
        t = (lambda x: None if x is None else x[:, sl])
        return replace(self, agents=t(self.agents), agent_keep=t(self.agent_keep),
                       dropped={k: (v[:, sl] if v.dim() == 2 else v) for k, v in self.dropped.items()})

    def without(self, names) -> "Conditions":
        """The same conditions with `names` dropped (their nulls) in every row: a guidance contrast."""
        d = dict(self.dropped)
        B = self.batch
        for n in names:
            d[n] = torch.ones(B, dtype=torch.bool, device=self.device)
        return replace(self, dropped=d)

    @property
    def batch(self) -> int:
        for x in (self.metadata, self.agents, self.text):
            if x is not None:
                return x.shape[0]
        return 0

    @property
    def device(self):
        for x in (self.metadata, self.agents, self.text):
            if x is not None:
                return x.device
        return None


def _row_mask(mask, B: int, T: int, device) -> torch.Tensor:
    """(B,) or (B, T) or None -> (B, T) bool."""
    if mask is None:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    mask = mask.to(device)
    return mask[:, None].expand(B, T) if mask.dim() == 1 else mask


class ConditionEncoder(nn.Module):
    """`Conditions` -> condition tokens (B, T, C, d), key mask (B, T, C) and a pooled vector (B, T, d).

    Tokens: [metadata] [no-agents, box 1..N] [text] (those the spec has). A dropped metadata or text is its
    learned null token; dropped boxes are masked out, leaving the learned no-agents token. The pooled
    vector is the sum of the metadata and text tokens and of the present boxes' embeddings (scaled by
    1/sqrt(1 + count)), plus the no-agents token. With an agent map (`agent_map`), the boxes drawn into the
    (grid x grid) token grid, per patch of `patch` x `patch` cells."""

    def __init__(self, spec: ConditionSpec, d: int, grid: int = 0, patch: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.grid, self.patch = grid, patch
        if spec.agent_map_scale:
            if not grid or grid % patch:
                raise ConfigError(f"the agent map needs a token grid divisible by the patch, got {grid} and {patch}")
            self.register_buffer("map_origin", spec.origin_table(), persistent=False)
            self.map_proj = nn.Linear(patch * patch * self.map_channels, d)
            self.map_null = nn.Parameter(torch.zeros(d))
        self.meta = nn.ModuleList([nn.Embedding(len(vals) + 1, d) for _, vals in spec.metadata])
        self.meta_null = nn.Parameter(torch.zeros(d)) if spec.metadata else None
        nf = len(spec.agent_fields)
        if spec.agents:
            self.box = nn.Sequential(nn.Linear(2 * nf, d), nn.GELU(), nn.Linear(d, d))
            self.no_agents = nn.Parameter(torch.zeros(d))
        if spec.text_dim:
            self.text = nn.Linear(spec.text_dim, d)
            self.text_null = nn.Parameter(torch.zeros(d))
        self.norm = nn.LayerNorm(d)
        for p in (self.meta_null, getattr(self, "no_agents", None), getattr(self, "text_null", None),
                  getattr(self, "map_null", None)):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    @property
    def map_channels(self) -> int:
        """Agent-map channels per cell: presence, then every box field after x and y."""
        return len(self.spec.agent_fields) - 2

    def agent_map(self, cond: Conditions | None, B: int, T: int, device) -> torch.Tensor | None:
        """(B, T, P, d) what the agent map adds to each image position of each block, or None (no map in
        this spec). Rows whose agents are dropped (or not given) get the learned map null; a box whose
        position is hidden by field dropout is left out of the map (it still enters as a set member)."""
        s = self.spec
        if not s.agent_map_scale:
            return None
        g, p = self.grid, self.patch
        null = self.map_null.to(device).expand(B, T, (g // p) ** 2, -1)
        if cond is None or cond.agents is None:
            return null
        dtype = self.map_null.dtype
        a = cond.agents.to(device, dtype)  # (B, T, N, F)
        keep = torch.ones_like(a) if cond.agent_keep is None else cond.agent_keep.to(device, dtype)
        ids = torch.full((B,), -1, dtype=torch.long, device=device) if cond.metadata is None or not s.metadata \
            else cond.metadata[:, 0].to(device)
        origin = self.map_origin[torch.where(ids < 0, len(self.map_origin) - 1, ids)]  # (B, 2)
        uv = origin[:, None, None].to(dtype) + s.agent_map_scale * a[..., 1:3]  # (B, T, N, 2) in [0, 1] inside
        on = ((a[..., 0] > 0.5) & (keep[..., 1] > 0.5) & (keep[..., 2] > 0.5)).to(dtype)  # (B, T, N)
        feat = torch.cat([torch.ones_like(a[..., :1]), (a * keep)[..., 3:]], -1) * on[..., None]  # (B, T, N, C)
        c = uv * g - 0.5  # cell coordinates (cell centres at integers)
        c0 = torch.floor(c)
        f = c - c0
        grid = torch.zeros(B * T, g * g, self.map_channels, device=device, dtype=dtype)
        for dx in (0, 1):
            for dy in (0, 1):
                cx, cy = c0[..., 0] + dx, c0[..., 1] + dy
                w = (f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
                ok = (cx >= 0) & (cx < g) & (cy >= 0) & (cy < g)
                cell = (cy.clamp(0, g - 1) * g + cx.clamp(0, g - 1)).long().flatten(0, 1)  # (B*T, N)
                val = (feat * (w * ok)[..., None]).flatten(0, 1)  # (B*T, N, C)
                grid.scatter_add_(1, cell[..., None].expand(-1, -1, self.map_channels), val)
        grid = rearrange(grid, "(b t) (h p1 w p2) c -> b t (h w) (p1 p2 c)", b=B, h=g // p, p1=p, p2=p)
        out = self.map_proj(grid)
        drop = _row_mask(cond.dropped.get("agents"), B, T, device)
        return torch.where(drop[..., None, None], null.to(out.dtype), out)

    @property
    def tokens_per_block(self) -> int:
        s = self.spec
        return (1 if s.metadata else 0) + ((1 + s.agents) if s.agents else 0) + (1 if s.text_dim else 0)

    def forward(self, cond: Conditions | None, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.spec
        cond = cond or Conditions()
        toks, masks = [], []
        pooled = None
        dtype = self.norm.weight.dtype

        def add(tok, mask):
            toks.append(tok)
            masks.append(mask)

        if s.metadata:
            drop = _row_mask(cond.dropped.get("metadata"), B, T, device)
            if cond.metadata is None:
                m = self.meta_null.expand(B, T, -1)
            else:
                ids = cond.metadata.to(device)
                e = sum(emb(torch.where(ids[:, i] < 0, emb.num_embeddings - 1, ids[:, i]))
                        for i, emb in enumerate(self.meta))  # (B, d)
                m = torch.where(drop[..., None], self.meta_null, e[:, None].expand(B, T, -1))
            add(m[:, :, None], torch.ones(B, T, 1, dtype=torch.bool, device=device))
            pooled = m
        if s.agents:
            N = s.agents
            none = self.no_agents.expand(B, T, 1, -1)
            if cond.agents is None:
                boxes = torch.zeros(B, T, N, self.box[0].in_features, device=device)
                valid = torch.zeros(B, T, N, dtype=torch.bool, device=device)
                emb = self.box(boxes)
            else:
                a = cond.agents.to(device, dtype)
                keep = torch.ones_like(a) if cond.agent_keep is None else cond.agent_keep.to(device, dtype)
                keep = keep.clone()
                keep[..., 0] = 1.0  # presence is never hidden by field dropout (instance dropout hides rows)
                emb = self.box(torch.cat([a * keep, keep], -1))
                drop = _row_mask(cond.dropped.get("agents"), B, T, device)
                valid = (a[..., 0] > 0.5) & ~drop[..., None]
            count = valid.sum(-1, keepdim=True).to(dtype)
            agg = (emb * valid[..., None]).sum(2) / torch.sqrt(1.0 + count)
            add(torch.cat([none, emb], 2), torch.cat([torch.ones(B, T, 1, dtype=torch.bool, device=device), valid], 2))
            pooled = agg + self.no_agents if pooled is None else pooled + agg + self.no_agents
        if s.text_dim:
            drop = _row_mask(cond.dropped.get("text"), B, T, device)
            if cond.text is None:
                t = self.text_null.expand(B, T, -1)
            else:
                e = self.text(cond.text.to(device, dtype))
                t = torch.where(drop[..., None], self.text_null, e[:, None].expand(B, T, -1))
            add(t[:, :, None], torch.ones(B, T, 1, dtype=torch.bool, device=device))
            pooled = t if pooled is None else pooled + t
        tokens = self.norm(torch.cat(toks, 2))
        return tokens, torch.cat(masks, 2), pooled


def training_conditions(spec: ConditionSpec, B: int, T: int, dev, metadata: torch.Tensor | None,
                        boxes: torch.Tensor | None, tracks: torch.Tensor | None, text: torch.Tensor | None,
                        generator: torch.Generator | None = None) -> tuple[Conditions, torch.Tensor, torch.Tensor]:
    """A training batch's conditions with the spec's dropouts drawn: (conditions, dropped action rows
    (B,) bool (all-dropped clips), hidden frames (B, T) bool (generation from scratch)).

    boxes (B, T, N, F) normalised, tracks (B, T, N) int track numbers (-1: none) for instance dropout."""
    r = lambda *shape: torch.rand(*shape, generator=generator).to(dev)  # noqa: E731
    every = r(B) < spec.drop_all
    dropped = {n: (r(B) < spec.drop) | every for n in spec.names}
    keep = None
    if boxes is not None:
        keep = (r(*boxes.shape) >= spec.field_dropout).to(boxes.dtype)
        if tracks is not None and spec.instance_dropout > 0:  # hide whole vehicles (by track) for the clip
            hide_track = r(B, 64) < spec.instance_dropout  # track numbers 0..63 per episode suffice here
            t = tracks.long().clamp(min=0) % 64
            hidden = torch.gather(hide_track[:, None].expand(B, boxes.shape[1], 64), 2, t) & (tracks >= 0)
            boxes = boxes.clone()
            boxes[hidden] = 0.0
        if spec.agent_horizon > 0:  # boxes stop after a random block in some clips
            stop = torch.randint(1, T + 1, (B,), generator=generator).to(dev)
            cut = (r(B) < spec.agent_horizon)[:, None] & (torch.arange(T, device=dev)[None] >= stop[:, None])
            dropped["agents"] = dropped["agents"][:, None] | cut
    hidden_frames = torch.zeros(B, T, dtype=torch.bool, device=dev)
    if spec.scratch > 0 and T > 1:
        k = torch.randint(1, T + 1, (B,), generator=generator).to(dev)  # up to every frame (as at a scratch reset)
        on = r(B) < spec.scratch
        hidden_frames = on[:, None] & (torch.arange(T, device=dev)[None] < k[:, None])
    cond = Conditions(metadata=metadata, agents=boxes, agent_keep=keep, text=text, dropped=dropped)
    return cond, every, hidden_frames


__all__ = ["ConditionSpec", "Conditions", "ConditionEncoder", "training_conditions", "NAMES"]
