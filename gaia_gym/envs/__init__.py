"""Gymnasium and Stable-Baselines3 adapters over the imagination engine.

- `GaiaDriveEnv` (gaia_gym.envs.gaia_drive): one imagined episode, registered as "GaiaDrive-v0";
- `GaiaDriveVectorEnv` (gaia_gym.envs.vector): a Gymnasium VectorEnv, n rows of one engine, SAME_STEP
  autoreset (the vector entry point of "GaiaDrive-v0");
- `GaiaDriveVecEnv` (gaia_gym.envs.sb3): a Stable-Baselines3 VecEnv over one engine.

The classes are imported lazily, so importing one adapter does not import the others' dependencies
(stable-baselines3 in particular).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GaiaDriveEnv": "gaia_gym.envs.gaia_drive",
    "GaiaDriveVectorEnv": "gaia_gym.envs.vector",
    "GaiaDriveVecEnv": "gaia_gym.envs.sb3",
    "GaiaHighwayEnv": "gaia_gym.envs.gaia_highway",
    "GaiaHighwayVectorEnv": "gaia_gym.envs.vector",
    "RealHighwayEnv": "gaia_gym.envs.real_highway",
    "EngineConfig": "gaia_gym.envs.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
