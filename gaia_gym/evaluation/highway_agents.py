"""Scoring driving policies in the real highway-env, so that policies can be told apart.

Every policy drives the same episodes: `episodes_of(seeds)` pairs each seed with each of the four
scenarios (highway-fast, merge, roundabout, intersection), 40 steps at most, highway-env's own reward.
Test seeds are `gaia_gym.seeds.test_tracks` (1,000,000+), validation seeds `validation_tracks`
(1,000,100+); the collector's seeds are below 1,000,000, so neither ever overlaps training data.

`summarize_highway` reports, overall and per scenario: the mean return with a 95% interval (a
percentile bootstrap over episodes, seeded: the same episodes give the same interval), the crash rate
(with its Wilson 95% interval), distance driven and mean speed, success where the scenario defines it
(merge: reached the merging section without a crash; intersection: arrived on the exit road;
`gaia_gym.envs.real_highway.scenario_success`), and
the world model's predicted return beside the real one. `paired_difference` compares two policies on
the same episodes (a paired bootstrap of the mean difference).

`calibration` bins the end head's crash probability at every step of real drives against whether that
step crashed: the reliability table of `gaia_gym.envs.real_highway.RealHighwayEnv`'s
``model_end_prob`` along a policy's own drives (the crash head's calibration, issue: why imagination
agents crash), with the Brier score and the crash steps' mean predicted probability.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from gaia_gym.errors import ConfigError

CI_LEVEL = 0.95
BOOTSTRAP = 2000
CALIBRATION_EDGES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # end-head probability bins (crashes are rare)


def episodes_of(seeds: Iterable[int], scenarios=None) -> list[tuple[int, str]]:
    """(seed, scenario) for every seed and every scenario, scenario by scenario."""
    from gaia_gym.envs.real_highway import SCENARIOS

    scen = list(scenarios or SCENARIOS)
    bad = [s for s in scen if s not in SCENARIOS]
    if bad:
        raise ConfigError(f"unknown scenario {bad[0]!r}; choose from {', '.join(SCENARIOS)}")
    return [(int(s), sc) for sc in scen for s in seeds]


def drive(env, act, episodes: list[tuple[int, str]], progress: bool = True, desc: str = "episodes",
          on_episode: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `act` (an obs -> action callable, or "random" / "scripted") on every (seed, scenario) episode of
    `env` (a `RealHighwayEnv`); each episode's record from `gaia_gym.evaluation.real.run_episode`."""
    from tqdm import tqdm

    from gaia_gym.evaluation.real import run_episode

    out = []
    for seed, scen in tqdm(episodes, desc=desc, unit="ep", disable=not progress, leave=False):
        e = run_episode(env, act, seed, scenario=scen)
        out.append(e)
        if on_episode is not None:
            on_episode(e)
    return out


def bootstrap_ci(x, level: float = CI_LEVEL, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `x` (NaN, NaN for fewer than 2 values)."""
    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def wilson_ci(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a rate k / n."""
    if n == 0:
        return float("nan"), float("nan")
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}.get(level)
    if z is None:
        raise ConfigError(f"wilson_ci: level must be 0.9, 0.95 or 0.99, got {level}")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(max(0.0, c - h)), float(min(1.0, c + h))


def _group(eps: list[dict]) -> dict:
    ret = np.array([e["return"] for e in eps], np.float64)
    crashes = int(sum(bool(e["crashed"]) for e in eps))
    steps = np.array([e["steps"] for e in eps], np.float64)
    dist = np.array([e.get("distance_m", 0.0) for e in eps], np.float64)
    speed = [v for e in eps for v in e.get("speeds", [])]
    out = {
        "episodes": len(eps),
        "return_mean": round(float(ret.mean()), 3),
        "return_ci95": [round(v, 3) for v in bootstrap_ci(ret)],
        "return_std": round(float(ret.std()), 3),
        "crash_rate": round(crashes / len(eps), 3),
        "crash_rate_ci95": [round(v, 3) for v in wilson_ci(crashes, len(eps))],
        "crashes": crashes,
        "steps_mean": round(float(steps.mean()), 2),
        "distance_m_mean": round(float(dist.mean()), 1),
        "speed_mps_mean": round(float(np.mean(speed)), 2) if speed else None,
        "model_return_mean": round(float(np.mean([e["model_return"] for e in eps])), 3),
    }
    succ = [e.get("success") for e in eps if e.get("success") is not None]
    if succ:
        out["success_rate"] = round(float(np.mean(succ)), 3)
        out["success_rate_ci95"] = [round(v, 3) for v in wilson_ci(int(sum(succ)), len(succ))]
    return out


def summarize_highway(episodes: list[dict], seconds: float | None = None) -> dict:
    """Overall and per-scenario figures of one policy's episodes (see the module docstring), and every
    episode's return, crash, success, distance and steps by "scenario/seed"."""
    if not episodes:
        raise ConfigError("summarize_highway: no episodes")
    scen = list(dict.fromkeys(e["scenario"] for e in episodes))
    out = {"overall": _group(episodes), "per_scenario": {s: _group([e for e in episodes if e["scenario"] == s])
                                                          for s in scen}}
    out["per_episode"] = {f"{e['scenario']}/{e['seed']}": {
        "return": round(e["return"], 3), "crashed": bool(e["crashed"]), "success": e.get("success"),
        "distance_m": round(e.get("distance_m", 0.0), 1), "steps": e["steps"]} for e in episodes}
    if seconds is not None:
        out["wall_seconds"] = round(seconds, 1)
    return out


def paired_difference(a: dict, b: dict, seed: int = 0) -> dict:
    """Policy a minus policy b on the episodes both drove (`summarize_highway` records): mean return
    difference with a paired bootstrap 95% interval, and the crash-count difference."""
    pa, pb = a["per_episode"], b["per_episode"]
    keys = sorted(set(pa) & set(pb))
    if not keys:
        raise ConfigError("paired_difference: the two records share no episode")
    d = np.array([pa[k]["return"] - pb[k]["return"] for k in keys])
    lo, hi = bootstrap_ci(d, seed=seed)
    return {"episodes": len(keys), "return_difference_mean": round(float(d.mean()), 3),
            "return_difference_ci95": [round(lo, 3), round(hi, 3)],
            "crash_difference": int(sum(pa[k]["crashed"] for k in keys) - sum(pb[k]["crashed"] for k in keys))}


def calibration(episodes: list[dict], edges=CALIBRATION_EDGES) -> dict:
    """The end head's crash probability at every step of these real episodes against the step's outcome
    (1 on the step that crashed, 0 otherwise; a crash ends the episode): per bin the steps, mean predicted
    probability and real crash rate; the Brier score; the mean probability on crash steps and on others."""
    p, y = [], []
    for e in episodes:
        probs = list(e.get("end_probs", []))
        if not probs:
            continue
        p += probs
        y += [0.0] * (len(probs) - 1) + [1.0 if e["crashed"] else 0.0]
    if not p:
        raise ConfigError("calibration: the episodes carry no end_probs (drive them with RealHighwayEnv)")
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    edges = np.asarray(edges, np.float64)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    bins = []
    for b in range(len(edges) - 1):
        m = idx == b
        bins.append({"from": float(edges[b]), "to": float(edges[b + 1]), "steps": int(m.sum()),
                     "predicted": round(float(p[m].mean()), 4) if m.any() else None,
                     "real": round(float(y[m].mean()), 4) if m.any() else None,
                     "crashes": int(y[m].sum())})
    return {"steps": int(len(p)), "crash_steps": int(y.sum()), "brier": round(float(np.mean((p - y) ** 2)), 5),
            "mean_prob_on_crash_steps": round(float(p[y == 1].mean()), 4) if y.any() else None,
            "mean_prob_on_other_steps": round(float(p[y == 0].mean()), 4), "bins": bins}


def plot_calibration(curves: dict[str, dict], path, title: str = "crash head along real drives") -> None:
    """Reliability diagram: per policy (`calibration` records), predicted vs real crash rate per bin
    (marker area ~ steps), on log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaia_gym.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 5))
    lo = 3e-4
    ax.plot([lo, 1], [lo, 1], color="grey", lw=1, ls="--", label="calibrated")
    for name, c in curves.items():
        pts = [(b["predicted"], b["real"], b["steps"]) for b in c["bins"] if b["steps"]]
        if not pts:
            continue
        x, y, n = (np.array(v, np.float64) for v in zip(*pts))
        line, = ax.plot(np.maximum(x, lo), np.maximum(y, lo), marker="o", ms=3, lw=1.2,
                        label=f"{name} ({int(c['crash_steps'])} crashes / {int(c['steps'])} steps)")
        ax.scatter(np.maximum(x, lo), np.maximum(y, lo), s=8 + 60 * n / n.max(), color=line.get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("end head's crash probability (bin mean)")
    ax.set_ylabel("real crash rate in the bin (0 drawn at 3e-4)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


__all__ = ["CALIBRATION_EDGES", "bootstrap_ci", "calibration", "drive", "episodes_of", "paired_difference",
           "plot_calibration", "summarize_highway", "wilson_ci"]
