"""What every GaiaDrive adapter shares: one `Imagination` engine with `n` rows, the observation keys
and spaces, and the conversion of the engine's torch tensors to numpy at the adapter boundary.

The engine's hot path stays in torch; this layer only copies results out (`to_numpy` always copies, so
an observation handed to the user is never changed by a later step or partial reset of the engine).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from gymnasium import spaces

from gaia_gym.bundle import WorldBundle, load_bundle
from gaia_gym.errors import ConfigError, ImaginationError
from gaia_gym.media import rig_mosaics
from gaia_gym.envs.config import EngineConfig
from gaia_gym.imagination import Imagination, check_count

OBS_KEYS = ("tokens", "frame", "features")  # a discrete-token model's keys, in observation order
LATENT_KEYS = ("tokens", "latents")  # a frame's latent: int tokens (GAIA-1 backend) or float latents (GAIA-2)
RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

# ----------------------------------------------------------------------------------------------
# argument checks (one-line ConfigErrors, before any model is loaded)
# ----------------------------------------------------------------------------------------------
_FORKED = False  # True in a child made by os.fork() (multiprocessing's "fork" context: AsyncVectorEnv)


def _after_fork_in_child() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def single_thread_after_fork() -> None:
    """In a forked child, run torch on one thread. torch's CPU thread pool (GNU OpenMP) is not fork-safe:
    once the parent has used it (e.g. AsyncVectorEnv's parent builds one env for the spaces), the child's
    first parallel op hangs forever (gym.make_vec(..., vectorization_mode="async") with the default fork
    context). One thread per worker process is what DataLoader workers use too, and N processes with N
    threads each would oversubscribe the cores anyway."""
    if _FORKED and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


def check_options(options, allowed: Sequence[str], who: str) -> dict[str, Any]:
    """reset(options=...): None or a dict whose keys are in `allowed` -> a copy (a dict); else ConfigError."""
    keys = ", ".join(repr(k) for k in allowed)
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{who}: options must be None or a dict with the keys {keys}, got {options!r}")
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ConfigError(f"{who}: unknown option {', '.join(repr(k) for k in unknown)}: the allowed keys are {keys}")
    return dict(options)


def parse_obs_mode(obs_mode: str, latent_key: str = "tokens") -> tuple[str, ...]:
    """"all" or "+"-joined keys ("tokens", "tokens+features", "frame", ...) -> the keys, in observation
    order (latent, frame, features). `latent_key` is the model's (its backend's `latent_key`): asking
    for the other kind of latent is an error."""
    keys = (latent_key, "frame", "features")
    allowed = f"'all' or '+'-joined keys from {', '.join(keys)} (e.g. '{latent_key}+features')"
    if not isinstance(obs_mode, str):
        raise ConfigError(f"obs_mode must be a string: {allowed}; got {obs_mode!r}")
    if obs_mode.strip() == "all":
        return keys
    parts = [p.strip() for p in obs_mode.split("+")]
    wrong = [p for p in parts if p in LATENT_KEYS and p != latent_key]
    if wrong:
        raise ConfigError(f"obs_mode {obs_mode!r}: this model's frames are '{latent_key}', not '{wrong[0]}'")
    if not parts or any(p not in keys for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"obs_mode {obs_mode!r} is not valid: use {allowed}")
    return tuple(k for k in keys if k in parts)


def observation_space(bundle: WorldBundle, keys: Sequence[str]) -> spaces.Dict:
    """The Dict space of one env's observation for `keys` (see GaiaDriveEnv for what each key holds),
    read from the model's backend (`gaia_gym.backends.Backend`), never from the model class."""
    be = bundle.backend
    lo, hi = be.latent_range
    dtype = np.int64 if not be.latent_dtype.is_floating_point else np.float32
    every = {
        be.latent_key: spaces.Box(lo, hi, tuple(be.latent_shape), dtype),
        "frame": spaces.Box(0, 255, tuple(be.frame_shape), np.uint8),  # a camera rig: (V, H, W, 3)
        "features": spaces.Box(-np.inf, np.inf, (be.feature_dim,), np.float32),
    }
    return spaces.Dict({k: every[k] for k in keys})


def public_space(space: spaces.Dict) -> spaces.Space:
    """The space an env shows: one observed key gives that key's Box (what SB3's MlpPolicy and
    FilterObservation users expect), several keys the Dict."""
    return next(iter(space.spaces.values())) if len(space.spaces) == 1 else space


def public_obs(obs: dict[str, np.ndarray]):
    """An observation as `public_space` describes it: the bare array for one key, else the dict."""
    return next(iter(obs.values())) if len(obs) == 1 else obs


def action_space() -> spaces.Box:
    """[steering, speed] in [-1, 1] (see ActionCodec for the physical units)."""
    return spaces.Box(-1.0, 1.0, (2,), np.float32)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy copy of `t` (never a view of the engine's buffers)."""
    return t.detach().to("cpu", copy=True).numpy()


@dataclass
class Transition:
    """One batched step, in numpy: obs arrays have a leading row axis of length n."""

    obs: dict[str, np.ndarray]
    reward: np.ndarray  # (n,) float32
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    end_prob: np.ndarray  # (n,) float32
    action: np.ndarray  # (n, 2) float32, clipped to [-1, 1]
    steering: np.ndarray  # (n,) float32, steer command
    speed_mps: np.ndarray  # (n,) float32, target speed

    def info(self, i: int) -> dict[str, Any]:
        """The per-step info of row i (python scalars)."""
        return {"end_prob": float(self.end_prob[i]), "steering": float(self.steering[i]),
                "speed_mps": float(self.speed_mps[i])}


class ImaginedBatch:
    """`n` imagined rows over one engine, with numpy observations for `obs_mode`'s keys.

    Frames are decoded only when "frame" is observed or `frames()` is asked for (render); the frames of
    the current state are cached until the next step or reset.
    """

    def __init__(self, n: int = 1, model=None, obs_mode: str = "all", reward_fn: RewardFn | None = None,
                 config: EngineConfig | None = None, device: str | torch.device = "cpu",
                 bundle: WorldBundle | None = None, int8: bool = False, cameras=None, text_encoder=None) -> None:
        n = check_count(n)
        named = [k for k in LATENT_KEYS if isinstance(obs_mode, str) and k in obs_mode.split("+")]
        parse_obs_mode(obs_mode, named[0] if named else "tokens")  # a malformed obs_mode fails before the model loads
        if reward_fn is not None and not callable(reward_fn):
            raise ConfigError(f"reward_fn must be callable(tokens, action, features) -> float, got {reward_fn!r}")
        cfg = self.config = config if config is not None else EngineConfig()  # validated when it was made
        self.pessimism = cfg.pessimism
        single_thread_after_fork()
        # the one builder: a directory or an already loaded bundle, every option applied in one place
        self.bundle = load_bundle(bundle if bundle is not None else model, device, cameras=cameras, int8=int8,
                                  text_encoder=text_encoder)
        self.spec = self.bundle.conditions
        self.latent_key = self.bundle.backend.latent_key
        self.keys = parse_obs_mode(obs_mode, self.latent_key)  # again, now that the model's latent key is known
        self.codec = self.bundle.codec
        self.horizon = cfg.horizon
        self.reward_fn = reward_fn
        self.engine = Imagination(self.bundle, n=n, temperature=cfg.temperature, top_k=cfg.top_k,
                                  guidance=cfg.guidance, horizon=cfg.horizon, end_threshold=cfg.end_threshold,
                                  seed=None, bf16=cfg.bf16, guide=cfg.guide, step_seconds=self.bundle.step_seconds)
        self.n = int(n)
        self.num_prompts = len(self.bundle.prompts)
        self.single_observation_space = public_space(observation_space(self.bundle, self.keys))
        self.single_action_space = action_space()
        self._frames: np.ndarray | None = None  # decoded frames of the current state (never mutated)
        # what the overlay shows, per row
        self.last_reward = np.zeros(self.n, np.float32)
        self.last_action = np.zeros((self.n, 2), np.float32)
        self.last_action[:, 1] = -1.0  # speed action -1 = standing still
        self.steps = np.zeros(self.n, np.int64)

    # ---- helpers ---------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        self.engine.seed(seed)

    def prompts(self, k: int, prompt=None) -> torch.Tensor:
        """(k,) prompt-bank indices: drawn with the engine's generator where `prompt` is None (or a None
        entry of a sequence), else the given index (an int for all k, or a sequence of k)."""
        drawn = torch.randint(self.num_prompts, (k,), generator=self.engine.generator, device=self.engine.device)
        if prompt is None:
            return drawn
        given = [prompt] * k if np.isscalar(prompt) else list(np.asarray(prompt, dtype=object).reshape(-1))
        if len(given) != k:
            raise ConfigError(f"prompt must be an index or a sequence of {k} indices, got {len(given)}")
        for i, p in enumerate(given):
            if p is None:
                continue
            if (isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not math.isfinite(p)
                    or int(p) != p or not 0 <= int(p) < self.num_prompts):
                raise ConfigError(f"prompt {p!r} is not an index into the prompt bank (0..{self.num_prompts - 1})")
            drawn[i] = int(p)
        return drawn

    def observe(self, latents: torch.Tensor, features: torch.Tensor) -> dict[str, np.ndarray]:
        """Numpy observation dict (rows of `latents` / `features`); decodes frames only if observed."""
        obs: dict[str, np.ndarray] = {}
        for k in self.keys:  # observation order: latent, frame, features
            if k == self.latent_key:
                obs[k] = to_numpy(latents)
            elif k == "frame":
                obs[k] = to_numpy(self.engine.frames(latents))
            else:
                obs[k] = to_numpy(features)
        return obs

    def frames(self) -> np.ndarray:
        """(n, *frame_shape) uint8 frames of the current state (a rig: (n, V, H, W, 3); decoded once per state)."""
        if self._frames is None:
            self._frames = to_numpy(self.engine.frames())
        return self._frames

    # ---- scene conditions ------------------------------------------------------------------------
    def scene_rows(self, k: int, prompts: torch.Tensor | None, scene: dict | None):
        """`SceneRows` for k rows (`gaia_gym.imagination.scene_rows`: the prompt clips' recorded metadata,
        then the user's `scene` options on top); None for a model without conditions."""
        from gaia_gym.imagination import scene_rows

        return scene_rows(self.bundle, k, prompts, scene, self.engine.device)

    # ---- reset / step ----------------------------------------------------------------------------
    def reset(self, rows: np.ndarray | None = None, prompt=None, scene: dict | None = None,
              scratch: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Start `rows` (default: all) from prompt clips. Returns (obs of those rows, their prompt indices).

        A conditioned model: `scene` options (see `scene_rows`) condition the rows; `scratch=True` hides
        the prompt clip, so the scene is generated from the conditions alone."""
        k = self.n if rows is None else len(rows)
        p = self.prompts(k, prompt)
        rows_scene = self.scene_rows(k, p, scene)
        kw = {} if rows_scene is None else {"scene": rows_scene, "scratch": bool(scratch)}
        if rows is None:
            tokens, features = self.engine.reset(prompt=p, **kw)
            sel = slice(None)
            obs = self.observe(tokens, features)
        else:
            sel = np.asarray(rows, dtype=np.int64)
            idx = torch.as_tensor(sel, device=self.engine.device)
            tokens, features = self.engine.reset(rows=idx, prompt=p, **kw)
            obs = self.observe(tokens[idx], features[idx])
        self._frames = obs["frame"] if rows is None and "frame" in obs else None
        self.last_reward[sel] = 0.0
        self.last_action[sel] = (0.0, -1.0)
        self.steps[sel] = 0
        return obs, to_numpy(p)

    def step(self, actions: torch.Tensor) -> Transition:
        """Advance all rows under validated, clipped actions (n, 2)."""
        out = self.engine.step(actions)
        obs = self.observe(out.latents, out.features)
        self._frames = obs.get("frame")
        a = to_numpy(actions).astype(np.float32, copy=False)
        if self.reward_fn is None:
            r = out.reward
            if self.pessimism:  # pessimism where the model is unsure: minus the reward head's spread
                r = r - self.pessimism * self.bundle.backend.reward_spread(out.features).to(r.device)
            reward = to_numpy(r).astype(np.float32, copy=False)
        else:
            tok = obs[self.latent_key] if self.latent_key in obs else to_numpy(out.latents)
            feat = obs["features"] if "features" in obs else to_numpy(out.features)
            reward = np.array([float(self.reward_fn(tok[i], a[i], feat[i])) for i in range(self.n)], np.float32)
        steering, speed = self.codec.decode(a)
        self.last_reward, self.last_action = reward.copy(), a.copy()
        self.steps += 1
        return Transition(obs, reward, to_numpy(out.terminated), to_numpy(out.truncated), to_numpy(out.end_prob),
                          a, steering.astype(np.float32), speed.astype(np.float32))

    def autoreset(self, tr: Transition, prompt=None) -> tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]:
        """Reset the rows of `tr` that ended (terminated or truncated) in place: their entries of `tr.obs`
        become the first observation of a new episode. Returns (rows, final observations of those rows
        (copies), prompt indices of the new episodes)."""
        rows = np.flatnonzero(tr.terminated | tr.truncated)
        if len(rows) == 0:
            return rows, [], np.zeros(0, np.int64)
        final = [{k: v[i].copy() for k, v in tr.obs.items()} for i in rows]
        new, prompts = self.reset(rows, prompt)
        for k, v in new.items():
            tr.obs[k][rows] = v
        self._frames = tr.obs.get("frame")  # the current frames, when observed
        return rows, final, prompts

    def overlay(self, i: int) -> list[str]:
        from gaia_gym.envs.render import overlay_lines

        steering, speed = self.codec.decode(self.last_action[i])
        return overlay_lines(float(steering), float(speed), float(self.last_reward[i]), int(self.steps[i]))

    def images(self, who: str) -> list[np.ndarray]:
        """Annotated, enlarged RGB frames of every row (for `who`'s render; before a reset: ImaginationError)."""
        from gaia_gym.envs.render import annotate

        if self.engine.memory is None:
            raise ImaginationError(f"{who}: call reset() before render()")
        frames = rig_mosaics(self.frames(), [c[1] for c in self.engine.backend.cameras])  # a rig: around the car
        return [annotate(frames[i], self.overlay(i)) for i in range(self.n)]
