"""What a recorded highway-env clip shows, in the three forms the world model is conditioned on: scene
metadata (categorical fields), the other road users as boxes, and a text description.

Everything here reads what `gaia_gym.sims.highway` records (the episode's manifest entry and its
``others`` (T, 8, 7) array: presence, x, y, vx, vy, cos_h, sin_h of the 8 nearest vehicles relative to the
ego, world-aligned) and imports nothing of highway-env, so training and evaluation do not load the
simulator.

**Metadata** (`METADATA`): ``scenario`` (the road family: highway, merge, roundabout, intersection),
``lanes`` (the simulator's lane count: the config's ``lanes_count`` or the widest road of the network)
and ``density`` (low / medium / high: the mean number of other vehicles within `NEAR_M` of the ego over
the episode, cut at `DENSITY_EDGES`; measured, not the simulator's density knob, so it means the same in
every scenario).

**Boxes** (`AGENT_FIELDS`): presence, x, y (m), vx, vy (m/s), cos_h, sin_h, length, width (m), relative
to the ego, as highway-env gives them; `normalise_boxes` scales them by `AGENT_SCALE` for the network.

**Where boxes appear** (the world model's agent map): the frame is a world-aligned top view spanning
`VIEW_M` metres, so a box at (x, y) m relative to the ego appears at image (u, v) = origin + (x, y) /
`VIEW_M` (normalised to [0, 1]); the origin is the scenario's camera centring in highway-env
(`VIEW_ORIGIN`, recorded per episode as ``centering_position``).

**Text**: `clip_facts` reads facts off a clip (scenario, lanes, density, whether a vehicle is close
ahead in the ego's lane, what the ego does) and `describe` words a random subset of them with random
phrasings. The default text encoder (`gaia_gym.models.text`) is trained to read these facts back.
"""

from __future__ import annotations

import numpy as np

from gaia_gym.errors import ConfigError
from gaia_gym.specs import AGENT_FIELDS, AGENT_SCALE, DEFAULT_SIZE_M, normalise_boxes  # noqa: F401 (the scene's boxes)

SCENARIO_FAMILY = {"highway-fast-v0": "highway", "highway-v0": "highway", "merge-v0": "merge",
                   "roundabout-v0": "roundabout", "intersection-v0": "intersection"}
METADATA: dict[str, tuple[str, ...]] = {
    "scenario": ("highway", "merge", "roundabout", "intersection"),
    "lanes": ("1", "2", "3", "4"),
    "density": ("low", "medium", "high"),
}
VIEW_M = 40.0  # metres spanned by the square frame, all scenarios (1.6 px/m at 64 px)
VIEW_ORIGIN = {"highway": (0.3, 0.5), "merge": (0.3, 0.5), "roundabout": (0.5, 0.6),
               "intersection": (0.5, 0.6)}  # the ego's place (u, v) in the frame: highway-env's centering_position
AGENT_MAP_SCALE = AGENT_SCALE[1] / VIEW_M  # image units per normalised box unit
NEAR_M = 25.0  # the density counts other vehicles within this distance of the ego
DENSITY_EDGES = (0.8, 1.2)  # mean vehicles within NEAR_M: below 0.8 low, below 1.2 medium, else high (tertiles of the default dataset)
CLOSE_AHEAD_M = 15.0  # a vehicle this close ahead in the ego's lane is "close ahead"
AHEAD_M = 30.0


def agent_map_spec() -> dict:
    """The `ConditionSpec` fields that draw highway-env boxes into the frame's token grid."""
    return {"agent_map_scale": AGENT_MAP_SCALE,
            "agent_map_origins": tuple((k, *uv) for k, uv in VIEW_ORIGIN.items()),
            "agent_map_default": VIEW_ORIGIN["highway"]}


def check_view(meta: dict) -> None:
    """A recorded episode's camera (``view_m``, ``centering_position``) must be the one `VIEW_ORIGIN` and
    `VIEW_M` describe, or the agent map would draw its boxes in the wrong place."""
    fam = scenario_family(str(meta.get("scenario", "")))
    want = VIEW_ORIGIN.get(fam)
    got = meta.get("centering_position")
    if want is None or got is None:
        return
    if abs(float(meta.get("view_m", VIEW_M)) - VIEW_M) > 1e-6 or max(abs(a - b) for a, b in zip(got, want)) > 1e-6:
        raise ConfigError(f"episode of {fam} records view {meta.get('view_m')} m centred at {got}; the agent map "
                          f"assumes {VIEW_M} m centred at {list(want)} (gaia_gym.sims.highway_scene.VIEW_ORIGIN)")


def scenario_family(scenario: str) -> str:
    fam = SCENARIO_FAMILY.get(scenario)
    if fam is None:
        fam = scenario.split("-")[0]
        if fam not in METADATA["scenario"]:
            raise ConfigError(f"scenario {scenario!r} has no metadata family (known: {', '.join(SCENARIO_FAMILY)})")
    return fam


def density_of(others: np.ndarray) -> str:
    """low / medium / high from `others` (T, N, >=3): the mean count of vehicles within NEAR_M."""
    o = np.asarray(others, dtype=np.float32)
    near = (o[..., 0] > 0.5) & (np.hypot(o[..., 1], o[..., 2]) < NEAR_M)
    mean = float(near.sum(-1).mean()) if len(o) else 0.0
    return METADATA["density"][int(np.searchsorted(DENSITY_EDGES, mean, side="right"))]


def episode_metadata(meta: dict, others: np.ndarray) -> dict[str, str]:
    """The metadata fields of one recorded episode (its shard meta and its `others`)."""
    lanes = str(min(int(meta["lanes"]), int(METADATA["lanes"][-1])))
    return {"scenario": scenario_family(str(meta["scenario"])), "lanes": lanes, "density": density_of(others)}


def agent_boxes(others: np.ndarray, size_m=DEFAULT_SIZE_M) -> np.ndarray:
    """(..., N, 7) recorded others -> (..., N, 9) boxes in `AGENT_FIELDS` order (absent rows all zero)."""
    o = np.asarray(others, dtype=np.float32)
    if o.shape[-1] != 7:
        raise ConfigError(f"others must have 7 features (presence, x, y, vx, vy, cos_h, sin_h), got {o.shape[-1]}")
    size = np.broadcast_to(np.asarray(size_m, dtype=np.float32), (*o.shape[:-1], 2)) * (o[..., :1] > 0.5)
    return np.concatenate([o, size], axis=-1)


# ----------------------------------------------------------------------------------------------
# facts and descriptions
# ----------------------------------------------------------------------------------------------
FACTS: dict[str, tuple[str, ...]] = {  # every fact can also be "unsaid" (index len(values)) in a description
    **METADATA,
    "ahead": ("close", "clear"),
    "ego": ("brakes", "accelerates", "cruises", "turns_left", "turns_right"),
}

_WORDS = {
    ("scenario", "highway"): ["a highway", "a motorway", "a freeway", "a straight highway"],
    ("scenario", "merge"): ["a merge", "a highway merge", "an on-ramp merge", "a merging lane"],
    ("scenario", "roundabout"): ["a roundabout", "a traffic circle", "a rotary"],
    ("scenario", "intersection"): ["an intersection", "a crossroads", "a junction"],
    ("lanes", "1"): ["one lane", "a single lane", "1 lane"],
    ("lanes", "2"): ["two lanes", "2 lanes", "a two-lane road"],
    ("lanes", "3"): ["three lanes", "3 lanes", "a three-lane road"],
    ("lanes", "4"): ["four lanes", "4 lanes", "a four-lane road"],
    ("density", "low"): ["light traffic", "no traffic", "an empty road", "few cars"],
    ("density", "medium"): ["moderate traffic", "some traffic", "a few cars around"],
    ("density", "high"): ["dense traffic", "heavy traffic", "many cars", "a busy road"],
    ("ahead", "close"): ["a car close ahead", "a vehicle right in front", "a car just ahead in our lane"],
    ("ahead", "clear"): ["the lane ahead is clear", "nothing ahead", "an open lane in front"],
    ("ego", "brakes"): ["the ego brakes", "we slow down", "braking"],
    ("ego", "accelerates"): ["the ego speeds up", "we accelerate", "accelerating"],
    ("ego", "cruises"): ["the ego cruises", "we keep a steady speed", "cruising"],
    ("ego", "turns_left"): ["the ego steers left", "we turn left", "moving left"],
    ("ego", "turns_right"): ["the ego steers right", "we turn right", "moving right"],
}


def clip_facts(metadata: dict[str, str], others: np.ndarray, speed_mps: np.ndarray, steering: np.ndarray) -> dict[str, str]:
    """Facts of one clip: its episode `metadata`, `others` (T, N, 7) over the clip, the ego's speed (T,)
    and steering (T,) commands. "ahead" is only judged where the ego drives along +x (highway, merge)."""
    facts = dict(metadata)
    o = np.asarray(others, dtype=np.float32)
    if metadata.get("scenario") in ("highway", "merge") and len(o):
        first = o[0]
        lane = (first[:, 0] > 0.5) & (np.abs(first[:, 2]) < 2.0) & (first[:, 1] > 0)
        close = bool((lane & (first[:, 1] < CLOSE_AHEAD_M)).any())
        clear = not bool((lane & (first[:, 1] < AHEAD_M)).any())
        if close or clear:
            facts["ahead"] = "close" if close else "clear"
    v = np.asarray(speed_mps, dtype=np.float32)
    s = float(np.mean(steering)) if len(steering) else 0.0
    dv = float(v[-1] - v[0]) if len(v) else 0.0
    if dv < -3.0:
        facts["ego"] = "brakes"
    elif dv > 3.0:
        facts["ego"] = "accelerates"
    elif s < -0.05:
        facts["ego"] = "turns_left"
    elif s > 0.05:
        facts["ego"] = "turns_right"
    else:
        facts["ego"] = "cruises"
    return facts


def describe(facts: dict[str, str], rng: np.random.Generator, keep: float = 0.7,
             phrasings: str = "all") -> tuple[str, dict[str, str]]:
    """A random wording of a random subset of `facts` (each kept with probability `keep`; at least one):
    (text, the facts it says). `phrasings`: "all", "train" (every phrasing of a fact but its last) or
    "held_out" (only the last: to measure whether an encoder trained on "train" generalises)."""
    names = [k for k in FACTS if k in facts]
    said = [k for k in names if rng.random() < keep] or ([names[int(rng.integers(len(names)))]] if names else [])
    order = list(said)
    rng.shuffle(order)
    parts = []
    for k in order:
        opts = _WORDS[(k, facts[k])]
        opts = opts[:-1] if phrasings == "train" else opts[-1:] if phrasings == "held_out" else opts
        parts.append(opts[int(rng.integers(len(opts)))])
    joiners = [", ", " with ", " and ", "; "]
    text = parts[0] if parts else ""
    for p in parts[1:]:
        text += joiners[int(rng.integers(len(joiners)))] + p
    return text, {k: facts[k] for k in said}


def fact_labels(said: dict[str, str]) -> np.ndarray:
    """(len(FACTS),) int64: each fact's value index in a description, or len(values) when unsaid."""
    return np.array([FACTS[k].index(said[k]) if k in said else len(FACTS[k]) for k in FACTS], dtype=np.int64)


def words_of(field: str, value: str) -> list[str]:
    """The phrasings `describe` uses for one fact (e.g. to build prompts)."""
    try:
        return list(_WORDS[(field, value)])
    except KeyError:
        raise ConfigError(f"no words for {field}={value!r}") from None
