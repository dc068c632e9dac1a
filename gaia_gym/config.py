"""Configuration: frozen dataclasses, one per component, with named presets.

``tiny`` shrinks everything for tests and smoke runs; ``default`` is what the shipped pipeline uses.
Every config is plain data (JSON-serialisable through `asdict`) and is stored with what it produced
(a dataset's manifest, a model's checkpoint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from gaia_gym.errors import ConfigError
from gaia_gym.seeds import VAL_EVERY

T = TypeVar("T")


@dataclass(frozen=True)
class CarRacingCollectConfig:
    """How `gaia-gym collect carracing` records real CarRacing-v3 driving."""

    episodes: int = 714  # 714 x <= 238 steps <= 170k transitions: the budget's share for the world model's data
    # behaviour mix (gaia_gym.sims.carracing_collect.MIXES): "v2" = several driver styles, weaves, fast and
    # late-braking segments, recoveries from both sides; "v1" = the first mix (its 840-track dataset is
    # rebuilt by `--mix v1 --episodes 840 --clean-fraction 0.15`)
    mix: str = "v2"
    seed: int = 0  # episode i drives track seed `seed + i`
    val_every: int = VAL_EVERY  # every 10th episode (i % 10 == 9) is validation: held-out tracks, never frames
    workers: int = 2  # collector processes (one per core)
    frame_size: int = 64  # dataset frames are frame_size x frame_size RGB, HUD cropped
    frame_skip: int = 4  # simulator frames (50 Hz) per recorded step -> 12.5 Hz
    max_steps: int = 0  # stop an episode after this many recorded steps (0 = simulator's own limit)
    clean_fraction: float = 0.10  # episodes driven by the scripted driver with only tiny noise
    compress: bool = True  # zlib shards (~10x smaller for CarRacing frames)
    # camera rig (gaia_gym.sims.rig): () = the single front camera; e.g. ("front", "left", "rear", "right")
    # adds `views` (T, V, S, S, 3) to every shard, views[:, 0] == frames
    cameras: tuple[str, ...] = ()


@dataclass(frozen=True)
class HighwayCollectConfig:
    """How `gaia-gym collect highway` records highway-env driving."""

    scenarios: tuple[str, ...] = ("highway-fast-v0", "merge-v0", "roundabout-v0", "intersection-v0")
    episodes: int = 1000  # spread round-robin over the scenarios (<= episodes x max_steps transitions)
    seed: int = 0
    val_every: int = VAL_EVERY
    workers: int = 2
    frame_size: int = 64
    max_steps: int = 40  # recorded steps per episode (the scenarios' own limits also apply)
    policy_frequency: int = 5  # Hz: agent steps per simulated second
    compress: bool = True
    # per-episode scene variety where the scenario has the knobs (highway-fast): lanes and density
    vary_scenes: bool = True
    lanes_choices: tuple[int, ...] = (2, 3, 4)
    density_choices: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    # which scenario each episode drives: "interleaved" (every scenario in both splits) or "round_robin"
    # (episode i drives scenario i mod n: the validation split, every val_every-th episode, may miss some)
    scenario_order: str = "interleaved"


PRESETS: dict[str, dict[type, dict[str, Any]]] = {
    "tiny": {
        CarRacingCollectConfig: dict(episodes=2, workers=1, max_steps=12),
        HighwayCollectConfig: dict(episodes=4, workers=1, max_steps=6),
    },
    "default": {},
}


def preset(cls: type[T], name: str = "default", **overrides: Any) -> T:
    """Build `cls` from preset `name`, then apply non-None `overrides` (e.g. from the command line)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    known = {f.name for f in fields(cls)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(bad)}")
    base = cls(**PRESETS[name].get(cls, {}))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


__all__ = ["CarRacingCollectConfig", "HighwayCollectConfig", "PRESETS", "preset", "to_dict", "field"]
