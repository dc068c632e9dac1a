"""The flow-matching world model (GAIA-2's second stage, scaled down): a space-time factorised transformer
over continuous latents that generates the next frame by integrating a learned velocity field, conditioned
by adaptive LayerNorm on the flow time, the step size and the ego action.

Sequence and streams. A frame's latent (C, h, w) is cut into P = (h/patch)^2 tokens. Every frame j of a
clip appears twice: its *clean* latent (the context) and a *noised* copy x_tau = tau*x + (1-tau)*eps
(tau = 0 is noise, GAIA-2's convention). Each block does spatial attention inside a frame, temporal
attention over frames at the same token position (causal, RoPE over the frame index, QK-norm), and an MLP,
each modulated by adaLN-Zero from that frame's condition. Temporal masks: a clean frame j sees the clean
frames <= j; the noised copy of frame j sees the clean frames < j and itself. So one clip trains every
context length 0 .. T-1 at once (context 0: generation from scratch) and the context stays clean, as in
GAIA-2; at inference the clean frames' keys/values are the KV cache (`FlowMemory`).

Conditions (one vector per frame, summed): flow time tau (sinusoidal -> MLP); the step size of the
shortcut objective (an embedding: flow matching d = 0, or d = 1, 1/2, ..., 2^-(shortcut_levels-1)); the
action: a clean frame j carries a_j (the action taken at j), the noised copy of frame j carries a_{j-1}
(the action that led to it). So the clean frame j's features have seen frame j and a_j -- the world
model's memory feature, read by the reward and termination heads exactly as the discrete model's
block memory. Actions are dropped (replaced by a learned null) with `action_dropout`, jointly for both
uses, for classifier-free guidance.

Objectives. Rectified flow: target velocity v = x - eps, L2, with GAIA-2's bimodal logit-normal tau
(p 0.8 at (0.5, 1.4), p 0.2 at (-3, 1): the near-noise mode teaches layout and ego-motion). Shortcut
(Frans et al. 2024): for `shortcut_fraction` of the rows the model at step size 2d must match two of its
own steps of size d (stop-gradient), with tau on the grid of the step; so 1, 2 and 4 sampling steps work
from one network. Reward (two-hot symlog bins) and termination heads on the clean stream.

Shapes: latents (B, T, C, h, w) float, actions (B, T, A) in [-1, 1]. B batch, T frames, P tokens per
frame, d width, H heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gaia_gym.errors import ConfigError
from gaia_gym.models.world_model import TeacherForced, rope, symexp, symlog, two_hot


@dataclass(frozen=True)
class FlowConfig:
    """Architecture, conditioning and objective settings (stored in every flow world-model file)."""

    latent_channels: int = 64  # the VAE's latent channels
    grid: int = 4  # the VAE's latent grid side
    patch: int = 1  # latent patch side per token: (grid/patch)^2 tokens of latent_channels*patch^2 floats
    action_dim: int = 2  # [steering, speed] in [-1, 1] (see ActionCodec)
    context: int = 8  # frames per training clip = the attention window
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    action_dropout: float = 0.2  # training: a_t replaced by the learned null action (enables CFG)
    shortcut_fraction: float = 0.25  # rows trained with the self-consistency (shortcut) target; 0 = plain flow
    shortcut_levels: int = 7  # step sizes 1, 1/2, ..., 1/64 (their half steps down to 1/128 ~ flow matching)
    tau_modes: tuple[float, ...] = (0.8, 0.5, 1.4, 0.2, -3.0, 1.0)  # (p, mu, sigma) x 2: bimodal logit-normal
    sampling_steps: int = 2  # default steps per imagined frame (1, 2, 4, ... <= 2^(levels-1))
    sampling_embedding: str = "shortcut"  # default step-size embedding when sampling: "shortcut" (d = 1/steps) or "flow" (d = 0)
    reward_bins: int = 41
    reward_range: float = 5.0
    reward_weight: float = 1.0
    end_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau_modes", tuple(float(x) for x in self.tau_modes))
        if self.grid % self.patch:
            raise ConfigError(f"patch {self.patch} does not divide the latent grid {self.grid}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model {self.d_model} must split into {self.n_heads} heads of even width")
        if len(self.tau_modes) != 6 or abs(self.tau_modes[0] + self.tau_modes[3] - 1) > 1e-6:
            raise ConfigError(f"tau_modes must be (p1, mu1, sigma1, p2, mu2, sigma2) with p1 + p2 = 1, got {self.tau_modes}")
        if self.context < 2:
            raise ConfigError(f"context must be >= 2 frames, got {self.context}")
        if not 0 <= self.shortcut_fraction < 1:
            raise ConfigError(f"shortcut_fraction must be in [0, 1), got {self.shortcut_fraction}")
        check_steps(self.sampling_steps, self)
        if self.sampling_embedding not in ("shortcut", "flow"):
            raise ConfigError(f"sampling_embedding must be 'shortcut' or 'flow', got {self.sampling_embedding!r}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.grid // self.patch) ** 2

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch**2

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.grid, self.grid)


FLOW_PRESETS = {
    "tiny": dict(latent_channels=4, grid=4, patch=2, context=4, d_model=32, n_layers=2, n_heads=2, reward_bins=9,
                 shortcut_levels=4),
    "default": {},
}


MAX_SAMPLING_STEPS = 64  # a frame's cost grows linearly with the steps; 64 is far past any gain in quality


def check_steps(steps, cfg: FlowConfig | None = None) -> int:
    """A number of sampling steps: a power of two from 1 to MAX_SAMPLING_STEPS. Those up to
    2^(shortcut_levels-1) sample with their shortcut step embedding; finer ones run as flow-matching steps
    (see `step_index`). Other counts are refused: the step sizes were trained on halvings only."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sampling steps must be a positive integer, got {steps!r}")
    if steps & (steps - 1) or steps > MAX_SAMPLING_STEPS:
        raise ConfigError(f"sampling steps must be a power of two from 1 to {MAX_SAMPLING_STEPS} (the step sizes "
                          f"were trained on halvings 1, 1/2, 1/4, ...), got {steps}")
    return steps


def step_index(steps: int, cfg: FlowConfig, plain: bool = False) -> int:
    """The step-size embedding index of `steps` uniform steps: k+1 for d = 2^-k, 0 (flow matching, d = 0)
    when `plain` or when d is finer than the trained levels."""
    k = math.log2(steps)
    if plain or k != int(k) or int(k) >= cfg.shortcut_levels:
        return 0
    return int(k) + 1


def sample_tau(n: int, cfg: FlowConfig, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """GAIA-2's bimodal logit-normal flow times (n,) in (0, 1)."""
    p1, m1, s1, _p2, m2, s2 = cfg.tau_modes
    first = torch.rand(n, generator=generator, device=device) < p1
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(torch.where(first, m1 + s1 * z, m2 + s2 * z))


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (..., dim) of t (...) in [0, 1] (scaled by 1000, as diffusion models do)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([ang.cos(), ang.sin()], -1)


# ----------------------------------------------------------------------------------------------
# memory: the clean frames' keys/values per layer
# ----------------------------------------------------------------------------------------------
class FlowMemory:
    """Keys/values of the clean context frames for every layer's temporal attention, in preallocated
    buffers (B, P, H, capacity, hd); the live frames occupy ``[start, end)`` and `pos` (T,) holds their
    block indices. A pass writes its frames' keys after `end` and attends over the buffer in place (no
    copy of the window); `commit` keeps the clean ones, `trim` (the sliding window) only moves `start`,
    and a full buffer is compacted (once every few steps) or grown. Implements the engine's `Memory`."""

    def __init__(self, capacity: int = 0) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.start = self.end = 0
        self.pos: torch.Tensor | None = None
        self.capacity = int(capacity)

    @property
    def length(self) -> int:
        return self.end - self.start

    def keys(self, layer: int) -> torch.Tensor:
        return self.k[layer][:, :, :, self.start : self.end]

    def values(self, layer: int) -> torch.Tensor:
        return self.v[layer][:, :, :, self.start : self.end]

    def reserve(self, m: int) -> None:
        """Room for m more frames after `end` (compacting or growing the buffers)."""
        if not self.k or self.end + m <= self.k[0].shape[3]:
            return
        n, cap = self.length, self.k[0].shape[3]
        if n + m > cap:
            cap = 2 * (n + m)
        for bufs in (self.k, self.v):
            for i, b in enumerate(bufs):
                new = b.new_empty(*b.shape[:3], cap, b.shape[4])
                new[:, :, :, :n] = b[:, :, :, self.start : self.end]
                bufs[i] = new
        self.start, self.end = 0, n

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the frames' keys/values (B, P, H, F, hd) after the live ones (`reserve` first); returns views
        of the live frames followed by them, (B, P, H, T + F, hd)."""
        F = k.shape[3]
        if len(self.k) <= layer:
            cap = max(self.capacity, self.end + 2 * F)
            self.k.append(k.new_empty(*k.shape[:3], cap, k.shape[4]))
            self.v.append(v.new_empty(*v.shape[:3], cap, v.shape[4]))
        self.k[layer][:, :, :, self.end : self.end + F] = k
        self.v[layer][:, :, :, self.end : self.end + F] = v
        return self.k[layer][:, :, :, self.start : self.end + F], self.v[layer][:, :, :, self.start : self.end + F]

    def commit(self, pos: torch.Tensor) -> None:
        """Keep the first len(pos) frames just written (the clean ones), at block indices `pos`."""
        self.end += len(pos)
        self.pos = pos if self.pos is None else torch.cat([self.pos, pos])

    def trim(self, keep: int) -> None:
        """Keep the last `keep` frames (the sliding window)."""
        if self.length > keep:
            cut = self.length - keep
            self.start += cut
            self.pos = self.pos[cut:]

    def clone(self) -> "FlowMemory":
        return self.select(slice(None))

    def select(self, index) -> "FlowMemory":
        """The rows `index` (a tensor, or a slice) as a new memory (copies of the live frames)."""
        m = FlowMemory(self.k[0].shape[3] if self.k else self.capacity)
        m.k = [self.keys(i)[index].clone(memory_format=torch.contiguous_format) for i in range(len(self.k))]
        m.v = [self.values(i)[index].clone(memory_format=torch.contiguous_format) for i in range(len(self.v))]
        m.start, m.end, m.pos = 0, self.length, self.pos
        return m

    def adopt(self, other: "FlowMemory") -> None:
        """Become `other` (its buffers, not copies)."""
        self.k, self.v, self.start, self.end, self.pos = other.k, other.v, other.start, other.end, other.pos

    def assign_rows(self, rows: torch.Tensor, other: "FlowMemory") -> None:
        if other.length != self.length or (self.pos is not None and not torch.equal(other.pos, self.pos)):
            raise ConfigError("assign_rows needs a memory over the same frames")
        for i in range(len(self.k)):
            self.k[i][rows, :, :, self.start : self.end] = other.keys(i).to(self.k[i].dtype)
            self.v[i][rows, :, :, self.start : self.end] = other.values(i).to(self.v[i].dtype)


# ----------------------------------------------------------------------------------------------
# transformer pieces
# ----------------------------------------------------------------------------------------------
class QKNormAttention(nn.Module):
    """Multi-head attention projections with RMS-normalised queries and keys (QK-norm)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm, self.k_norm = nn.RMSNorm(self.hd), nn.RMSNorm(self.hd)
        self.proj = nn.Linear(d, d)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, L, d) -> q, k, v (N, H, L, hd), q and k normalised."""
        q, k, v = rearrange(self.qkv(x), "n l (three h e) -> three n h l e", three=3, h=self.h)
        if q.dtype == torch.float32:
            return self.q_norm(q), self.k_norm(k), v
        # under bf16 autocast q, k arrive in bf16 while the norms' weights stay float32: rms_norm would warn
        # of the mismatch and fall back to its slow path; normalise in float32 (its fused kernel), cast back
        return self.q_norm(q.float()).to(q.dtype), self.k_norm(k.float()).to(k.dtype), v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(y, "n h l e -> n l (h e)"))


class FlowBlock(nn.Module):
    """Spatial attention, temporal attention and MLP, each under adaLN-Zero modulation."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.spatial = QKNormAttention(d, cfg.n_heads)
        self.temporal = QKNormAttention(d, cfg.n_heads)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.mod = nn.Linear(d, 9 * d)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x, cond, q_pos, mask, memory: FlowMemory | None = None, layer: int = 0):
        """x (B, F, P, d) frames, cond (B, F, d); q_pos (F,) the frames' positions (the cached keys carry
        their rotations already); mask (F, T + F) bool over [memory's frames, x's frames]. With `memory`,
        x's keys/values are written after its live frames (`FlowMemory.write`) and attention runs over
        both in place."""
        B, Fr, P, d = x.shape
        m = self.mod(F.silu(cond))[:, :, None]  # (B, F, 1, 9d)
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = m.chunk(9, dim=-1)
        # spatial: inside each frame
        h = self.norm(x) * (1 + c1) + s1
        q, k, v = self.spatial.qkv_heads(h.reshape(B * Fr, P, d))
        y = self.spatial.out(F.scaled_dot_product_attention(q, k, v))
        x = x + g1 * y.view(B, Fr, P, d)
        # temporal: each token position over frames (the memory's first)
        h = self.norm(x) * (1 + c2) + s2
        q, k, v = self.temporal.qkv_heads(rearrange(h, "b f p d -> (b p) f d"))
        q, k = rope(q, q_pos), rope(k, q_pos)
        if memory is not None:
            k, v = memory.write(layer, *(rearrange(t, "(b p) h f e -> b p h f e", b=B) for t in (k, v)))
            k, v = k.flatten(0, 1), v.flatten(0, 1)  # views (B*P, H, T + F, hd)
            q = q.to(k.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + g2 * rearrange(self.temporal.out(y), "(b p) f d -> b f p d", b=B)
        h = self.norm(x) * (1 + c3) + s3
        return x + g3 * self.mlp(h)


@dataclass
class FlowOutput:
    velocity: torch.Tensor | None  # (B, Tn, C, h, w) for the noised frames
    memory: torch.Tensor | None  # (B, Tc, d) pooled clean-frame features
    reward: torch.Tensor | None  # (B, Tc) expected reward of step j -> j+1
    end_logit: torch.Tensor | None  # (B, Tc)


class FlowWorldModel(nn.Module):
    """Action-conditioned next-latent generator by flow matching, with reward and termination heads."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, P = cfg.d_model, cfg.tokens_per_frame
        self.inp = nn.Linear(cfg.token_dim, d)
        self.pos_emb = nn.Parameter(torch.randn(P, d) * 0.02)  # spatial position of a token
        self.tau_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.step_emb = nn.Embedding(cfg.shortcut_levels + 1, d)  # 0: d = 0 (flow matching); k+1: d = 2^-k
        self.act_mlp = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.null_action = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList([FlowBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = nn.LayerNorm(d, elementwise_affine=False)
        self.final_mod = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.token_dim)
        self.feat_norm = nn.LayerNorm(d)
        self.reward_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.reward_bins))
        self.end_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.register_buffer("bins", torch.linspace(-cfg.reward_range, cfg.reward_range, cfg.reward_bins),
                             persistent=False)
        for m in (self.final_mod, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.reward_head[-1].weight)

    # ---- plumbing ---------------------------------------------------------------------------------
    def tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, P, d) embedded tokens."""
        p = self.cfg.patch
        t = rearrange(latents, "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=p, p2=p)
        return self.inp(t.to(self.pos_emb.dtype)) + self.pos_emb

    def untokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P, C p^2) -> (B, T, C, h, w)."""
        p, g = self.cfg.patch, self.cfg.grid
        return rearrange(x, "b t (h w) (c p1 p2) -> b t c (h p1) (w p2)", h=g // p, p1=p, p2=p)

    def condition(self, tau: torch.Tensor, step: torch.Tensor, actions: torch.Tensor,
                  null: torch.Tensor | None) -> torch.Tensor:
        """tau (B, T), step indices (B, T) long, actions (B, T, A), null (B, T) bool or None -> (B, T, d)."""
        a = self.act_mlp(actions.float())
        if null is not None:
            a = torch.where(null[..., None], self.null_action.to(a.dtype), a)
        return self.tau_mlp(timestep_features(tau, 256)) + self.step_emb(step) + a

    @staticmethod
    def temporal_mask(past_pos, clean_pos, noisy_pos) -> torch.Tensor:
        """(Tc + Tn, Tp + Tc + Tn) bool: clean frames see past and clean frames at positions <= theirs;
        a noised frame sees past and clean frames strictly before it, and itself."""
        dev = clean_pos.device
        ctx = torch.cat([past_pos, clean_pos])
        qc = ctx[None, :] <= clean_pos[:, None]
        qn = ctx[None, :] < noisy_pos[:, None]
        Tc, Tn = len(clean_pos), len(noisy_pos)
        left = torch.cat([qc, qn], 0)  # (Tc+Tn, Tp+Tc): the past precedes every query by position
        right = torch.zeros(Tc + Tn, Tn, dtype=torch.bool, device=dev)
        right[Tc:] = torch.eye(Tn, dtype=torch.bool, device=dev)
        return torch.cat([left, right], 1)

    def run(self, clean: torch.Tensor | None, clean_cond: torch.Tensor | None, clean_pos: torch.Tensor,
            noisy: torch.Tensor | None, noisy_cond: torch.Tensor | None, noisy_pos: torch.Tensor,
            memory: FlowMemory | None = None, write: bool = False) -> FlowOutput:
        """One pass over Tc clean frames (B, Tc, C, h, w) and Tn noised ones, attending to `memory`'s
        frames; ``write`` appends the clean frames' keys/values to `memory`."""
        parts, conds = [], []
        if clean is not None:
            parts.append(self.tokens(clean))
            conds.append(clean_cond)
        if noisy is not None:
            parts.append(self.tokens(noisy))
            conds.append(noisy_cond)
        x, cond = torch.cat(parts, 1), torch.cat(conds, 1)
        Tc = 0 if clean is None else clean.shape[1]
        dev = x.device
        past_pos = memory.pos if memory is not None and memory.length else torch.zeros(0, dtype=torch.long, device=dev)
        mask = self.temporal_mask(past_pos, clean_pos, noisy_pos)
        q_pos = torch.cat([clean_pos, noisy_pos])
        if memory is not None:
            memory.reserve(x.shape[1])
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond, q_pos, mask, memory, i)
        if write and Tc:
            memory.commit(clean_pos)
        out = FlowOutput(None, None, None, None)
        if Tc:
            feats = self.feat_norm(x[:, :Tc].mean(2).float())
            out.memory, out.reward = feats, self.expected_reward(feats)
            out.end_logit = self.end_head(feats).squeeze(-1).float()
        if noisy is not None:
            xn, cn = x[:, Tc:], cond[:, Tc:]
            shift, scale = self.final_mod(F.silu(cn))[:, :, None].chunk(2, -1)
            out.velocity = self.untokens(self.out(self.norm_f(xn) * (1 + scale) + shift).float())
        return out

    def reward_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.reward_head(feats).float()

    def expected_reward(self, feats: torch.Tensor) -> torch.Tensor:
        return symexp((self.reward_logits(feats).softmax(-1) * self.bins).sum(-1))

    # ---- training ---------------------------------------------------------------------------------
    @staticmethod
    def noisy_actions(actions: torch.Tensor, null: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised copy of frame j carries a_{j-1}: actions (B, T, A) and their drop mask (B, T) shifted
        by one frame, with the null action before the first frame."""
        prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
        prev_null = torch.cat([torch.ones_like(null[:, :1]), null[:, :-1]], 1)
        return prev, prev_null

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: latents (B, T, C, h, w), actions (B, T, A), reward (B, T), terminated (B, T)."""
        cfg = self.cfg
        x, actions = batch["latents"].float(), batch["actions"].float()
        B, T = x.shape[:2]
        dev = x.device
        null = torch.rand(B, T, device=dev) < cfg.action_dropout if self.training else torch.zeros(B, T, dtype=torch.bool, device=dev)
        prev_actions, prev_null = self.noisy_actions(actions, null)
        pos = torch.arange(T, device=dev)
        ones = torch.ones(B, T, device=dev)
        zeros = torch.zeros(B, T, dtype=torch.long, device=dev)
        clean_cond = self.condition(ones, zeros, actions, null)
        # flow-matching rows and shortcut rows
        n_sc = int(round(cfg.shortcut_fraction * B)) if self.training else 0
        eps = torch.randn_like(x)
        tau = sample_tau(B * T, cfg, device=dev).view(B, T)
        step = zeros.clone()
        target = x - eps
        if n_sc:
            k = torch.randint(0, cfg.shortcut_levels, (n_sc, T), device=dev)  # d = 2^-k
            dsz = 2.0 ** (-k.float())
            grid = torch.floor(torch.rand(n_sc, T, device=dev) / dsz)  # tau on the grid of the step
            tau[:n_sc] = grid * dsz
            step[:n_sc] = k + 1
            half_idx = torch.where(k + 1 < cfg.shortcut_levels, k + 2, torch.zeros_like(k))  # finest half -> flow
            with torch.no_grad():  # the target: two half steps of the model itself
                xs = tau[:n_sc, :, None, None, None] * x[:n_sc] + (1 - tau[:n_sc, :, None, None, None]) * eps[:n_sc]
                half = (dsz / 2)[:, :, None, None, None]
                ctx = FlowMemory()  # the clean stream once: both half steps attend to its keys/values
                self.run(x[:n_sc], clean_cond[:n_sc], pos, None, None, pos[:0], memory=ctx, write=True)
                acts, acts_null = prev_actions[:n_sc], prev_null[:n_sc]

                def velocity(xn, t):
                    return self.run(None, None, pos[:0], xn, self.condition(t, half_idx, acts, acts_null), pos,
                                    memory=ctx).velocity

                v1 = velocity(xs, tau[:n_sc])
                v2 = velocity(xs + half * v1, tau[:n_sc] + dsz / 2)
                target = target.clone()
                target[:n_sc] = (v1 + v2) / 2
        xt = tau[:, :, None, None, None] * x + (1 - tau[:, :, None, None, None]) * eps
        noisy_cond = self.condition(tau, step, prev_actions, prev_null)
        out = self.run(x, clean_cond, pos, xt, noisy_cond, pos)
        err = (out.velocity - target).pow(2).flatten(2).mean(-1)  # (B, T)
        flow_loss = err[n_sc:].mean()
        loss = flow_loss if not n_sc else (err.mean())
        r_target = two_hot(symlog(batch["reward"].float()), self.bins)
        r_loss = -(r_target * self.reward_logits(out.memory).log_softmax(-1)).sum(-1).mean()
        e_loss = F.binary_cross_entropy_with_logits(out.end_logit, batch["terminated"].float())
        total = loss + cfg.reward_weight * r_loss + cfg.end_weight * e_loss
        metrics = {"flow_loss": flow_loss.item(), "reward_loss": r_loss.item(), "end_loss": e_loss.item(),
                   "reward_mae": (out.reward - batch["reward"].float()).abs().mean().item()}
        if n_sc:
            metrics["shortcut_loss"] = err[:n_sc].mean().item()
        return total, metrics

    @torch.no_grad()
    def teacher_forced(self, latents: torch.Tensor, actions: torch.Tensor, seed: int = 0) -> TeacherForced:
        """Evaluation: one pass over real clips (B, T, C, h, w) with every frame's noised copy at a fixed
        flow time (0.1, 0.3, 0.5, 0.7, 0.9 in turn) and seeded noise: the flow-matching error per frame
        (plain flow step embedding) summed as "val_flow_loss", and the clean stream's reward/end."""
        B, T = latents.shape[:2]
        dev = latents.device
        x, actions = latents.float(), actions.float()
        g = torch.Generator(device=dev).manual_seed(seed)
        eps = torch.randn(x.shape, generator=g, device=dev)
        tau = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], device=dev).repeat(T)[:T].expand(B, T)
        prev, prev_null = self.noisy_actions(actions, torch.zeros(B, T, dtype=torch.bool, device=dev))
        zeros = torch.zeros(B, T, dtype=torch.long, device=dev)
        pos = torch.arange(T, device=dev)
        xt = tau[:, :, None, None, None] * x + (1 - tau[:, :, None, None, None]) * eps
        out = self.run(x, self.condition(torch.ones(B, T, device=dev), zeros, actions, None), pos,
                       xt, self.condition(tau, zeros, prev, prev_null), pos)
        err = (out.velocity - (x - eps)).pow(2).flatten(2).mean(-1)  # (B, T)
        return TeacherForced({"val_flow_loss": float(err.sum())}, err.numel(), out.reward, out.end_logit)

    # ---- generation -------------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Clean frames a generated frame attends to (a training clip's last frame sees context - 1)."""
        return self.cfg.context - 1

    @torch.no_grad()
    def prefill(self, memory: FlowMemory, latents: torch.Tensor, actions: torch.Tensor, start_block: int = 0) -> torch.Tensor:
        """Feed the clean context frames (B, T, C, h, w) except the last (fed by the first `step`, with its
        action) at block indices start_block..; returns the last fed frame's features (zeros if T == 1)."""
        B, T = latents.shape[:2]
        if T == 1:
            return torch.zeros(B, self.cfg.d_model, device=latents.device)
        lat, act = latents[:, -self.window - 1 : -1], actions[:, -self.window - 1 : -1]
        n = lat.shape[1]
        pos = torch.arange(start_block + T - 1 - n, start_block + T - 1, device=latents.device)
        cond = self.condition(torch.ones(B, n, device=lat.device), torch.zeros(B, n, dtype=torch.long, device=lat.device),
                              act, None)
        out = self.run(lat, cond, pos, None, None, pos[:0], memory=memory, write=True)
        memory.trim(self.window)
        return out.memory[:, -1]

    @torch.no_grad()
    def step(self, memory: FlowMemory, block: int, current: torch.Tensor, actions: torch.Tensor,
             noise: torch.Tensor | None, steps: int, guidance: float = 1.0, plain: bool = False):
        """Feed clean frame `block` (current (B, C, h, w)) with its action (B, A) and generate frame block+1
        from `noise` (B, C, h, w) in `steps` Euler steps of the velocity field (the shortcut step size;
        `plain` uses the flow-matching step embedding). ``noise=None``: only feed the frame (the next one is
        observed). Returns (next latents or None, features (B, d), reward (B,), end logit (B,)).
        `guidance` > 1: classifier-free guidance on the action."""
        B = current.shape[0]
        dev = current.device
        cur_pos = torch.tensor([block], device=dev)
        nxt_pos = torch.tensor([block + 1], device=dev)
        one = torch.ones(B, 1, device=dev)
        zero = torch.zeros(B, 1, dtype=torch.long, device=dev)
        act = actions[:, None].float()
        cfg_on = guidance != 1.0 and noise is not None
        if cfg_on:  # rows [conditional; unconditional] over copies of the memory
            mem = memory.select(torch.cat([torch.arange(B, device=dev)] * 2))
            act = torch.cat([act, act])
            null = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=dev), torch.ones(B, 1, dtype=torch.bool, device=dev)])
            cur = torch.cat([current, current])
            one, zero = torch.cat([one, one]), torch.cat([zero, zero])
        else:
            mem, null, cur = memory, None, current
        clean_cond = self.condition(one, zero, act, null)
        if noise is None:
            out = self.run(cur[:, None], clean_cond, cur_pos, None, None, nxt_pos[:0], memory=mem, write=True)
            mem.trim(self.window)
            return None, out.memory[:, 0], out.reward[:, 0], out.end_logit[:, 0]
        x = torch.cat([noise, noise]) if cfg_on else noise
        d = 1.0 / steps
        sidx = torch.full_like(zero, step_index(steps, self.cfg, plain))
        feats = reward = end = None
        for i in range(steps):
            tau = torch.full(one.shape, i * d, device=dev)
            cond = self.condition(tau, sidx, act, null)
            if i == 0:  # the clean frame and the first velocity in one pass
                out = self.run(cur[:, None], clean_cond, cur_pos, x[:, None], cond, nxt_pos, memory=mem, write=True)
                feats, reward, end = out.memory[:, 0], out.reward[:, 0], out.end_logit[:, 0]
                mem.trim(self.window)
            else:
                out = self.run(None, None, cur_pos[:0], x[:, None], cond, nxt_pos, memory=mem)
            v = out.velocity[:, 0]
            if cfg_on:
                v = v[B:] + guidance * (v[:B] - v[B:])
                v = torch.cat([v, v])
            x = x + d * v
        if cfg_on:
            x, feats, reward, end = x[:B], feats[:B], reward[:B], end[:B]
            memory.adopt(mem.select(torch.arange(B, device=dev)))
        return x, feats, reward, end


def build_flow_model(config: dict | FlowConfig) -> FlowWorldModel:
    """Flow world model from a config dataclass or its stored dict."""
    if isinstance(config, dict):
        config = FlowConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return FlowWorldModel(config)


__all__ = ["FLOW_PRESETS", "FlowConfig", "FlowMemory", "FlowOutput", "FlowWorldModel", "build_flow_model",
           "MAX_SAMPLING_STEPS", "check_steps", "sample_tau", "step_index"]
