"""Pictures of agents trained in imagination: learning curves and paired per-track differences.

- `learning_curves`: for each training run (its OUT/state.json, written by `gaia_gym.rl.training.RealEval`),
  the real return on the validation tracks and the imagined return against imagined steps;
- `checkpoint_curve`: the same record for a plain SB3 run (examples/train_in_imagination.py): each of
  its CheckpointCallback zips scored on validation tracks, the imagined return read from its VecMonitor
  CSV; resumable (curve.json keeps what was scored);
- `paired_differences`: two evaluations of policies on the same tracks (`evaluate_real.py --json` records),
  the per-track difference of B minus A, sorted, with the mean and its standard error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gaia_gym.errors import ConfigError
from gaia_gym.fileio import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(out).suffix.lstrip(".") or "png", bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(Path(out), lambda f: f.write(buf.getvalue()))
    return Path(out)


def read_curve(state_json: str | Path) -> dict[str, np.ndarray]:
    """timesteps, real return mean/std and imagined return (NaN where none had ended) of one run."""
    p = Path(state_json)
    if p.is_dir():
        p = p / "state.json" if (p / "state.json").exists() else p / "curve.json"
    try:
        evals = json.loads(p.read_text())["evals"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{p}: not a training run's state.json with evaluations ({type(e).__name__})") from None
    if not evals:
        raise ConfigError(f"{p}: the run has no real evaluation yet")
    col = lambda k: np.array([np.nan if e.get(k) is None else e[k] for e in evals], np.float64)  # noqa: E731
    return {"timesteps": col("timesteps"), "real": col("real_return_mean"), "real_std": col("real_return_std"),
            "imagined": col("imagined_return_mean"), "tracks": len(evals[0].get("real_return_per_seed", {}))}


def monitor_returns(csv: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative imagined steps at each episode's end, episode return) from an SB3 VecMonitor CSV."""
    p = Path(csv)
    try:
        rows = np.loadtxt(p, delimiter=",", skiprows=2, ndmin=2)  # a JSON comment line, then "r,l,t"
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: not an SB3 monitor file ({type(e).__name__})") from None
    if rows.size == 0:
        return np.zeros(0), np.zeros(0)
    return np.cumsum(rows[:, 1]), rows[:, 0]


def checkpoint_curve(run_dir: str | Path, tracks, bundle=None, progress: bool = True, max_steps: int | None = None,
                     stride: int = 1) -> Path:
    """Score every checkpoint zip of a plain SB3 run (RUN/checkpoints/*_steps.zip) on `tracks`, with the
    mean imagined return of the episodes that ended in the last 10% of steps before it (RUN/monitor.csv);
    writes RUN/curve.json (evaluations in `gaia_gym.rl.training.RealEval`'s format) and returns its path.
    Checkpoints already in curve.json are not driven again; `stride`: every stride-th checkpoint (and the
    last); `max_steps` caps episodes (smoke tests)."""
    import re

    from gaia_gym.evaluation.real import evaluate_policy
    from gaia_gym.fileio import atomic_write_json

    run = Path(run_dir)
    out = run / "curve.json"
    done = {e["timesteps"]: e for e in json.loads(out.read_text())["evals"]} if out.exists() else {}
    zips = sorted(((int(m.group(1)), z) for z in (run / "checkpoints").glob("*.zip")
                   if (m := re.search(r"_(\d+)_steps\.zip$", z.name))))
    if not zips:
        raise ConfigError(f"{run}/checkpoints: no SB3 checkpoint zips (NAME_<steps>_steps.zip)")
    k = max(1, int(stride))
    zips = [z for i, z in enumerate(zips) if i % k == k - 1 or i == len(zips) - 1]
    steps, ret = monitor_returns(run / "monitor.csv") if (run / "monitor.csv").exists() else (np.zeros(0),) * 2
    for t, z in zips:
        if t in done:
            continue
        r = evaluate_policy(str(z), seeds=tracks, bundle=bundle, progress=progress, max_steps=max_steps)
        window = (steps <= t) & (steps > 0.9 * t)
        done[t] = {"timesteps": t, "real_return_mean": r["real_return_mean"], "real_return_std": r["real_return_std"],
                   "real_return_per_seed": r["real_return_per_seed"],
                   "imagined_return_mean": float(ret[window].mean()) if window.any() else None}
        atomic_write_json(out, {"evals": [done[k] for k in sorted(done)]})
    return out


def learning_curves(runs: dict[str, str | Path], out: str | Path, reference: dict[str, float] | None = None) -> Path:
    """Real (validation tracks) and imagined return against imagined steps, one line per run; `reference`:
    horizontal lines (e.g. the prior's validation score)."""
    plt = _plt()
    fig, (ax_r, ax_i) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name, path in runs.items():
        c = read_curve(path)
        ax_r.errorbar(c["timesteps"], c["real"], yerr=c["real_std"], marker="o", ms=3, capsize=2,
                      label=f"{name} ({c['tracks']} tracks)")
        ax_i.plot(c["timesteps"], c["imagined"], marker="o", ms=3, label=name)
    for name, v in (reference or {}).items():
        ax_r.axhline(v, ls="--", lw=1, color="grey")
        ax_r.annotate(name, (ax_r.get_xlim()[0], v), fontsize=8, va="bottom")
    ax_r.set(xlabel="imagined steps", ylabel="real return (validation tracks)", title="real CarRacing-v3")
    ax_i.set(xlabel="imagined steps", ylabel="imagined episode return", title="inside the world model")
    for ax in (ax_r, ax_i):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, Path(out))


def _per_seed(record: dict, where: str) -> dict[str, float]:
    per = record.get("real_return_per_seed")
    if not isinstance(per, dict) or not per:
        raise ConfigError(f"{where}: no real_return_per_seed in that record")
    return {str(k): float(v) for k, v in per.items()}


def paired_differences(a: dict, b: dict, out: str | Path, names: tuple[str, str] = ("A", "B")) -> dict:
    """Per-track real return of B minus A on the tracks both drove (sorted bars), saved as a picture;
    returns the figures (mean, standard error, tracks where B is ahead, B's worst track)."""
    ra, rb = _per_seed(a, names[0]), _per_seed(b, names[1])
    tracks = sorted(set(ra) & set(rb), key=int)
    if not tracks:
        raise ConfigError(f"{names[0]} and {names[1]} share no track")
    d = np.array([rb[t] - ra[t] for t in tracks])
    order = np.argsort(d)
    stats = {"tracks": len(tracks), "mean_difference": float(d.mean()),
             "standard_error": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
             "b_ahead": int((d > 0).sum()), "b_worst": float(min(rb[t] for t in tracks)),
             "per_track": {t: round(float(x), 2) for t, x in zip(tracks, d)}}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(tracks)), 3.6), dpi=100)
    ax.bar(range(len(d)), d[order], color=["tab:green" if x > 0 else "tab:red" for x in d[order]])
    ax.set_xticks(range(len(d)), [tracks[i] for i in order], rotation=90, fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    se = stats["standard_error"]
    ax.set(ylabel=f"{names[1]} - {names[0]} (real return)",
           title=f"{names[1]} vs {names[0]}: {stats['mean_difference']:+.1f}"
                 + (f" +- {se:.1f} (SE)" if se is not None else "") + f", ahead on {stats['b_ahead']}/{len(d)}")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, Path(out))
    return stats


__all__ = ["checkpoint_curve", "learning_curves", "monitor_returns", "paired_differences", "read_curve"]
