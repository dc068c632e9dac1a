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
class SceneRows:
    """Per-row scene conditions of an engine over a conditioned world model (`gaia_gym.models.conditions`):
    metadata (n, F) value ids (-1: not given), text / negative (n, E) embeddings (a zero-norm row: none),
    agents (n, N, F) raw boxes (presence, x, y m, vx, vy m/s, ...) that condition the next
    `agents_left` (n,) steps, moved at their relative velocity each step, and `hidden` (n,) bool: the
    current frame is hidden (a scene generated from its conditions alone)."""

    metadata: torch.Tensor
    text: torch.Tensor | None
    negative: torch.Tensor | None
    agents: torch.Tensor | None
    agents_left: torch.Tensor
    hidden: torch.Tensor

    @classmethod
    def empty(cls, spec, n: int, device) -> "SceneRows":
        z = (lambda w: torch.zeros(n, w, device=device)) if spec.text_dim else (lambda w: None)
        ag = torch.zeros(n, spec.agents, len(spec.agent_fields), device=device) if spec.agents else None
        return cls(torch.full((n, len(spec.metadata)), -1, dtype=torch.long, device=device), z(spec.text_dim),
                   z(spec.text_dim), ag, torch.zeros(n, dtype=torch.long, device=device),
                   torch.zeros(n, dtype=torch.bool, device=device))

    def select(self, idx) -> "SceneRows":
        t = (lambda x: None if x is None else x[idx].clone())
        return SceneRows(t(self.metadata), t(self.text), t(self.negative), t(self.agents), t(self.agents_left),
                         t(self.hidden))

    def assign(self, rows, other: "SceneRows") -> None:
        for name in ("metadata", "text", "negative", "agents", "agents_left", "hidden"):
            mine = getattr(self, name)
            if mine is not None:
                mine[rows] = getattr(other, name)

    def conditions(self, spec, blocks: int = 1):
        """This step's `Conditions` (agents repeated over `blocks` blocks) and the agents' dropped mask."""
        from gaia_gym.models.conditions import Conditions
        from gaia_gym.specs import normalise_boxes

        dropped = {}
        agents = None
        if self.agents is not None:
            agents = normalise_boxes(self.agents)  # on the rows' device, no host round trip
            agents = agents[:, None].expand(-1, blocks, -1, -1)
            dropped["agents"] = self.agents_left <= 0
        text = None
        if self.text is not None:
            text = self.text
            dropped["text"] = self.text.norm(dim=-1) == 0
        return Conditions(metadata=self.metadata, agents=agents, text=text, dropped=dropped)

    def advance(self, dt: float) -> None:
        """One step on: boxes move at their relative velocity, one agent step is used up."""
        if self.agents is not None:
            self.agents[..., 1:3] += self.agents[..., 3:5] * dt * (self.agents[..., :1] > 0.5)
            self.agents_left = (self.agents_left - 1).clamp(min=0)
        self.hidden = torch.zeros_like(self.hidden)


@dataclass
class EngineState:
    """A snapshot of every row (tensors are copies)."""

    memory: Memory
    latents: torch.Tensor
    features: torch.Tensor
    steps: torch.Tensor
    block: int
    rng: torch.Tensor
    scene: SceneRows | None = None

    @property
    def n(self) -> int:
        return len(self.latents)

    def select(self, rows) -> "EngineState":
        """The given rows (an index tensor/list, repeats allowed) as a new state."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.latents.device).reshape(-1)
        return EngineState(self.memory.select(idx), self.latents[idx].clone(), self.features[idx].clone(),
                           self.steps[idx.cpu()].clone(), self.block, self.rng.clone(),
                           None if self.scene is None else self.scene.select(idx))

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


def check_sampling(temperature, top_k, guidance, end_threshold) -> tuple[float, int | None, float, float]:
    """The engine's sampling arguments, checked before the model loads (the envs call this before a model
    loads), as Python numbers (numpy scalars welcome): (temperature, top_k (None stays None: the backend's
    `default_top_k`), guidance, end_threshold)."""
    temperature = _real(temperature, "temperature", "a finite number >= 0 (0 = always the likeliest code)", lo=0.0)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or top_k < 0):
        raise ConfigError(f"top_k must be None (the model's default) or an integer >= 0 "
                          f"(0 = every code), got {top_k!r}")
    guidance = _real(guidance, "guidance", "a finite number > 0 (1 = no classifier-free guidance)", lo=0.0,
                     lo_open=True)
    end_threshold = _real(end_threshold, "end_threshold", "a probability in [0, 1] (1 = never terminate)",
                          lo=0.0, hi=1.0)
    return temperature, None if top_k is None else int(top_k), guidance, end_threshold


def check_guide(guide, spec) -> tuple[str, ...]:
    """The conditions classifier-free guidance contrasts: "action" and any of the model's conditions."""
    from gaia_gym.models.conditions import NAMES

    if isinstance(guide, str):
        guide = tuple(g.strip() for g in guide.split(",") if g.strip())
    guide = tuple(guide)
    have = ("action", *(spec.names if spec is not None else ()))
    bad = [g for g in guide if g not in have]
    if bad:
        known = [n for n in NAMES if n in have]
        raise ConfigError(f"guidance cannot contrast {bad[0]!r}: this model's conditions are "
                          f"{', '.join(['action', *known])}")
    if not guide:
        raise ConfigError("guide must name at least one condition (e.g. 'action' or 'text')")
    return guide


def check_horizon(horizon) -> int | None:
    """A horizon: a positive integer (numpy and integral floats welcome) or None (never truncate)."""
    if horizon is None:
        return None
    if (isinstance(horizon, bool) or not isinstance(horizon, numbers.Real) or not math.isfinite(horizon)
            or int(horizon) != horizon or horizon < 1):
        raise ConfigError(f"horizon must be a positive integer or None (never truncate), got {horizon!r}")
    return int(horizon)


def _check_settings(n, temperature, top_k, guidance, end_threshold) -> tuple[int, float, int | None, float, float]:
    """One-line errors for engine settings, at construction (not at the first step); the settings as
    Python numbers (n, temperature, top_k, guidance, end_threshold). The horizon is `check_horizon`'s."""
    n = check_count(n, "n (number of rows / envs)")
    temperature, top_k, guidance, end_threshold = check_sampling(temperature, top_k, guidance, end_threshold)
    return n, temperature, top_k, guidance, end_threshold


class Imagination:
    """`n` imagined rows over one backend (see the module docstring).

    `model`: a `Backend`, or a `WorldBundle` (its backend, and its prompt bank unless `prompts` is given).
    `prompts`: a `PromptBank` of real context clips for `reset()` without a context (optional)."""

    def __init__(self, model, n: int = 1, temperature: float = 1.0, top_k: int | None = None,
                 guidance: float = 1.0, horizon: int | None = None, end_threshold: float = 0.5,
                 seed: int | None = None, bf16: bool = True, prompts=None, guide: tuple[str, ...] = ("action",),
                 step_seconds: float = 0.2) -> None:
        n, temperature, top_k, guidance, end_threshold = _check_settings(n, temperature, top_k, guidance, end_threshold)
        horizon = check_horizon(horizon)
        backend = getattr(model, "backend", model)  # a WorldBundle carries one
        if not isinstance(backend, Backend):
            raise ConfigError(f"Imagination needs a world-model backend or a loaded model directory, got "
                              f"{type(model).__name__}")
        self.backend: Backend = backend
        self.prompts = prompts if prompts is not None else getattr(model, "prompts", None)
        self.n = int(n)
        self.device = backend.device
        if top_k is None:  # the sampler's default is the backend's (a flow model ignores top_k)
            top_k = getattr(backend, "default_top_k", 0)
        self.temperature, self.top_k, self.guidance = float(temperature), int(top_k), float(guidance)
        self.horizon = horizon
        self.end_threshold = float(end_threshold)
        self.bf16 = bf16
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)
        self._sample = backend.sampler(self.temperature, self.top_k, self.generator)
        self.spec = getattr(backend, "conditions", None)  # the world model's ConditionSpec, or None
        self.guide = check_guide(guide, self.spec)
        self.step_seconds = float(step_seconds)  # moves placed agent boxes between steps
        self.scene: SceneRows | None = None
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
                           self.block, self.generator.get_state(),
                           None if self.scene is None else self.scene.select(torch.arange(self.n, device=self.device)))

    def restore(self, state: EngineState, copy: bool = True) -> None:
        """Continue from `state` (its row count becomes the engine's). ``copy=False`` adopts the state's
        tensors instead of copying them (for a state nobody else holds, e.g. fresh from `branch`)."""
        c = (lambda t: t.clone()) if copy else (lambda t: t)
        self.memory = state.memory.clone() if copy else state.memory
        self.latents, self.features, self.steps = c(state.latents), c(state.features), c(state.steps)
        self.block, self.n = state.block, state.n
        self.generator.set_state(state.rng.clone())
        if state.scene is not None:
            self.scene = state.scene.select(torch.arange(state.n, device=self.device)) if copy else state.scene

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
              context: tuple[torch.Tensor, torch.Tensor] | None = None, scene: SceneRows | None = None,
              scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Start `rows` (default: all) from prompt clips `prompt` (indices into the prompt bank; default:
        drawn with the engine's generator), or from `context` = (latents (k, C, *L), actions (k, C, A)),
        e.g. real frames just seen (a partial reset needs C equal to the engine's context). A full reset
        from a context of k rows makes the engine k rows. Returns (latents (n, *L), features (n, d)).

        A conditioned world model (`spec`): `scene` holds the rows' conditions (`SceneRows`, k rows;
        default: none given); `scratch=True` hides the context frames, so the first imagined frame is
        generated from the conditions alone (GAIA-2's generation from scratch)."""
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
        kw = {}
        if self.spec is not None:
            sc = scene if scene is not None else SceneRows.empty(self.spec, lat.shape[0], self.device)
            if len(sc.metadata) != lat.shape[0]:
                raise ConfigError(f"scene conditions for {len(sc.metadata)} rows, the reset has {lat.shape[0]}")
            sc.hidden = torch.full((lat.shape[0],), bool(scratch), device=self.device)
            kw = {"cond": sc.conditions(self.spec, C), "hidden": sc.hidden[:, None].expand(-1, C)}
            if full or self.scene is None:
                self.scene = sc if full else SceneRows.empty(self.spec, self.n, self.device)
            if not full:
                self.scene.assign(rows, sc)
        elif scene is not None or scratch:
            raise ConfigError("this world model takes no scene conditions (metadata, agents, text)")
        with autocast(self.device, self.bf16):
            memory, feats = self.backend.start(lat, act, start_block=self.block - (C - 1), **kw)
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
        """Advance every row by one step under `actions` (n, A) in [-1, 1] (clipped). A float32 (n, A) tensor
        on the engine's device is trusted as validated (the envs check actions at their boundary); anything
        else is checked here (NaN/inf, shapes: ConfigError).

        `observed` (n, *L): the frame that really came next (e.g. a real simulator's, encoded); it
        replaces the imagined one, so the model's memory follows the real history (nothing is sampled)."""
        self._require_reset()
        a = actions
        if (isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.device == self.device
                and tuple(a.shape) == (self.n, self.action_dim)):
            a = a.clamp(-1, 1)  # a float tensor is trusted (the envs validated it): no finiteness check, no sync
        else:  # lists, numpy arrays, other dtypes or devices from direct callers: checked and converted here
            a = check_actions(actions, self.n, self.action_dim, self.device)
        if observed is not None:
            observed = torch.as_tensor(observed, device=self.device).to(self.backend.latent_dtype)
            if observed.shape != self.latents.shape:
                raise ConfigError(f"observed latents must have shape {tuple(self.latents.shape)}, got {tuple(observed.shape)}")
        kw = self._scene_step()
        with autocast(self.device, self.bf16):
            nxt, mem, reward, end = self.backend.step(self.memory, self.block, self.latents, a,
                                                      None if observed is not None else self._sample,
                                                      guidance=self.guidance, **kw)
        if self.scene is not None:
            self.scene.advance(self.step_seconds)
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

    def _scene_step(self) -> dict:
        """The backend's scene keywords for this step (none for a model without conditions)."""
        if self.spec is None:
            return {}
        sc = self.scene if self.scene is not None else SceneRows.empty(self.spec, self.n, self.device)
        cond = sc.conditions(self.spec)
        kw = {"cond": cond, "hidden": sc.hidden, "guide_action": "action" in self.guide}
        if self.guidance != 1.0:
            drop = [g for g in self.guide if g != "action"]
            contrast = cond.without(drop)
            if "text" in drop and sc.negative is not None:  # GAIA-1: the negative prompt replaces "no text"
                neg = sc.negative.norm(dim=-1) > 0
                contrast.text = torch.where(neg[:, None], sc.negative, cond.text)
                contrast.dropped["text"] = contrast.dropped["text"] & ~neg
            kw["contrast"] = contrast
        return kw

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


SCENE_OPTIONS = ("metadata", "text", "negative", "vehicles", "agent_steps")


def scene_rows(bundle, k: int, prompts: torch.Tensor | None = None, scene: dict | None = None,
               device=None) -> SceneRows | None:
    """`SceneRows` for k rows of a conditioned model from a user's scene options: the prompt clips'
    recorded metadata (`prompts`: indices into the bundle's prompt bank), then `scene` on top:
    ``metadata`` {field: value}, ``text`` / ``negative`` strings (embedded by the bundle's text encoder),
    ``vehicles`` rows [x, y, vx, vy, ...] relative to the ego, ``agent_steps`` (steps they condition,
    default 1). A model without conditions: None (any scene option is a one-line ConfigError)."""
    scene = dict(scene or {})
    spec = bundle.conditions
    bad = [key for key in scene if key not in SCENE_OPTIONS]
    if bad:
        raise ConfigError(f"unknown scene option {bad[0]!r}; the options are {', '.join(SCENE_OPTIONS)}")
    if spec is None:
        if scene:
            raise ConfigError(f"this world model takes no scene conditions (got {', '.join(scene)})")
        return None
    dev = device if device is not None else bundle.device
    rows = SceneRows.empty(spec, k, dev)
    bank = bundle.prompts.metadata
    if prompts is not None and bank is not None and spec.metadata:
        rows.metadata[:] = bank.to(dev)[torch.as_tensor(prompts, device=dev).long()]
    if scene.get("metadata") is not None:
        ids = torch.from_numpy(spec.metadata_ids(scene["metadata"])).to(dev)
        rows.metadata[:] = torch.where(ids >= 0, ids, rows.metadata)
    if scene.get("negative") is not None and scene.get("text") is None:
        raise ConfigError("negative needs text: a negative prompt replaces the text condition it is contrasted "
                          "with under guidance (give text= too)")
    for key in ("text", "negative"):
        t = scene.get(key)
        if t is None:
            continue
        if not spec.text_dim:
            raise ConfigError("this world model takes no text condition")
        if not isinstance(t, str):
            raise ConfigError(f"{key} must be a string, got {type(t).__name__}")
        enc = bundle.text_encoder
        if enc is None:
            raise ConfigError("this model has no text encoder: pass text_encoder= (a callable mapping strings "
                              f"to {spec.text_dim}-wide embeddings)")
        with torch.no_grad():
            e = enc([t]).float().to(dev)
        if tuple(e.shape) != (1, spec.text_dim):
            raise ConfigError(f"the text encoder gives {tuple(e.shape[1:])}-wide embeddings; this world model was "
                              f"trained on {spec.text_dim}-wide text embeddings")
        getattr(rows, key)[:] = e
    if scene.get("vehicles") is not None:
        rows.agents[:] = torch.from_numpy(spec.check_agents(scene["vehicles"])).to(dev)
        steps = scene.get("agent_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ConfigError(f"agent_steps must be an integer >= 0 (steps the placed vehicles condition), got {steps!r}")
        rows.agents_left[:] = int(steps)
    return rows

