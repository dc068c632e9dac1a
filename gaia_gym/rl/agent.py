"""An SB3 agent trained on a world model's features: the algorithm registry, loading and saving (with
the world model it was trained on checked), the shipped agent, and the agent's action range.

An agent is only meaningful on the world model whose features it was trained on: its zip records that
model's weights sha256 (in the extractor's kwargs, `gaia_gym.rl.extractor`), and `load_agent` refuses a
different model with a one-line `ModelFileError` naming both. Zips saved before the record existed
load as "world model unknown, not checked".
"""

from __future__ import annotations

import base64
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gaia_gym.errors import ConfigError, MissingFileError, ModelFileError

ALGOS = ("ppo", "sac", "pmpo")
SHIPPED_AGENT = Path(__file__).resolve().parent.parent / "assets" / "agents" / "driver.zip"
# the highway-env agent, trained in GaiaHighway-v0's world model (docs/highway.md); "shipped-highway"
SHIPPED_HIGHWAY_AGENT = SHIPPED_AGENT.with_name("highway_driver.zip")
# where the extractor class lived when older zips were pickled -> where it lives now
_MOVED = {"gaia_gym.policy": "gaia_gym.rl.extractor"}


def algo_class(name: str):
    """The SB3 algorithm class for "ppo" / "sac" / "pmpo" (`gaia_gym.rl.pmpo.PMPO`, PPO's rollouts with the
    sign-of-advantage update)."""
    from stable_baselines3 import PPO, SAC

    from gaia_gym.rl.pmpo import PMPO

    classes = {"ppo": PPO, "sac": SAC, "pmpo": PMPO}
    if name not in classes:
        raise ConfigError(f"unknown algorithm {name!r}: choose from {', '.join(ALGOS)}")
    return classes[name]


def resolve_agent_path(policy: str | Path) -> Path:
    """"shipped" -> the CarRacing agent shipped in the package, "shipped-highway" -> the highway-env one;
    anything else is a path."""
    return {"shipped": SHIPPED_AGENT, "shipped-highway": SHIPPED_HIGHWAY_AGENT}.get(str(policy), Path(policy))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(_MOVED.get(module, module), name)


def _zip_data(path: Path) -> dict:
    """The raw JSON `data` entry of an SB3 zip (not deserialised)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("data"))
    except Exception as e:  # not a zip, no data entry, bad JSON
        raise ModelFileError(f"{path}: not an SB3 agent zip ({type(e).__name__}: {e})") from None


def _serialized(entry: Any) -> Any:
    if isinstance(entry, dict) and ":serialized:" in entry:
        return _Unpickler(io.BytesIO(base64.b64decode(entry[":serialized:"]))).load()
    return entry


def agent_algo(path: str | Path) -> str:
    """"ppo", "sac" or "pmpo": which algorithm saved the zip at `path` (PMPO records itself; otherwise read
    from the stored policy class)."""
    data = _zip_data(Path(path))
    if data.get("gaia_algo") in ALGOS:
        return data["gaia_algo"]
    module = str(data.get("policy_class", {}).get("__module__", ""))
    # SAC's policies live in stable_baselines3.sac; PPO's MultiInputPolicy is stable_baselines3.common's
    return "sac" if ".sac." in f".{module}." else "ppo"


def agent_world_model_sha(path: str | Path) -> str | None:
    """The weights sha256 of the world model the agent at `path` was trained on (None: not recorded)."""
    pk = _serialized(_zip_data(resolve_agent_path(path)).get("policy_kwargs", {}))
    return dict(pk.get("features_extractor_kwargs", {})).get("world_model_sha")


def load_agent(path: str | Path, world_model=None, env=None, device: str = "auto", **kwargs: Any):
    """Load a PPO or SAC agent saved by SB3 (the algorithm is read from the zip); "shipped" loads the
    agent shipped in the package (`SHIPPED_AGENT`).

    ``world_model``: the loaded bundle (or module) whose features the agent will see; its weights sha256
    must be the one the zip records, or, where the zip also records its ``observation_sha``, its weights
    but the reward and end heads must be (a round of real driving retrains only the heads: the agent's
    inputs are the same); `ModelFileError` otherwise. Older zips record none: they are
    rebuilt on `world_model` (default: the shipped model) unchecked. A missing file raises
    `MissingFileError`, a file that is not an SB3 agent `ModelFileError`.
    """
    from gaia_gym.rl.extractor import WorldModelExtractor, policy_kwargs, world_model_sha

    p = resolve_agent_path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: no such policy file (an SB3 .zip saved by agents/train_imagination.py)")
    data = _zip_data(p)
    try:
        pk = dict(_serialized(data.get("policy_kwargs", {})))
    except Exception as e:
        raise ModelFileError(f"{p}: its policy_kwargs cannot be read ({type(e).__name__}: {e})") from None
    fk = dict(pk.get("features_extractor_kwargs", {}))
    if pk.get("features_extractor_class") is WorldModelExtractor:
        recorded = fk.get("world_model_sha")
        if recorded is None:  # saved before the record: rebuild the layout from the given (or shipped) model
            if world_model is None:
                from gaia_gym.bundle import load_world_model

                world_model = load_world_model(fk.get("world_model"))  # the path it named, or the shipped one
            legacy = policy_kwargs(world_model, freeze=fk.get("freeze_embedding", True), net_arch=None,
                                   spatial=fk.get("spatial", 0))["features_extractor_kwargs"]
            fk = {**legacy, "world_model_sha": None}
        elif world_model is not None and world_model_sha(world_model) != recorded and (
                fk.get("observation_sha") is None or world_model_sha(world_model, heads=False) != fk["observation_sha"]):
            where = getattr(world_model, "path", "the given world model")
            raise ModelFileError(f"{p} was trained on the world model with weights sha256 {recorded[:12]}..., "
                                 f"not {where} ({world_model_sha(world_model)[:12]}...): pass --model with its model")
        pk["features_extractor_kwargs"] = fk
    try:
        return algo_class(agent_algo(p)).load(p, env=env, device=device, custom_objects={"policy_kwargs": pk},
                                              **kwargs)
    except (KeyError, ValueError, RuntimeError, EOFError, OSError) as e:
        raise ModelFileError(f"{p}: cannot load the agent ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None


def save_agent(agent, path: str | Path, world_model=None, drop_optimizer: bool = False) -> Path:
    """Write `agent` to `path` atomically. ``world_model``: record its weights sha256 (for an agent loaded
    from a zip that records none); ``drop_optimizer``: save with a fresh optimizer (about a third
    smaller; it acts the same and training restarts with fresh moments)."""
    from gaia_gym.fileio import atomic_write_bytes
    from gaia_gym.rl.extractor import world_model_sha

    if world_model is not None:
        fk = dict(agent.policy_kwargs.get("features_extractor_kwargs", {}))
        fk["world_model_sha"] = world_model_sha(world_model)
        fk["observation_sha"] = world_model_sha(world_model, heads=False)
        agent.policy_kwargs = {**agent.policy_kwargs, "features_extractor_kwargs": fk}
    if drop_optimizer:
        opt = agent.policy.optimizer
        agent.policy.optimizer = type(opt)(agent.policy.parameters(), **opt.defaults)  # same settings, no moments
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, lambda f: agent.save(f))
    return dst


def export_agent(src: str | Path, dst: str | Path = SHIPPED_AGENT, world_model=None) -> Path:
    """Copy an agent zip without its optimizer state (to ship it), recording `world_model`'s sha if given."""
    return save_agent(load_agent(src, world_model=world_model, device="cpu"), dst, world_model, drop_optimizer=True)


class ActionRange:
    """Maps the agent's actions u in [-1, 1]^2 linearly onto [low, high] of the env's [steering, speed].

    A world model is only right about actions its data contains: CarRacing's logged drives command
    speed actions up to ~0.5 (95th percentile; 0.82 at most), and an agent free to ask for +1 (100 m/s)
    learns where the model extrapolates. Training in imagination therefore narrows the speed range
    (`--speed-max`); the range is stored on the saved agent (``agent.gaia_action_range``) so that the
    real-simulator evaluator applies the same mapping."""

    def __init__(self, low=(-1.0, -1.0), high=(1.0, 1.0)) -> None:
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if self.low.shape != (2,) or self.high.shape != (2,) or not (self.low < self.high).all() or (
                self.low < -1).any() or (self.high > 1).any():
            raise ConfigError(f"action range must be 2 lows below 2 highs within [-1, 1], got {low} .. {high}")

    def __call__(self, u):
        u = np.clip(np.asarray(u, np.float32), -1.0, 1.0)
        return self.low + (u + 1.0) / 2.0 * (self.high - self.low)

    def as_dict(self) -> dict[str, list[float]]:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    def rescale_policy(self, policy, to: "ActionRange") -> None:
        """Re-express an SB3 Gaussian policy trained in this range in the range `to`: its action mean and
        std are mapped linearly so that every physical action it chose (inside both ranges) stays the
        same, e.g. widening the speed range of a behaviour prior before fine-tuning it."""
        import torch

        if np.array_equal(self.low, to.low) and np.array_equal(self.high, to.high):
            return  # the same range: nothing to re-express
        if not hasattr(policy, "action_net") or not hasattr(policy, "log_std"):
            raise ConfigError("only a Gaussian actor-critic policy (PPO/PMPO) can change its action range")
        a = (self.high - self.low) / (to.high - to.low)
        b = a - 1.0 + 2.0 * (self.low - to.low) / (to.high - to.low)
        net = policy.action_net
        with torch.no_grad():
            at, bt = (torch.as_tensor(v, dtype=net.weight.dtype, device=net.weight.device) for v in (a, b))
            net.weight.mul_(at[:, None])
            net.bias.mul_(at).add_(bt)
            policy.log_std.add_(at.log())

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


def agent_obs_mode(agent, bundle) -> str:
    """The `obs_mode` an agent was trained on, for an env over `bundle`: a Dict space's keys in GaiaDrive's
    order (gymnasium sorts a Dict's keys), or the one key of a Box space (features or the latent)."""
    from gymnasium import spaces

    be = bundle.backend
    space = agent.observation_space
    if isinstance(space, spaces.Dict):
        keys = set(space.spaces)
    else:
        keys = {"features"} if tuple(space.shape) == (be.feature_dim,) else {be.latent_key}
    return "+".join(k for k in (be.latent_key, "frame", "features") if k in keys)


__all__ = ["ALGOS", "ActionRange", "SHIPPED_AGENT", "SHIPPED_HIGHWAY_AGENT", "agent_actor", "agent_algo", "agent_obs_mode", "agent_world_model_sha", "algo_class",
           "export_agent", "load_agent", "resolve_agent_path", "save_agent"]
