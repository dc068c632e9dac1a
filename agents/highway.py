"""Agents on highway-env: trained inside GaiaHighway-v0 (or on the real simulator), scored in the real highway-env.

    python agents/highway.py real --out runs/hw_ppo_real --timesteps 77572          # PPO on the real simulator
    python agents/highway.py imagination --out runs/hw_ppo_imagined --minutes 8     # plain PPO on the features
    python agents/highway.py calibration --json results/highway.json --out cal.png   # the crash head, from a record
    python agents/highway.py evaluate --agent prior=runs/hw_prior/prior.zip \\
        --real ppo_real=runs/hw_ppo_real/last.zip --json results/highway.json --validation

The recipe that trains the shipped highway agent is the CarRacing one, on the highway world model:
agents/behaviour_prior.py (the cruise controller's labels at every logged step, cloned onto the world
model's features of the replayed drives) and agents/train_imagination.py (PPO in imagination from the
prior, with the prior term; its checkpoints scored on highway-env's validation seeds); docs/highway.md.

`real`: SB3 PPO on the real highway-env (highway-env's own Kinematics observation of the ego and the 8
nearest vehicles, our [steering, speed] action), training seeds 100,000+ of the four scenarios in turn.
`imagination`: the earlier plain PPO over `GaiaDriveVecEnv` on the world model's features alone (no
prior), kept as the "before" of docs/highway.md. `evaluate`: policies (random actions, the collector's
cruise controller, SB3 agents on the world model, real-env PPOs, the planner) on the same real episodes:
`--seeds` seeds of each of the four scenarios, test seeds 1,000,000+ or `--validation` seeds 1,000,100+
(never collected), 40 steps; per policy and scenario the mean return with a 95% interval, crash rate,
success (merge, intersection), distance and speed, the paired difference to the cruise controller, and
the end head's crash calibration along the policy's own drives (`gaia_gym.evaluation.highway_agents`).

Both trainers checkpoint OUT/last.zip atomically every few minutes and resume from it when rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

from gaia_gym.errors import run_script
from gaia_gym.envs.real_highway import SCENARIOS, RealHighwayEnv, RealKinematicsEnv
from gaia_gym.fileio import merge_json
from gaia_gym.rl.training import Checkpoint, save_model_atomic


def _train(model, venv, out: Path, timesteps: int, minutes: float) -> dict:
    t0 = time.time()
    left = max(0, timesteps - model.num_timesteps)
    if left:
        model.learn(left, callback=Checkpoint(out / "last.zip", 3.0, minutes * 60, t0), reset_num_timesteps=False,
                    progress_bar=False)
    save_model_atomic(model, out / "last.zip")
    state = {"timesteps": int(model.num_timesteps), "minutes_this_run": round((time.time() - t0) / 60, 2)}
    (out / "state.json").write_text(json.dumps(state))
    return state


def _ppo(policy: str, venv, out: Path, a) -> PPO:
    """OUT/last.zip resumed, or a new PPO (the same settings for both trainers)."""
    last = out / "last.zip"
    if last.exists():
        return PPO.load(last, env=venv, device="cpu")
    return PPO(policy, venv, n_steps=a.n_steps, batch_size=256, n_epochs=5, learning_rate=3e-4, gamma=0.9,
               ent_coef=0.005, seed=a.seed, device="cpu", verbose=0, policy_kwargs=dict(net_arch=[128, 128]),
               tensorboard_log=str(out / "tb"))


def cmd_imagination(a) -> None:
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL, load_bundle
    from gaia_gym.envs.sb3 import GaiaDriveVecEnv

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(a.model or HIGHWAY_WORLD_MODEL)
    venv = VecMonitor(GaiaDriveVecEnv(a.envs, bundle=bundle, obs_mode="features", horizon=a.horizon))  # one key: a Box
    venv.seed(a.seed)
    print(json.dumps(_train(_ppo("MlpPolicy", venv, out, a), venv, out, a.timesteps, a.minutes)))


def cmd_real(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fns = [lambda i=i: RealKinematicsEnv(seed=1000 * i) for i in range(a.envs)]
    # --subproc: the simulators step in `--envs` processes (highway-env's Python simulation is the cost)
    venv = VecMonitor(SubprocVecEnv(fns) if a.subproc else DummyVecEnv(fns))
    print(json.dumps(_train(_ppo("MlpPolicy", venv, out, a), venv, out, a.timesteps, a.minutes)))


def _policies(a, bundle) -> dict:
    """name -> (obs_mode or None, act): the baselines, SB3 agents on the world model, real-env PPOs, the planner."""
    from gaia_gym.rl.agent import agent_actor, agent_obs_mode, load_agent

    pol: dict = {} if a.no_baselines else {"random": (None, "random"), "scripted_cruise": (None, "scripted")}
    for spec in a.agent or []:
        name, path = _named(spec)
        agent = load_agent(path, world_model=bundle, device="cpu")
        pol[name] = (agent_obs_mode(agent, bundle), agent_actor(agent))
    for spec in a.real or []:
        name, path = _named(spec)
        m = PPO.load(path, device="cpu")

        def real_act(obs, m=m):  # reads highway-env's own observation, not the world model's
            o = _ENVS["current"].env.unwrapped.observation_type.observe()
            return m.predict(RealKinematicsEnv.observe(o), deterministic=True)[0]

        pol[name] = (None, real_act)
    if a.planner:
        from gaia_gym.rl.planner import Planner, PlannerConfig

        planner = Planner(bundle, PlannerConfig(horizon=a.plan_horizon, candidates=a.plan_samples, iterations=2,
                                                elites=min(6, a.plan_samples), high=(1.0, 1.0)))
        pol["planner"] = (None, lambda obs: planner.act(_ENVS["current"].engine.state()).cpu().numpy())
    return pol


_ENVS: dict = {}  # obs_mode -> RealHighwayEnv; "current": the one driving now


def _named(spec: str) -> tuple[str, str]:
    if "=" not in spec:
        raise SystemExit(f"highway: expected NAME=PATH, got {spec!r}")
    name, path = spec.split("=", 1)
    return name.strip(), path.strip()


def cmd_evaluate(a) -> None:
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL, load_bundle
    from gaia_gym.evaluation.highway_agents import (calibration, drive, episodes_of, paired_difference,
                                                    plot_calibration, summarize_highway)
    from gaia_gym.seeds import test_tracks, validation_tracks

    if not 1 <= a.seeds <= 100:
        raise SystemExit(f"highway: --seeds must be 1..100 per scenario (validation seeds start 100 above the test "
                         f"seeds), got {a.seeds}")
    bundle = load_bundle(a.model or HIGHWAY_WORLD_MODEL)
    seeds = validation_tracks(a.seeds) if a.validation else test_tracks(a.seeds)
    episodes = episodes_of(seeds, a.scenarios.split(",") if a.scenarios else None)
    key = a.key or ("agents_validation" if a.validation else "agents_test")
    command = " ".join(["python", "agents/highway.py", *sys.argv[1:]])
    old = {}
    if a.json and Path(a.json).exists():
        old = json.loads(Path(a.json).read_text()).get(key) or {}
    same = old.get("seeds") == seeds and old.get("scenarios") == sorted({s for _, s in episodes}) and not a.replace
    record = {"seeds": seeds, "scenarios": sorted({s for _, s in episodes}), "episode_steps": 40,
              "split": "validation" if a.validation else "test",
              "policies": dict(old.get("policies", {})) if same else {},
              "calibration": dict(old.get("calibration", {})) if same else {}}
    for name, (mode, act) in _policies(a, bundle).items():
        mode = mode or "features"
        if mode not in _ENVS:
            _ENVS[mode] = RealHighwayEnv(bundle=bundle, obs_mode=mode)
        _ENVS["current"] = _ENVS[mode]
        t0 = time.time()
        eps = drive(_ENVS[mode], act, episodes, progress=not a.no_progress, desc=name)
        rec = summarize_highway(eps, time.time() - t0)
        rec.update(command=command, world_model=str(bundle.path),
                   real_transitions=(a.transitions or {}).get(name))
        record["policies"][name] = rec
        record["calibration"][name] = calibration(eps)
        o = rec["overall"]
        print(f"{name:>20}: return {o['return_mean']:6.2f} [{o['return_ci95'][0]:.2f}, {o['return_ci95'][1]:.2f}] | "
              f"crash " + " / ".join(f"{v['crash_rate']:.2f}" for v in rec["per_scenario"].values())
              + f" | success {o.get('success_rate', float('nan')):.2f} | {o['distance_m_mean']:.0f} m, "
              f"{o['speed_mps_mean']:.1f} m/s | {rec['wall_seconds']:.0f} s", flush=True)
        if a.json:  # after every policy: an interrupted evaluation keeps what it measured
            merge_json(a.json, key, record)
    if "scripted_cruise" in record["policies"]:
        record["vs_scripted"] = {n: paired_difference(r, record["policies"]["scripted_cruise"])
                                 for n, r in record["policies"].items() if n != "scripted_cruise"}
    record["command"] = command
    if a.json:
        merge_json(a.json, key, record)
    if a.calibration_plot:
        plot_calibration({n: c for n, c in record["calibration"].items()
                          if not a.calibration_policies or n in a.calibration_policies.split(",")},
                         a.calibration_plot, title=f"crash head along real drives ({record['split']} seeds, "
                         f"{len(seeds)} per scenario)")
        print(f"wrote {a.calibration_plot}")


def cmd_calibration(a) -> None:
    """The crash head's reliability diagram of policies an `evaluate` record holds (no driving)."""
    from gaia_gym.evaluation.highway_agents import plot_calibration

    rec = (json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}).get(a.key)
    if not rec or "calibration" not in rec:
        raise SystemExit(f"highway: {a.json} has no evaluate record {a.key!r} with calibration")
    names = a.policies.split(",") if a.policies else list(rec["calibration"])
    bad = [n for n in names if n not in rec["calibration"]]
    if bad:
        raise SystemExit(f"highway: {a.key} has no policy {bad[0]!r} (it has {', '.join(rec['calibration'])})")
    plot_calibration({n: rec["calibration"][n] for n in names}, a.out,
                     title=f"crash head along real drives ({rec.get('split', '')} seeds, {len(rec['seeds'])} per scenario)")
    print(f"wrote {a.out}")


def _transitions(items) -> dict:
    out = {}
    for spec in items or []:
        name, n = _named(spec)
        out[name] = int(n)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("imagination", cmd_imagination), ("real", cmd_real)):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--model", help="highway world-model directory (default: the shipped one)")
        s.add_argument("--timesteps", type=int, default=200_000)
        s.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this run")
        s.add_argument("--envs", type=int, default=16 if name == "imagination" else 4)
        s.add_argument("--horizon", type=int, default=40)
        s.add_argument("--n-steps", type=int, default=64 if name == "imagination" else 256)
        s.add_argument("--seed", type=int, default=0)
        if name == "real":
            s.add_argument("--subproc", action="store_true", help="step the simulators in separate processes")
        s.set_defaults(fn=fn)
    e = sub.add_parser("evaluate", help="score policies in the real highway-env (same episodes for all)")
    e.add_argument("--model", help="highway world-model directory (default: the shipped one)")
    e.add_argument("--agent", action="append", metavar="NAME=ZIP",
                   help="an SB3 agent trained on the world model's observations (repeatable)")
    e.add_argument("--real", action="append", metavar="NAME=ZIP",
                   help="a PPO trained in the real highway-env on its Kinematics observation (repeatable)")
    e.add_argument("--transitions", action="append", metavar="NAME=N",
                   help="real transitions a policy used (recorded beside it; repeatable)")
    e.add_argument("--planner", action="store_true", help="also the planner over the world model")
    e.add_argument("--plan-horizon", type=int, default=6)
    e.add_argument("--plan-samples", type=int, default=16, help="candidate action sequences per decision")
    e.add_argument("--seeds", type=int, default=20, help="seeds per scenario (test: 1,000,000+; "
                   "--validation: 1,000,100+)")
    e.add_argument("--validation", action="store_true", help="the validation seeds (every choice is made there)")
    e.add_argument("--scenarios", help="comma-separated subset of the scenarios (default: all four)")
    e.add_argument("--json", help="merge the record into this JSON file under --key (policies evaluated before on "
                   "the same seeds and not rerun are kept, each with its own command)")
    e.add_argument("--key", help="JSON key (default: agents_test, or agents_validation)")
    e.add_argument("--replace", action="store_true", help="drop the policies of an earlier record under --key")
    e.add_argument("--no-baselines", action="store_true",
                   help="skip random actions and the cruise controller (they do not depend on the world model)")
    e.add_argument("--calibration-plot", help="write the crash head's reliability diagram (PNG) of the record's "
                   "policies")
    e.add_argument("--calibration-policies", help="comma-separated policies for the plot (default: all)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_evaluate)
    c = sub.add_parser("calibration", help="draw the crash head's calibration from an evaluate record")
    c.add_argument("--json", required=True, help="the JSON file evaluate wrote")
    c.add_argument("--key", default="agents_test")
    c.add_argument("--policies", help="comma-separated policies (default: all)")
    c.add_argument("--out", required=True, help="PNG to write")
    c.set_defaults(fn=cmd_calibration)
    for sp in sub.choices.values():
        sp.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.cmd == "evaluate":
        a.transitions = _transitions(a.transitions)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.fn(a)


if __name__ == "__main__":
    run_script("highway", main)
