"""Pictures of agents trained in imagination (gaia_gym.evaluation.agent_plots does the work).

    # real return (validation tracks) and imagined return against imagined steps, one line per run;
    # a run is agents/train_imagination.py's OUT (state.json) or a plain SB3 run with checkpoints
    # (examples/train_in_imagination.py's OUT: its checkpoints are scored first, resumably)
    python benchmarks/agent_plots.py curves --run "PMPO from the prior=runs/ft_pmpo" \\
        --run "PPO from scratch=runs/example_agent" --reference "prior=885.7" --out results/agents_curves.png

    # per-track difference of B minus A on the tracks both drove (evaluate_real.py --json records)
    python benchmarks/agent_plots.py paired --a results/agents.json:prior_v2_default_model \\
        --b results/agents.json:pmpo_from_prior --out results/agents_paired.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gaia_gym.errors import ConfigError, exit_with, run_script


def _record(spec: str) -> dict:
    """FILE.json:dotted.key -> that record."""
    path, _, key = spec.partition(":")
    d = json.loads(Path(path).read_text())
    for part in filter(None, key.split(".")):
        if not isinstance(d, dict) or part not in d:
            raise ConfigError(f"{spec}: no key {part!r}")
        d = d[part]
    return d


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep:
            raise ConfigError(f"{what} {it!r}: write NAME=VALUE")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves", help="learning curves of training runs")
    c.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    c.add_argument("--reference", action="append", default=[], help="NAME=RETURN: a horizontal line")
    c.add_argument("--tracks", type=int, default=5, help="validation tracks per checkpoint of a plain SB3 run")
    c.add_argument("--stride", type=int, default=1, help="score every N-th checkpoint of a plain SB3 run (and the last)")
    c.add_argument("--out", type=Path, default=Path("results/agents_curves.png"))
    d = sub.add_parser("paired", help="per-track differences of two evaluations on the same tracks")
    d.add_argument("--a", required=True, help="FILE.json:key of the first policy's record")
    d.add_argument("--b", required=True, help="FILE.json:key of the second")
    d.add_argument("--out", type=Path, default=Path("results/agents_paired.png"))
    d.add_argument("--json", type=Path, default=None, help="merge the figures into this JSON file (--key)")
    d.add_argument("--key", default=None, help="key in --json")
    a = p.parse_args(argv)
    from gaia_gym.evaluation.agent_plots import checkpoint_curve, learning_curves, paired_differences

    if a.what == "curves":
        from gaia_gym.seeds import validation_tracks

        runs = _pairs(a.run, "--run")
        for name, run in runs.items():
            if not (Path(run) / "state.json").exists():
                checkpoint_curve(run, validation_tracks(a.tracks), stride=a.stride)
        refs = {k: float(v) for k, v in _pairs(a.reference, "--reference").items()}
        print(f"wrote {learning_curves(runs, a.out, refs)}")
    else:
        names = (a.a.rpartition(":")[2] or "A", a.b.rpartition(":")[2] or "B")
        stats = paired_differences(_record(a.a), _record(a.b), a.out, names)
        print(f"{names[1]} - {names[0]}: {stats['mean_difference']:+.1f} +- {stats['standard_error'] or 0:.1f} (SE) "
              f"over {stats['tracks']} tracks; ahead on {stats['b_ahead']}; worst of {names[1]} {stats['b_worst']:.1f}")
        print(f"wrote {a.out}")
        if a.json:
            if not a.key:
                exit_with("agent_plots: --json needs --key")
            from gaia_gym.fileio import merge_json

            merge_json(a.json, a.key, {**stats, "a": a.a, "b": a.b, "picture": str(a.out),
                                       "command": "python benchmarks/agent_plots.py " + " ".join(
                                           argv if argv is not None else sys.argv[1:])})


if __name__ == "__main__":
    run_script("agent_plots", main, sys.argv[1:])
