"""The engine settings every imagined env takes, as one typed, frozen config validated once.

    gym.make("GaiaDrive-v0", horizon=100, temperature=0.8)               # keyword settings, as before
    gym.make("GaiaDrive-v0", config=EngineConfig(horizon=100), top_k=20)  # a config, settings on top
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

from gaia_gym.errors import ConfigError
from gaia_gym.imagination import check_horizon, check_sampling


@dataclass(frozen=True)
class EngineConfig:
    """How imagination is sampled and when an episode ends.

    `horizon`: steps before ``truncated`` (None: never); `temperature`, `top_k` (None: the model's default)
    and `guidance` (classifier-free guidance, 1 = none) sample the frames; `guide`: the conditions guidance
    contrasts ("action", and a conditioned model's "metadata", "agents", "text"); `end_threshold`: the
    end head's probability that terminates; `bf16`: autocast where the hardware is fast at it;
    `pessimism`: reward minus pessimism x the reward head's spread."""

    horizon: int | None = 250
    temperature: float = 1.0
    top_k: int | None = None
    guidance: float = 1.0
    end_threshold: float = 0.5
    bf16: bool = True
    guide: tuple[str, ...] = ("action",)
    pessimism: float = 0.0

    def __post_init__(self) -> None:
        temperature, top_k, guidance, end_threshold = check_sampling(self.temperature, self.top_k, self.guidance,
                                                                     self.end_threshold)
        p = self.pessimism
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < math.inf:
            raise ConfigError(f"pessimism must be a finite number >= 0 (reward minus pessimism x the reward "
                              f"head's spread), got {p!r}")
        guide = self.guide
        if isinstance(guide, str):  # "action,text"
            guide = tuple(g.strip() for g in guide.split(",") if g.strip())
        if not isinstance(guide, (tuple, list)) or not all(isinstance(g, str) for g in guide):
            raise ConfigError(f"guide must be condition names (e.g. 'action' or ('action', 'text')), got {guide!r}")
        for name, value in (("horizon", check_horizon(self.horizon)), ("temperature", temperature),
                            ("top_k", top_k), ("guidance", guidance), ("end_threshold", end_threshold),
                            ("pessimism", float(p)), ("guide", tuple(guide)), ("bf16", bool(self.bf16))):
            object.__setattr__(self, name, value)


SETTINGS = tuple(f.name for f in fields(EngineConfig))


def engine_config(config: EngineConfig | None, settings: dict[str, Any], **defaults) -> EngineConfig:
    """`config` (default: EngineConfig with an env's `defaults`, e.g. horizon=40) with keyword `settings`
    on top, validated once; an unknown setting is a one-line ConfigError."""
    unknown = [k for k in settings if k not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}: the engine settings are {', '.join(SETTINGS)}")
    if config is not None and not isinstance(config, EngineConfig):
        raise ConfigError(f"config must be a gaia_gym.envs.EngineConfig or None, got {type(config).__name__}")
    base = config if config is not None else EngineConfig(**defaults)
    return replace(base, **settings) if settings else base


__all__ = ["EngineConfig", "SETTINGS", "engine_config"]
