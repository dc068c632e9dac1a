"""The token layout and the action codec: the one place for each.

## Token layout (per time step)

The world model reads a clip as a sequence of *blocks*, one per time step (GAIA-1's order)::

    block t = [ meta tokens (reserved, 0 today) | image tokens of frame t (P) | action tokens a_t (2) ]

With a camera rig (V views, `gaia_gym.sims.rig`) frame t is V images and its image tokens are view-major:
[view 0's P/V positions | view 1's | ...]; each position carries the same spatial embedding in every view
plus its camera's embedding (computed from the camera's pose, so another rig can be given).

a_t is the action the agent chose after observing frame t; it conditions frame t+1. Image tokens may be
*patched*: with patch 2 the 8x8 token grid becomes P = 16 super-tokens of 2x2 tokens each, so the
transformer's cost per frame is that of a 4x4 tokenizer while the image keeps 64 codes.

Two decoding schemes share this layout (`WorldModelConfig.decoding`):

- ``parallel``: attention is bidirectional within a block and causal across blocks; the output at image
  position p of block t predicts the tokens at p in frame t+1. One forward pass per imagined frame.
- ``autoregressive``: attention is causal over the flattened sequence (IRIS, GAIA-1); each position
  predicts the next image position; one pass per image position.

In both, the output at the *last action token* of block t has seen frame t and a_t (and the past): it
is the model's memory after the step (World Models' h_{t+1}). The reward and termination heads read it
(r_t and the end flag of the transition t -> t+1), and it is the hidden feature an agent observes with
frame t+1.

## Action codec

The model's action input is two numbers in [-1, 1]: [steering, speed]. Physical meaning (stored with
each model, see `ActionCodec`):

- steering: the simulator's steer command, -1 = full left, +1 = full right (CarRacing: the front wheels
  reach their 0.4 rad joint limit at |steer| >= 0.4);
- speed: the target speed the low-level controller tracks over the step, mapped linearly from
  [0, max_speed_mps] to [-1, 1] (so -1 = stop, +1 = max_speed_mps).

Inside the network each number is linearly embedded into its own token (GAIA-2 symlogs speed and
curvature first because real speeds span orders of magnitude; ours are already normalised).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from gaia_gym.errors import ConfigError


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits inside a time step's block."""

    image_tokens: int = 16  # image positions per block (views x the tokenizer's h*w / patch^2)
    image_vocab: int = 1000  # the tokenizer's vocabulary
    action_tokens: int = 2  # steering, speed
    meta_tokens: int = 0  # reserved for text / scene metadata tokens
    views: int = 1  # cameras of a rig: image positions are view-major, view_tokens each

    @property
    def view_tokens(self) -> int:
        """Image positions of one camera's frame."""
        return self.image_tokens // self.views

    @property
    def block(self) -> int:
        """Tokens per time step."""
        return self.meta_tokens + self.action_tokens + self.image_tokens

    @property
    def meta_slice(self) -> slice:
        return slice(0, self.meta_tokens)

    @property
    def image_slice(self) -> slice:
        return slice(self.meta_tokens, self.meta_tokens + self.image_tokens)

    @property
    def action_slice(self) -> slice:
        return slice(self.meta_tokens + self.image_tokens, self.block)

    @property
    def memory_index(self) -> int:
        """Position (within a block) whose output is the step's memory: the last action token."""
        return self.block - 1

    def block_ids(self, n_blocks: int) -> torch.Tensor:
        """(n_blocks * block,) block index of every position."""
        return torch.arange(n_blocks).repeat_interleave(self.block)

    def kind_ids(self) -> torch.Tensor:
        """(block,) 0 = meta, 1 = image, 2 = action, for a type embedding."""
        return torch.tensor([0] * self.meta_tokens + [1] * self.image_tokens + [2] * self.action_tokens)


@dataclass(frozen=True)
class ActionCodec:
    """[steering, speed] between physical units and the model's [-1, 1] inputs."""

    max_speed_mps: float = 100.0  # speed action +1 (CarRacing's hull tops out near 100 m/s)
    steering_unit: str = "CarRacing-v3 steer command (-1 full left .. +1 full right)"

    def encode(self, steering: np.ndarray | float, speed_mps: np.ndarray | float) -> np.ndarray:
        """Physical -> model inputs, (..., 2) float32 in [-1, 1] (clipped)."""
        s = np.clip(np.asarray(steering, dtype=np.float32), -1, 1)
        v = np.clip(np.asarray(speed_mps, dtype=np.float32) / self.max_speed_mps * 2 - 1, -1, 1)
        return np.stack([s, v], axis=-1).astype(np.float32)

    def decode(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs (..., 2) in [-1, 1] -> (steering, target speed m/s)."""
        a = np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        return a[..., 0], (a[..., 1] + 1) / 2 * self.max_speed_mps


# highway-env: the ego's speed tops out at 40 m/s (its Vehicle.MAX_SPEED); steering is the raw
# ContinuousAction steering command (-1 = -pi/4 rad of wheel angle, to the left)
HIGHWAY_CODEC = ActionCodec(max_speed_mps=40.0,
                            steering_unit="highway-env ContinuousAction steering (-1 = -45 deg left .. +1 = +45 deg right)")


# ----------------------------------------------------------------------------------------------
# action validation (every adapter and the engine use these; one-line errors)
# ----------------------------------------------------------------------------------------------
def _show(x, width: int = 80) -> str:
    """A short one-line repr of a user's value (for error messages)."""
    r = " ".join(repr(x).split())
    return r if len(r) <= width else r[: width - 3] + "..."


def _real_array(x, what: str, want: str) -> np.ndarray:
    """`x` (numbers, nested sequences of numbers, a numpy array or a torch tensor) as a float64 numpy array
    (np.longdouble stays as it is); None, strings, ragged nestings, non-numbers, complex numbers and ints
    too large for a float raise a one-line ConfigError naming `what` and `want`."""
    bad = f"{what} must be {want}, got {_show(x)}"
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise ConfigError(bad)
    if isinstance(x, torch.Tensor):
        if x.requires_grad:  # the env is not differentiable: say so rather than cut the graph silently
            raise ConfigError(f"{what} must be {want}, got a torch tensor that requires grad: the environment is "
                              f"not differentiable, pass {what}.detach() (or step under torch.no_grad())")
        if x.is_complex() or x.is_quantized:
            raise ConfigError(f"{bad} (dtype {x.dtype})")
        x = x.to("cpu", torch.float64).numpy()  # bfloat16 has no numpy dtype
    try:
        a = np.asarray(x)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # ragged nesting, tensors needing grad, ...
        raise ConfigError(f"{bad} (not a regular array of numbers)") from None
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    if a.dtype.kind == "f":
        return a if a.dtype.itemsize >= 8 else a.astype(np.float64)
    if a.dtype.kind != "O":  # strings, complex, dates, records
        raise ConfigError(f"{bad} (dtype {a.dtype})")
    out = np.empty(a.shape, np.float64)  # Python ints beyond int64, mixed numpy / Python numbers, ...
    for i, e in enumerate(a.flat):
        if not isinstance(e, numbers.Real):
            raise ConfigError(f"{bad} (holds {_show(e, 40)}, not a number)")
        try:
            out.flat[i] = float(e)
        except OverflowError:
            raise ConfigError(f"{what} must be {want}, got {_show(e, 40)}: too large for a float") from None
    return out


def check_action(action) -> np.ndarray:
    """One env's action as a (2,) float32 array clipped to [-1, 1]. Anything but 2 real numbers (wrong
    shape, None, strings, ragged nestings, NaN/inf, ints too large for a float) raises a one-line
    `ConfigError` (a ValueError). The values are checked in float64, so a finite value beyond float32's
    range (1e39) is clipped like any other finite value outside [-1, 1]."""
    a = _real_array(action, "action", "2 real numbers [steering, speed] in [-1, 1]")
    if a.shape != (2,):
        raise ConfigError(f"action must have shape (2,) = [steering, speed], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError(f"action contains NaN or inf: {a.tolist()}")
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def check_actions(actions, n: int, action_dim: int = 2, device: torch.device | None = None) -> torch.Tensor:
    """Actions as an (n, action_dim) float32 tensor in [-1, 1]. Wrong shapes, NaN/inf and anything that is
    not an array of real numbers (None, strings, ragged nestings, objects, ints too large for a float)
    raise a one-line `ConfigError` (a ValueError); finite values outside [-1, 1] are clipped (documented
    behaviour of every adapter), checked before the cast to float32 (so 1e39 is clipped, not inf).
    A torch tensor stays on its device (detached, never modified)."""
    want = f"({n}, {action_dim}) real numbers [steering, speed] per env, in [-1, 1]"
    if isinstance(actions, torch.Tensor):
        t = actions.detach()
        if t.is_complex() or t.is_quantized:
            raise ConfigError(f"actions must be {want}, got a tensor of dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.float()  # bool and integer tensors: always finite, and within float32's range
    else:
        t = _real_array(actions, "actions", want)
    if t.ndim == 1 and n == 1:
        t = t[None]
    if tuple(t.shape) != (n, action_dim):
        raise ConfigError(f"actions must have shape ({n}, {action_dim}) = [steering, speed] per env, "
                          f"got {tuple(t.shape)}")
    if isinstance(t, np.ndarray):
        if not np.isfinite(t).all():
            raise ConfigError("actions contain NaN or inf")
        return torch.from_numpy(np.clip(t, -1.0, 1.0).astype(np.float32)).to(device)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ConfigError("actions contain NaN or inf")
    return t.clamp(-1, 1).to(device=device, dtype=torch.float32)  # clamped in the input's dtype, then cast
