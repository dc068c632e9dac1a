"""Planning return against compute: candidates K, horizon H, sampled futures S (real CarRacing-v3).

    python examples/plan_compute_sweep.py                     # -> results/planning.json [compute_sweep] + plot
    python examples/plan_compute_sweep.py --episodes 1 --max-steps 20 --json /tmp/s.json --work /tmp/sweep

Varies one setting at a time around a base planner (`--candidates/--horizon/--samples/--iterations`)
and drives each variant on `--episodes` VALIDATION tracks 1,000,100+ (never the 20 test tracks: the
setting for the test run is chosen here), for the first `--max-steps` steps of each track (returns are
of those steps, comparable across variants, not with full-episode returns). Reports per variant the
real return, imagined transitions per decision, and decisions per second on this machine. Each
finished (variant, track) is saved in `--work`; rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from gaia_gym.errors import exit_with, run_script
from gaia_gym.fileio import merge_json
from gaia_gym.media import save_figure, subplots
from gaia_gym.rl.planner import add_planner_args, planner_config_from_args
from gaia_gym.seeds import validation_tracks


def variants(base, ks=(8, 16, 32, 64), hs=(3, 6, 10), ss=(1, 2)) -> list:
    """The base config, then one setting changed at a time (duplicates removed)."""
    out, seen = [], set()
    for cfg in [base, *(replace(base, candidates=k, elites=max(2, min(base.elites, k // 3))) for k in ks),
                *(replace(base, horizon=h) for h in hs), *(replace(base, samples=s) for s in ss)]:
        key = (cfg.candidates, cfg.horizon, cfg.samples, cfg.iterations)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def plot(path: Path, rows: list[dict], base) -> None:
    fig, axes = subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for name, key, marker in (("K (candidates)", "candidates", "o"), ("H (horizon)", "horizon", "s"),
                              ("S (futures per sequence)", "samples", "^")):
        others = [k for k in ("candidates", "horizon", "samples") if k != key]
        pts = sorted((r for r in rows if all(r["planner"][o] == getattr(base, o) for o in others)),
                     key=lambda r: r["planner"][key])
        xs = [r["planner"]["imagined_steps_per_decision"] for r in pts]
        axes[0].plot(xs, [r["real_return_mean"] for r in pts], marker=marker, label=f"vary {name}")
        for r, x in zip(pts, xs):
            if key == "candidates" or r["planner"][key] != getattr(base, key):  # the base point once
                axes[0].annotate(f"{name[0]}={r['planner'][key]}", (x, r["real_return_mean"]), fontsize=7,
                                 xytext=(3, 3), textcoords="offset points")
        axes[1].plot(xs, [r["decisions_per_s"] for r in pts], marker=marker, label=f"vary {name}")
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[0].set_xlabel("imagined transitions per decision")
    axes[1].set_xlabel("imagined transitions per decision")
    axes[0].set_ylabel(f"real return, first {rows[0]['max_steps']} steps")
    axes[1].set_ylabel("decisions / s (this machine)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Planning: real return and speed against compute", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_planner_args(p)
    p.add_argument("--episodes", type=int, default=3, help="validation tracks per variant (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=100, help="steps driven per track (default: %(default)s)")
    p.add_argument("--ks", default="8,16,32,64", help="candidate counts to try (default: %(default)s)")
    p.add_argument("--hs", default="3,6,10", help="horizons to try (default: %(default)s)")
    p.add_argument("--ss", default="1,2", help="futures per sequence to try (default: %(default)s)")
    p.add_argument("--json", type=Path, default=Path("results/planning.json"), help="results file")
    p.add_argument("--plot", type=Path, default=Path("results/planning_compute.png"), help="plot")
    p.add_argument("--work", type=Path, default=Path("runs/planning_sweep"), help="resume directory")
    a = p.parse_args(argv)
    if a.episodes < 1 or a.max_steps < 1:
        exit_with("plan_compute_sweep: --episodes and --max-steps must be >= 1")
    from gaia_gym.bundle import load_bundle
    from gaia_gym.errors import GaiaGymError
    from gaia_gym.evaluation.real import drive_tracks, summarize_planning

    ints = lambda s: tuple(int(x) for x in s.split(",") if x.strip())  # noqa: E731
    try:
        base = planner_config_from_args(a)
        todo = variants(base, ints(a.ks), ints(a.hs), ints(a.ss))
        bundle = load_bundle(a.model)
    except (GaiaGymError, ValueError) as e:
        exit_with(f"plan_compute_sweep: {e}")
    tracks = validation_tracks(a.episodes)
    rows = []
    for i, cfg in enumerate(todo):
        name = f"{cfg.method}_K{cfg.candidates}_H{cfg.horizon}_S{cfg.samples}_I{cfg.iterations}_E{cfg.execute}_cap{a.max_steps}"
        print(f"[{i + 1}/{len(todo)}] {name}: {cfg.imagined_steps()} imagined transitions per decision")
        eps = drive_tracks(bundle, cfg, tracks, a.work / f"{name}.json", seed=a.seed, max_steps=a.max_steps)
        r = summarize_planning(eps, cfg)
        r["max_steps"] = a.max_steps
        rows.append(r)
        print(f"    real return {r['real_return_mean']:.1f} +- {r['real_return_std']:.1f}, "
              f"{r['decisions_per_s']:.2f} decisions/s")
    merge_json(a.json, "compute_sweep", {
        "tracks": tracks, "max_steps": a.max_steps, "rows": rows,
        "note": f"returns of the first {a.max_steps} real steps on validation tracks (not the test tracks)",
        "command": "python examples/plan_compute_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    if a.plot:
        plot(a.plot, rows, base)
    print(f"wrote {a.json} [compute_sweep]" + (f", {a.plot}" if a.plot else ""))
    return rows


if __name__ == "__main__":
    run_script("plan_compute_sweep", main, sys.argv[1:])
