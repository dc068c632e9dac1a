"""Drive the REAL CarRacing-v3 by looking ahead in imagination (MPC with CEM or MPPI).

    python examples/plan_real.py                                   # 20 test tracks -> results/planning.json
    python examples/plan_real.py --candidates 16 --horizon 6 --episodes 3 --json /tmp/p.json --work /tmp/plan

At every step the world model's memory is rebuilt from the real frames seen so far
(`RealCarRacingEnv`), the planner (`gaia_gym.rl.planner.Planner`) imagines K candidate action sequences of
H steps (S sampled futures each) from there, scores them with the reward and end heads, refines
(`--iterations`), and the first action is driven in the real simulator. Tracks are the 20 test seeds
1,000,000..1,000,019 of `gaia_gym.evaluation.real`, scored the same way (CarRacing's return, zoom-in
included).

Writes into `--json` (other keys kept): real_return_mean, real_return_per_seed, decisions_per_s, the
planner's settings, and `compare`: the imagination-trained policy's and the scripted driver's returns
on the same seeds (read from `--agents`, results/agents.json); `--plot`: per-track returns of the three.
`--proposal runs/agent/best.zip` (or `shipped`) seeds every decision with the imagination-trained
policy's own imagined drive (policy proposes, planner refines) and writes under `with_policy_proposal`;
`--terminal-value AGENT` adds that agent's critic beyond the horizon (TD-MPC2's terminal value; with
`--proposal`, usually the same agent) and writes under `with_terminal_value`.
Long: each finished track is saved in `--work`; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gaia_gym.errors import exit_with, run_script
from gaia_gym.fileio import merge_json
from gaia_gym.media import save_figure, subplots
from gaia_gym.rl.planner import add_planner_args, planner_config_from_args
from gaia_gym.seeds import TEST_TRACKS, validation_tracks


def compare(agents_json: Path) -> dict:
    """The imagination-trained policy's and the scripted driver's per-seed returns from results/agents.json."""
    if not agents_json.exists():
        return {}
    r = json.loads(agents_json.read_text())
    out = {}
    if "real_return_per_seed" in r:
        out["imagination_policy"] = {"real_return_mean": r["real_return_mean"],
                                     "real_return_per_seed": r["real_return_per_seed"]}
    for k, v in r.get("baselines", {}).items():
        if k in ("scripted", "random", "ppo_real_sim"):
            out[k] = {"real_return_mean": v["real_return_mean"], "real_return_per_seed": v["real_return_per_seed"]}
    return out


def plot(path: Path, record: dict) -> None:
    import numpy as np

    series = {}
    if "real_return_per_seed" in record:
        series[f"planner ({record['planner']['method'].upper()} in imagination)"] = record["real_return_per_seed"]
    if "real_return_per_seed" in record.get("with_policy_proposal", {}):
        series["planner seeded by the policy"] = record["with_policy_proposal"]["real_return_per_seed"]
    if "real_return_per_seed" in record.get("with_terminal_value", {}):
        series["planner with the critic's terminal value"] = record["with_terminal_value"]["real_return_per_seed"]
    series.update({k.replace("_", " "): v["real_return_per_seed"] for k, v in record.get("compare", {}).items()})
    series.update({k.replace("_", " "): v["real_return_per_seed"] for k, v in record.items()  # other keyed runs
                   if k not in ("with_policy_proposal", "with_terminal_value", "compare") and isinstance(v, dict)
                   and isinstance(v.get("real_return_per_seed"), dict)})
    if not series:
        raise KeyError("no real_return_per_seed to plot")
    seeds = list(next(iter(series.values())))
    fig, ax = subplots(figsize=(10, 4.0), dpi=110)
    w = 0.8 / len(series)
    for i, (name, per) in enumerate(series.items()):
        ys = [per.get(s, np.nan) for s in seeds]
        ax.bar(np.arange(len(seeds)) + i * w, ys, w, label=f"{name} (mean {np.nanmean(ys):.0f})")
    ax.set_xticks(np.arange(len(seeds)) + 0.4 - w / 2, [s[-2:] for s in seeds])
    ax.set_xlabel(f"track (seed {seeds[0][:-2]}xx)")
    ax.set_ylabel("real CarRacing-v3 return")
    ax.axhline(0, color="k", lw=0.5)
    ncol = min(3, len(series))
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)
    ax.set_title(f"Real CarRacing-v3 returns on {len(seeds)} held-out tracks",
                 pad=6 + 11 * -(-len(series) // ncol))
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_planner_args(p)
    p.add_argument("--episodes", type=int, default=20, help="test tracks from 1,000,000 (default: %(default)s)")
    p.add_argument("--validation", action="store_true",
                   help="drive the validation tracks 1,000,100+ instead (to choose settings; test tracks score once)")
    p.add_argument("--max-steps", type=int, default=None, help="cap episodes (smoke runs; not comparable)")
    p.add_argument("--json", type=Path, default=Path("results/planning.json"), help="results file")
    p.add_argument("--plot", type=Path, default=Path("results/planning_real.png"), help="per-track plot")
    p.add_argument("--video", type=Path, default=None, help="GIF of the first track driven")
    p.add_argument("--agents", type=Path, default=Path("results/agents.json"), help="policy/scripted returns")
    p.add_argument("--work", type=Path, default=Path("runs/planning"), help="resume directory")
    p.add_argument("--proposal", default=None,
                   help="agent zip or 'shipped': the policy proposes each plan's start, the planner refines it")
    p.add_argument("--terminal-value", default=None,
                   help="agent zip or 'shipped': its critic values each sequence's end (beyond the horizon)")
    p.add_argument("--value-scale", type=float, default=1.0,
                   help="multiplies the critic's values into reward units (default: %(default)s)")
    p.add_argument("--key", default=None, help="key in --json for this run (default: the top level; with "
                                               "--proposal: with_policy_proposal; with --terminal-value: "
                                               "with_terminal_value)")
    p.add_argument("--replot", action="store_true", help="redraw --plot from --json without driving")
    a = p.parse_args(argv)
    if a.replot:
        try:
            rec = json.loads(a.json.read_text())
            plot(a.plot, rec)
        except (OSError, ValueError, KeyError) as e:
            exit_with(f"plan_real: cannot replot from {a.json}: {e!r}")
        print(f"wrote {a.plot}")
        return rec
    if not 1 <= a.episodes <= 20:
        exit_with("plan_real: --episodes must be in [1, 20] (the test tracks, or as many validation tracks)")
    from gaia_gym.bundle import load_bundle
    from gaia_gym.errors import GaiaGymError
    from gaia_gym.evaluation.real import drive_tracks, summarize_planning
    from gaia_gym.rl.agent import load_agent, resolve_agent_path
    from gaia_gym.rl.planner import PolicyProposal, PolicyValue

    try:
        cfg = planner_config_from_args(a)
        bundle = load_bundle(a.model)
        proposal = None
        if a.proposal:
            agent_path = resolve_agent_path(a.proposal)
            proposal = PolicyProposal(load_agent(agent_path, world_model=bundle, device="cpu"), bundle, cfg.horizon, seed=a.seed)
        value_fn = None
        if a.terminal_value:
            value_fn = PolicyValue(load_agent(resolve_agent_path(a.terminal_value), world_model=bundle, device="cpu"),
                                   a.value_scale)
    except (GaiaGymError, ValueError, FileNotFoundError) as e:
        exit_with(f"plan_real: {e}")
    name = f"{cfg.method}_K{cfg.candidates}_H{cfg.horizon}_S{cfg.samples}_I{cfg.iterations}_E{cfg.execute}_seed{a.seed}"
    if a.proposal:
        name += "_proposal-" + Path(a.proposal).parent.name + Path(a.proposal).stem
    if a.terminal_value:
        name += f"_value-{Path(a.terminal_value).parent.name}{Path(a.terminal_value).stem}x{a.value_scale:g}"
    if a.max_steps:
        name += f"_cap{a.max_steps}"
    if cfg.margin is not None:
        name += f"_margin{cfg.margin:g}_std{cfg.init_std:g}"
    if a.validation:
        name += "_validation"
    tracks = validation_tracks(a.episodes) if a.validation else list(TEST_TRACKS)[: a.episodes]
    eps = drive_tracks(bundle, cfg, tracks, a.work / f"{name}.json", seed=a.seed,
                       max_steps=a.max_steps, video_path=a.video, proposal=proposal, value_fn=value_fn)
    rec = summarize_planning(eps, cfg)
    if a.proposal:
        rec["proposal"] = a.proposal
    if a.terminal_value:
        rec["terminal_value"], rec["value_scale"] = a.terminal_value, a.value_scale
    rec["command"] = "python examples/plan_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    key = a.key or (f"validation_{name}" if a.validation else "with_terminal_value" if a.terminal_value
                    else "with_policy_proposal" if a.proposal else None)
    if key:
        merge_json(a.json, key, rec)
    else:
        rec["compare"] = compare(a.agents)
        merge_json(a.json, ".", rec)
    if a.plot:
        plot(a.plot, json.loads(a.json.read_text()))  # every run in the file, this one included
    print(f"planner {name}: real return {rec['real_return_mean']:.1f} +- {rec['real_return_std']:.1f} over "
          f"{len(eps)} tracks ({rec['laps_finished']} laps), {rec['decisions_per_s']:.2f} decisions/s")
    for k, v in rec.get("compare", {}).items():
        print(f"  {k}: {v['real_return_mean']:.1f}")
    print(f"wrote {a.json}" + (f" [{key}]" if key else "") + (f", {a.plot}" if a.plot else "")
          + (f", {a.video}" if a.video else ""))
    return rec


if __name__ == "__main__":
    run_script("plan_real", main, sys.argv[1:])
