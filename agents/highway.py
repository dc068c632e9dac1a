"""Agents on highway-env: PPO trained entirely inside GaiaHighway-v0, scored in the real highway-env.

    python agents/highway.py imagination --out runs/hw_ppo_imagined --timesteps 200000   # in the world model
    python agents/highway.py real --out runs/hw_ppo_real --timesteps 38000               # in the real sim
    python agents/highway.py evaluate --imagined runs/hw_ppo_imagined/last.zip \\
        --real runs/hw_ppo_real/last.zip --json results/highway.json

`imagination`: SB3 PPO over `GaiaDriveVecEnv` on the highway world model (`--envs` imagined episodes
batched in one engine, each from a real context clip of the model's prompt bank, conditioned on that
clip's metadata, at most `--horizon` steps), observing the world model's features; it never sees the
real simulator. `real`: the same PPO on the real highway-env (highway-env's own Kinematics observation
of the ego and the 8 nearest vehicles, our [steering, speed] action), given as many real transitions
as the world model's dataset holds. `evaluate`: every policy (random actions, the collector's cruise
controller, both PPOs, and the planner over the world model) on the real highway-env, held-out seeds
1,000,000+ of every scenario, 40-step episodes, highway-env's reward.

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
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from gaia_gym.errors import run_script
from gaia_gym.envs.real_highway import SCENARIOS, RealHighwayEnv, RealKinematicsEnv
from gaia_gym.evaluation.real import run_episode
from gaia_gym.fileio import merge_json
from gaia_gym.rl.training import Checkpoint, save_model_atomic
from gaia_gym.seeds import HIGHWAY_TEST_SEED


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
    venv = VecMonitor(DummyVecEnv([lambda i=i: RealKinematicsEnv(seed=1000 * i) for i in range(a.envs)]))
    print(json.dumps(_train(_ppo("MlpPolicy", venv, out, a), venv, out, a.timesteps, a.minutes)))


def cmd_evaluate(a) -> None:
    from gaia_gym.bundle import HIGHWAY_WORLD_MODEL, load_bundle

    bundle = load_bundle(a.model or HIGHWAY_WORLD_MODEL)
    env = RealHighwayEnv(bundle=bundle, obs_mode="features")
    seeds = [HIGHWAY_TEST_SEED + i for i in range(a.seeds)]
    policies: dict = {} if a.no_baselines else {"random": "random", "scripted_cruise": "scripted"}
    if a.imagined:
        m = PPO.load(a.imagined, device="cpu")
        dict_agent = hasattr(m.observation_space, "spaces")  # an agent trained on the former one-key Dict
        policies["ppo_imagined"] = lambda obs: m.predict({"features": obs} if dict_agent else obs, deterministic=True)[0]
    if a.real:
        m2 = PPO.load(a.real, device="cpu")
        def real_act(obs, m2=m2):
            o = env.env.unwrapped.observation_type.observe()
            return m2.predict(RealKinematicsEnv.observe(o), deterministic=True)[0]

        policies["ppo_real"] = real_act
    if a.planner:
        from gaia_gym.rl.planner import Planner, PlannerConfig

        planner = Planner(bundle, PlannerConfig(horizon=a.plan_horizon, candidates=a.plan_samples, iterations=2,
                                                elites=min(6, a.plan_samples), high=(1.0, 1.0)))
        policies["planner"] = lambda obs: planner.act(env.engine.state()).cpu().numpy()
    results = {}
    for name, act in policies.items():
        t0 = time.time()
        per = {}
        for scen in SCENARIOS:
            per[scen] = [run_episode(env, act, s, scenario=scen) for s in seeds]
        rets = {k: [round(r["return"], 3) for r in v] for k, v in per.items()}
        results[name] = {
            "real_return_per_seed": rets,
            "real_return_mean": {k: round(float(np.mean(v)), 3) for k, v in rets.items()},
            "overall_mean": round(float(np.mean([x for v in rets.values() for x in v])), 3),
            "crash_rate": {k: round(float(np.mean([r["crashed"] for r in v])), 3) for k, v in per.items()},
            "model_return_mean": round(float(np.mean([r["model_return"] for v in per.values() for r in v])), 3),
            "wall_seconds": round(time.time() - t0, 1),
        }
        print(name, json.dumps({k: results[name][k] for k in ("real_return_mean", "overall_mean", "crash_rate")}),
              flush=True)
    command = " ".join(["python", "agents/highway.py", *sys.argv[1:]])
    for r in results.values():
        r["world_model"], r["command"] = str(bundle.path), command
    record = {"seeds": seeds, "episode_steps": 40, "policies": results,
              "real_env_steps_used": {"world_model_dataset": a.dataset_steps,
                                      "ppo_real": a.real_steps, "ppo_imagined": a.dataset_steps},
              "command": command}
    if a.json:
        old = {}
        if Path(a.json).exists():
            old = json.loads(Path(a.json).read_text()).get("agents") or {}
        if old.get("seeds") == seeds and not a.replace:  # the same test seeds: keep the policies not rerun
            record["policies"] = {**old.get("policies", {}), **results}
            record["real_env_steps_used"] = {**old.get("real_env_steps_used", {}),
                                             **{k: v for k, v in record["real_env_steps_used"].items() if v}}
        merge_json(a.json, "agents", record)


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
        s.set_defaults(fn=fn)
    e = sub.add_parser("evaluate")
    e.add_argument("--model")
    e.add_argument("--imagined", help="PPO trained in imagination (zip)")
    e.add_argument("--real", help="PPO trained in the real highway-env (zip)")
    e.add_argument("--planner", action="store_true", help="also the planner over the world model")
    e.add_argument("--plan-horizon", type=int, default=6)
    e.add_argument("--plan-samples", type=int, default=16, help="candidate action sequences per decision")
    e.add_argument("--seeds", type=int, default=10, help="held-out seeds per scenario")
    e.add_argument("--dataset-steps", type=int, default=0, help="real transitions in the world model's dataset")
    e.add_argument("--real-steps", type=int, default=0, help="real transitions the real PPO used")
    e.add_argument("--json", help="merge the results into this JSON file (under 'agents'; policies evaluated "
                   "before on the same seeds and not rerun are kept, each with its own world model and command)")
    e.add_argument("--replace", action="store_true", help="drop the policies of an earlier --json record")
    e.add_argument("--no-baselines", action="store_true",
                   help="skip random actions and the cruise controller (they do not depend on the world model)")
    e.set_defaults(fn=cmd_evaluate)
    for sp in sub.choices.values():
        sp.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.fn(a)


if __name__ == "__main__":
    run_script("highway", main)
