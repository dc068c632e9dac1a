"""The imagination engine: `n` imagined driving situations advanced together, one batched forward pass per
step. Torch tensors in and out (no numpy in the hot path); every rollout in gaia_gym goes through it: the
Gymnasium Env / VectorEnv and SB3 VecEnv adapters, the real-simulator env (which feeds observed frames),
the planner, the world-model evaluation, `imagine`, `play` and `bench`.

It is built from components: a `Backend` (the seam to a world model, `gaia_gym.backends`; e.g.
`TokenBackend(world_model, tokenizer)`) and an optional prompt bank of real context clips. A loaded model
directory (`gaia_gym.bundle.WorldBundle`) provides both:

    engine = Imagination(load_bundle(), n=64, seed=0)             # backend + prompt bank of a model dir
    engine = Imagination(TokenBackend(wm, tok), n=16)             # components; reset(context=...) only
    latents, features = engine.reset()
    out = engine.step(torch.zeros(64, 2))        # [steering, speed] in [-1, 1], see ActionCodec
    out.latents, out.reward, out.terminated, out.truncated, out.features
    frames = engine.frames()                      # (64, 64, 64, 3) uint8, decoded on demand

State per row: the current frame's latent (tokens (g, g) for the discrete backend), the backend's memory
over the last `window` steps (a KV cache; rows share block indices, so one cache serves the batch), the
features observed with the current frame, and a step counter. `reset` starts rows from real context
clips (GAIA-1's video prompt); `step(actions)` feeds the current frame with the action and samples the
next frame, with the reward and termination heads read from the same pass; `step(actions, observed=x)`
takes x as the next frame instead (the model's memory follows a real history). Frames are decoded only
when `frames()` is called.

`state()` / `restore()` save and restore everything (the random generator included); `branch(row, k)`
copies one situation into k rows and `EngineState.select(rows)` any rows into a new state (several
futures, or candidate action sequences for a planner).

Block indices: rows share one counter, and a reset row's prompt is placed at the blocks just before it,
so RoPE (relative) sees the same geometry wherever an episode starts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from gaia_gym.backends import Backend, Memory
from gaia_gym.errors import ConfigError, ImaginationError
from gaia_gym.models.layout import check_actions
from gaia_gym.models.world_model import DEFAULT_TOP_K
from gaia_gym.precision import autocast


@dataclass
class StepOutput:
    latents: torch.Tensor  # (n, *latent_shape): the new current frame (int64 tokens for the discrete backend)
    reward: torch.Tensor  # (n,) float32: reward of the transition
    terminated: torch.Tensor  # (n,) bool: the end head fired
    truncated: torch.Tensor  # (n,) bool: the row reached the horizon (and did not terminate)
    features: torch.Tensor  # (n, d) float32: hidden features observed with the new frame
    end_prob: torch.Tensor  # (n,) float32


@dataclass
class EngineState:
    """A snapshot of every row (tensors are copies)."""

    memory: Memory
    latents: torch.Tensor
    features: torch.Tensor
    steps: torch.Tensor
    block: int
    rng: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.latents)

    def select(self, rows) -> "EngineState":
        """The given rows (an index tensor/list, repeats allowed) as a new state."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.latents.device).reshape(-1)
        return EngineState(self.memory.select(idx), self.latents[idx].clone(), self.features[idx].clone(),
                           self.steps[idx.cpu()].clone(), self.block, self.rng.clone())

    def branch(self, row: int, k: int) -> "EngineState":
        """Row `row` copied into k rows."""
        return self.select(torch.full((k,), int(row), dtype=torch.long))


def check_count(n, name: str = "num_envs") -> int:
    """A positive integer (Python or numpy int; not a bool, float or string) -> int; else ConfigError."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(f"{name} must be a positive integer (1, 2, ...), got {n!r}")
    return int(n)


def _real(x, name: str, allowed: str, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    ok = isinstance(x, numbers.Real) and not isinstance(x, bool)
    if not ok or not math.isfinite(float(x)) or not lo <= float(x) <= hi or (lo_open and float(x) == lo):
        raise ConfigError(f"{name} must be {allowed}, got {x!r}")
    return float(x)


def check_sampling(temperature, top_k, guidance, end_threshold) -> tuple[float, int, float, float]:
    """The engine's sampling arguments, checked before the model loads (the envs call this before a model
    loads), as Python numbers (numpy scalars welcome): (temperature, top_k (None -> the default), guidance,
    end_threshold)."""
    temperature = _real(temperature, "temperature", "a finite number >= 0 (0 = always the likeliest code)", lo=0.0)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or top_k < 0):
        raise ConfigError(f"top_k must be None (the default, {DEFAULT_TOP_K}) or an integer >= 0 "
                          f"(0 = every code), got {top_k!r}")
    guidance = _real(guidance, "guidance", "a finite number > 0 (1 = no classifier-free guidance)", lo=0.0,
                     lo_open=True)
    end_threshold = _real(end_threshold, "end_threshold", "a probability in [0, 1] (1 = never terminate)",
                          lo=0.0, hi=1.0)
    return temperature, DEFAULT_TOP_K if top_k is None else int(top_k), guidance, end_threshold


def _check_settings(n, temperature, top_k, guidance, horizon, end_threshold) -> tuple[int, float, int, float, float]:
    """One-line errors for engine settings, at construction (not at the first step); the settings as
    Python numbers (n, temperature, top_k, guidance, end_threshold)."""
    n = check_count(n, "n (number of rows / envs)")
    temperature, top_k, guidance, end_threshold = check_sampling(temperature, top_k, guidance, end_threshold)
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1):
        raise ConfigError(f"horizon must be a positive integer or None (never truncate), got {horizon!r}")
    return n, temperature, top_k, guidance, end_threshold


class Imagination:
    """`n` imagined rows over one backend (see the module docstring).

    `model`: a `Backend`, or a `WorldBundle` (its backend, and its prompt bank unless `prompts` is given).
    `prompts`: a `PromptBank` of real context clips for `reset()` without a context (optional)."""

    def __init__(self, model, n: int = 1, temperature: float = 1.0, top_k: int = DEFAULT_TOP_K,
                 guidance: float = 1.0, horizon: int | None = None, end_threshold: float = 0.5,
                 seed: int | None = None, bf16: bool = True, prompts=None) -> None:
        n, temperature, top_k, guidance, end_threshold = _check_settings(n, temperature, top_k, guidance, horizon,
                                                                         end_threshold)
        backend = getattr(model, "backend", model)  # a WorldBundle carries one
        if not isinstance(backend, Backend):
            raise ConfigError(f"Imagination needs a world-model backend or a loaded model directory, got "
                              f"{type(model).__name__}")
        self.backend: Backend = backend
        self.prompts = prompts if prompts is not None else getattr(model, "prompts", None)
        self.n = int(n)
        self.device = backend.device
        self.temperature, self.top_k, self.guidance = float(temperature), int(top_k), float(guidance)
        self.horizon = horizon
        self.end_threshold = float(end_threshold)
        self.bf16 = bf16
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)
        self._sample = backend.sampler(self.temperature, self.top_k, self.generator)
        self.latent_shape = tuple(backend.latent_shape)
        self.feature_dim = backend.feature_dim
        self.action_dim = backend.action_dim
        self.context = self.prompts.context if self.prompts is not None else backend.window
        self.memory: Memory | None = None
        self.latents = torch.zeros(self.n, *self.latent_shape, dtype=backend.latent_dtype, device=self.device)
        self.features = torch.zeros(self.n, self.feature_dim, device=self.device)
        self.steps = torch.zeros(self.n, dtype=torch.long)
        self.block = 0
        if self.prompts is not None:
            self._prompt_latents = self.prompts.tokens.to(self.device)
            self._prompt_actions = self.prompts.actions.to(self.device)

    # ---- seeding and state ---------------------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Seed the engine's generator (None: from fresh OS entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed) % (2**63))

    def state(self) -> EngineState:
        self._require_reset()
        return EngineState(self.memory.clone(), self.latents.clone(), self.features.clone(), self.steps.clone(),
                           self.block, self.generator.get_state())

    def restore(self, state: EngineState, copy: bool = True) -> None:
        """Continue from `state` (its row count becomes the engine's). ``copy=False`` adopts the state's
        tensors instead of copying them (for a state nobody else holds, e.g. fresh from `branch`)."""
        c = (lambda t: t.clone()) if copy else (lambda t: t)
        self.memory = state.memory.clone() if copy else state.memory
        self.latents, self.features, self.steps = c(state.latents), c(state.features), c(state.steps)
        self.block, self.n = state.block, state.n
        self.generator.set_state(state.rng.clone())

    def branch(self, row: int, k: int) -> None:
        """Replace the engine's rows by k copies of row `row` (futures diverge through sampling)."""
        self.restore(self.state().branch(row, k), copy=False)

    def repeat_rows(self, k: int) -> None:
        """Replace every row r by k consecutive copies of it (n -> n*k rows: row r*k+j is copy j of r)."""
        self.restore(self.state().select(torch.arange(self.n).repeat_interleave(int(k))), copy=False)

    # ---- reset / step ------------------------------------------------------------------------------
    def _require_reset(self) -> None:
        if self.memory is None:
            raise ImaginationError("call reset() before step()")

    @torch.no_grad()
    def reset(self, rows: torch.Tensor | None = None, prompt: torch.Tensor | None = None,
              context: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start `rows` (default: all) from prompt clips `prompt` (indices into the prompt bank; default:
        drawn with the engine's generator), or from `context` = (latents (k, C, *L), actions (k, C, A)),
        e.g. real frames just seen (a partial reset needs C equal to the engine's context). A full reset
        from a context of k rows makes the engine k rows. Returns (latents (n, *L), features (n, d))."""
        full = rows is None or self.memory is None
        rows = None if full else torch.as_tensor(rows, device=self.device).long().reshape(-1)
        if rows is not None and rows.numel() == 0:
            return self.latents, self.features
        if context is not None:
            lat, act = (torch.as_tensor(x, device=self.device) for x in context)
            lat, act = lat.to(self.backend.latent_dtype), act.float()
            k = lat.shape[0] if full else len(rows)
            if (lat.dim() != 2 + len(self.latent_shape) or lat.shape[0] != k or tuple(lat.shape[2:]) != self.latent_shape
                    or act.shape != (*lat.shape[:2], self.action_dim)):
                raise ConfigError(f"context must be latents ({k}, C, {', '.join(map(str, self.latent_shape))}) and "
                                  f"actions ({k}, C, {self.action_dim}), got {tuple(lat.shape)} and {tuple(act.shape)}")
            if not full and lat.shape[1] != self.context:
                raise ConfigError(f"a partial reset needs a context of {self.context} frames, got {lat.shape[1]}")
            if full and k != self.n:
                self.n = k
                self.latents = torch.zeros(k, *self.latent_shape, dtype=self.backend.latent_dtype, device=self.device)
                self.features = torch.zeros(k, self.feature_dim, device=self.device)
                self.steps = torch.zeros(k, dtype=torch.long)
        else:
            if self.prompts is None:
                raise ImaginationError("this engine has no prompt bank: reset(context=(latents, actions)) instead")
            k = self.n if full else len(rows)
            if prompt is None:
                prompt = torch.randint(len(self._prompt_latents), (k,), generator=self.generator, device=self.device)
            prompt = torch.as_tensor(prompt, device=self.device).long()
            lat, act = self._prompt_latents[prompt], self._prompt_actions[prompt]
        C = lat.shape[1]
        if full:
            self.block = C - 1
        with autocast(self.device, self.bf16):
            memory, feats = self.backend.start(lat, act, start_block=self.block - (C - 1))
        if rows is None:
            rows = torch.arange(self.n, device=self.device)
            self.memory = memory
        else:
            self.memory.assign_rows(rows, memory)
        self.latents, self.features = self.latents.clone(), self.features.clone()  # outputs already handed out stay
        self.latents[rows] = lat[:, -1]
        self.features[rows] = feats.float()
        self.steps[rows.cpu()] = 0
        return self.latents, self.features

    @torch.no_grad()
    def step(self, actions, observed: torch.Tensor | None = None) -> StepOutput:
        """Advance every row by one step under `actions` (n, A) in [-1, 1] (clipped; NaN/inf raise).

        `observed` (n, *L): the frame that really came next (e.g. a real simulator's, encoded); it
        replaces the imagined one, so the model's memory follows the real history (nothing is sampled)."""
        self._require_reset()
        a = check_actions(actions, self.n, self.action_dim, self.device)
        if observed is not None:
            observed = torch.as_tensor(observed, device=self.device).to(self.backend.latent_dtype)
            if observed.shape != self.latents.shape:
                raise ConfigError(f"observed latents must have shape {tuple(self.latents.shape)}, got {tuple(observed.shape)}")
        with autocast(self.device, self.bf16):
            nxt, mem, reward, end = self.backend.step(self.memory, self.block, self.latents, a,
                                                      None if observed is not None else self._sample,
                                                      guidance=self.guidance)
        if observed is not None:
            nxt = observed
        self.block += 1
        self.steps += 1
        self.latents, self.features = nxt, mem.float()
        p = torch.sigmoid(end.float())
        terminated = p > self.end_threshold
        truncated = torch.zeros_like(terminated)
        if self.horizon is not None:
            truncated = (self.steps.to(self.device) >= self.horizon) & ~terminated
        return StepOutput(nxt, reward.float(), terminated, truncated, self.features, p)

    @torch.no_grad()
    def frames(self, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latents (default: the current frames) to uint8 (..., H, W, 3) on the engine's device."""
        t = self.latents if latents is None else latents
        lead = t.shape[: t.dim() - len(self.latent_shape)]
        with autocast(self.device, self.bf16):
            out = self.backend.decode(t.reshape(-1, *self.latent_shape))
        return out.reshape(*lead, *out.shape[1:])

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode uint8 frames (..., *frame_shape) (a rig: (..., V, H, W, 3)) to latents (..., *L) on the
        engine's device."""
        f = torch.as_tensor(frames, device=self.device)
        nd = len(self.backend.frame_shape)
        lead = f.shape[: f.dim() - nd]
        with autocast(self.device, self.bf16):
            out = self.backend.encode(f.reshape(-1, *f.shape[f.dim() - nd :]))
        return out.reshape(*lead, *out.shape[1:])
