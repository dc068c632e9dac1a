"""The imagination engine: `n` imagined driving situations advanced together, one batched forward pass per
step. Torch tensors in and out (no numpy in the hot path); every adapter (Gymnasium Env and VectorEnv,
SB3 VecEnv, planners) is a thin layer over it.

State per row: the current frame's tokens, the world model's KV cache over the last `window` steps
(rows share block indices, so one cache tensor serves the batch), the hidden features observed with the
current frame, and a step counter. `reset` starts rows from real context clips of the prompt bank
(GAIA-1's video prompt); `step(actions)` feeds the current frame with the action and samples the next
frame's tokens, with the reward and termination heads read from the same pass. Frames are decoded only
when `frames()` is called.

    engine = Imagination(load_bundle(), n=64, seed=0)
    tokens, features = engine.reset()
    out = engine.step(torch.zeros(64, 2))        # [steering, speed] in [-1, 1], see ActionCodec
    out.tokens, out.reward, out.terminated, out.truncated, out.features
    frames = engine.frames()                      # (64, 64, 64, 3) uint8, decoded on demand

`state()` / `restore()` save and restore everything (the random generator included); `branch(row, k)`
copies one situation into k rows (several futures, or candidate action sequences for a planner).

Block indices: rows share one counter, and a reset row's prompt is placed at the blocks just before it,
so RoPE (relative) sees the same geometry wherever an episode starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gaia_gym.bundle import WorldBundle
from gaia_gym.models.layout import check_actions
from gaia_gym.models.world_model import DEFAULT_TOP_K, KVCache, make_sampler
from gaia_gym.errors import ImaginationError
from gaia_gym.precision import autocast


@dataclass
class StepOutput:
    tokens: torch.Tensor  # (n, g, g) int64: the new current frame
    reward: torch.Tensor  # (n,) float32: reward of the transition
    terminated: torch.Tensor  # (n,) bool: the end head fired
    truncated: torch.Tensor  # (n,) bool: the row reached the horizon (and did not terminate)
    features: torch.Tensor  # (n, d) float32: hidden features observed with the new frame
    end_prob: torch.Tensor  # (n,) float32


@dataclass
class EngineState:
    """A snapshot of every row (tensors are copies)."""

    cache: KVCache
    tokens: torch.Tensor
    features: torch.Tensor
    steps: torch.Tensor
    block: int
    rng: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.tokens)

    def branch(self, row: int, k: int) -> "EngineState":
        """Row `row` copied into k rows."""
        idx = torch.full((k,), int(row), dtype=torch.long, device=self.tokens.device)
        return EngineState(self.cache.select(idx), self.tokens[idx].clone(), self.features[idx].clone(),
                           self.steps[idx.cpu()].clone(), self.block, self.rng.clone())


def _skip_sampling(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)


class Imagination:
    """`n` imagined rows over one world model (see the module docstring)."""

    def __init__(self, bundle: WorldBundle, n: int = 1, temperature: float = 1.0, top_k: int = DEFAULT_TOP_K,
                 guidance: float = 1.0, horizon: int | None = None, end_threshold: float = 0.5,
                 seed: int | None = None, bf16: bool = True) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.bundle = bundle
        self.wm = bundle.world_model.eval()
        self.tokenizer = bundle.tokenizer
        self.n = int(n)
        self.device = bundle.device
        self.temperature, self.top_k, self.guidance = float(temperature), int(top_k), float(guidance)
        self.horizon = horizon
        self.end_threshold = float(end_threshold)
        self.bf16 = bf16
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)
        self._sample = make_sampler(self.temperature, self.top_k, self.generator)
        cfg = self.wm.cfg
        self.grid, self.feature_dim, self.context = cfg.grid, cfg.d_model, bundle.prompts.context
        self.cache: KVCache | None = None
        self.tokens = torch.zeros(self.n, self.grid, self.grid, dtype=torch.long, device=self.device)
        self.features = torch.zeros(self.n, self.feature_dim, device=self.device)
        self.steps = torch.zeros(self.n, dtype=torch.long)
        self.block = 0
        self._prompt_tokens = bundle.prompts.tokens.to(self.device)
        self._prompt_actions = bundle.prompts.actions.to(self.device)

    # ---- seeding and state ---------------------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Seed the engine's generator (None: from fresh OS entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed) % (2**63))

    def state(self) -> EngineState:
        self._require_reset()
        return EngineState(self.cache.clone(), self.tokens.clone(), self.features.clone(), self.steps.clone(),
                           self.block, self.generator.get_state())

    def restore(self, state: EngineState, copy: bool = True) -> None:
        """Continue from `state` (its row count becomes the engine's). ``copy=False`` adopts the state's
        tensors instead of copying them (for a state nobody else holds, e.g. fresh from `branch`)."""
        c = (lambda t: t.clone()) if copy else (lambda t: t)
        self.cache = state.cache.clone() if copy else state.cache
        self.tokens, self.features, self.steps = c(state.tokens), c(state.features), c(state.steps)
        self.block, self.n = state.block, state.n
        self.generator.set_state(state.rng.clone())

    def branch(self, row: int, k: int) -> None:
        """Replace the engine's rows by k copies of row `row` (futures diverge through sampling)."""
        self.restore(self.state().branch(row, k), copy=False)

    # ---- reset / step ------------------------------------------------------------------------------
    def _require_reset(self) -> None:
        if self.cache is None:
            raise ImaginationError("call reset() before step()")

    @torch.no_grad()
    def reset(self, rows: torch.Tensor | None = None, prompt: torch.Tensor | None = None,
              context: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start `rows` (default: all) from prompt clips `prompt` (indices into the prompt bank; default:
        drawn with the engine's generator), or from `context` = (tokens (k, C, g, g), actions (k, C, A)),
        e.g. real frames just seen (a partial reset needs C equal to the prompt bank's context). Returns
        (tokens (n, g, g), features (n, d)) of all rows."""
        full = rows is None or self.cache is None
        rows = torch.arange(self.n, device=self.device) if full else torch.as_tensor(rows, device=self.device).long()
        if rows.numel() == 0:
            return self.tokens, self.features
        if context is not None:
            tok, act = (torch.as_tensor(x, device=self.device) for x in context)
            tok, act = tok.long(), act.float()
            if tok.shape[0] != len(rows) or tok.shape[2:] != (self.grid, self.grid) or act.shape[:2] != tok.shape[:2]:
                raise ValueError(f"context must be tokens ({len(rows)}, C, {self.grid}, {self.grid}) and actions "
                                 f"({len(rows)}, C, 2), got {tuple(tok.shape)} and {tuple(act.shape)}")
            if not full and tok.shape[1] != self.context:
                raise ValueError(f"a partial reset needs a context of {self.context} frames, got {tok.shape[1]}")
        else:
            if prompt is None:
                prompt = torch.randint(len(self._prompt_tokens), (len(rows),), generator=self.generator,
                                       device=self.device)
            prompt = torch.as_tensor(prompt, device=self.device).long()
            tok, act = self._prompt_tokens[prompt], self._prompt_actions[prompt]
        C = tok.shape[1]
        if full:
            self.block = C - 1
        with autocast(self.device, self.bf16):
            cache = KVCache()
            feats = self.wm.prefill(cache, tok, act, start_block=self.block - (C - 1))
        if full:
            self.cache = cache
        else:
            self.cache.assign_rows(rows, cache)
        self.tokens, self.features = self.tokens.clone(), self.features.clone()  # outputs already handed out stay
        self.tokens[rows] = tok[:, -1]
        self.features[rows] = feats.float()
        self.steps[rows.cpu()] = 0
        return self.tokens, self.features

    @torch.no_grad()
    def step(self, actions, observed: torch.Tensor | None = None) -> StepOutput:
        """Advance every row by one step under `actions` (n, 2) in [-1, 1] (clipped; NaN/inf raise).

        `observed` (n, g, g): the frame that really came next (e.g. a real simulator's, tokenized); it
        replaces the imagined one, so the model's memory follows the real history (nothing is sampled)."""
        self._require_reset()
        a = check_actions(actions, self.n, self.wm.cfg.action_dim, self.device)
        sample = self._sample if observed is None else _skip_sampling
        with autocast(self.device, self.bf16):
            nxt, mem, reward, end = self.wm.step(self.cache, self.block, self.tokens, a, sample,
                                                 guidance=self.guidance)
        if observed is not None:
            nxt = torch.as_tensor(observed, device=self.device).long()
            if nxt.shape != self.tokens.shape:
                raise ValueError(f"observed tokens must have shape {tuple(self.tokens.shape)}, got {tuple(nxt.shape)}")
        self.block += 1
        self.steps += 1
        self.tokens, self.features = nxt, mem.float()
        p = torch.sigmoid(end.float())
        terminated = p > self.end_threshold
        truncated = torch.zeros_like(terminated)
        if self.horizon is not None:
            truncated = (self.steps.to(self.device) >= self.horizon) & ~terminated
        return StepOutput(nxt, reward.float(), terminated, truncated, self.features, p)

    @torch.no_grad()
    def frames(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Decode tokens (default: the current frames) to uint8 (n, H, W, 3) on the engine's device."""
        t = self.tokens if tokens is None else tokens
        with autocast(self.device, self.bf16):
            return self.tokenizer.decode(t)
