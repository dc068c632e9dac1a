"""Train a driver inside the world model, from scratch, then score it on real CarRacing-v3 tracks.

    python examples/train_in_imagination.py --minutes 30
    python examples/train_in_imagination.py --data data/carracing --minutes 30   # start from real states

The agent learns only from what GaiaDrive-v0 imagines: frames, the reward head and the end head. It
never sees an expert's action or the real simulator while it learns; the real tracks only score it at
the end (validation tracks 1,000,100+, never the test tracks). Its network starts from the world
model's own token tables and hidden state (`policy_kwargs`). Each imagined episode starts from a real
context (the model's prompt bank, or `--data`: clips of the training drives) and lasts `--horizon`
steps; SB3 bootstraps the value where an episode is cut. OUT/ gets agent.zip, checkpoints every 50k
steps, monitor.csv (imagined returns) and tb/; `python benchmarks/agent_plots.py curves --run NAME=OUT`
scores the checkpoints on validation tracks and draws the curve. See docs/agents.md for what it reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import VecMonitor

from gaia_gym.bundle import load_bundle
from gaia_gym.envs import GaiaDriveVecEnv
from gaia_gym.evaluation.real import evaluate_policy
from gaia_gym.rl.agent import ActionRange, save_agent
from gaia_gym.rl.extractor import policy_kwargs
from gaia_gym.rl.training import ProgressBar, StopAfter, dataset_prompts
from gaia_gym.rl.wrappers import ranged_vec_env
from gaia_gym.seeds import validation_tracks


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of the training")
    p.add_argument("--timesteps", type=int, default=3_000_000, help="imagined steps at most")
    p.add_argument("--data", default=None, help="dataset whose training drives give the start contexts")
    p.add_argument("--envs", type=int, default=64, help="imagined episodes stepped together")
    p.add_argument("--horizon", type=int, default=32, help="imagined episode length")
    p.add_argument("--tracks", type=int, default=5, help="real validation tracks that score the agent")
    p.add_argument("--eval-max-steps", type=int, default=None, help="cap the real episodes (smoke tests)")
    p.add_argument("--out", default="runs/example_agent", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    bundle = load_bundle()  # the shipped world model
    if a.data:
        bundle = dataclasses.replace(bundle, prompts=dataset_prompts(bundle, a.data, out, clips=8192, seed=a.seed))
    speeds = ActionRange(low=(-1.0, -1.0), high=(1.0, 0.6))  # speed actions the data covers well (<= 80 m/s)
    venv = GaiaDriveVecEnv(num_envs=a.envs, bundle=bundle, obs_mode="tokens+features", horizon=a.horizon)
    out.mkdir(parents=True, exist_ok=True)
    venv = VecMonitor(ranged_vec_env(venv, speeds), filename=str(out / "monitor.csv"))  # imagined returns
    agent = PPO("MultiInputPolicy", venv, n_steps=64, batch_size=1024, n_epochs=4, learning_rate=3e-4,
                gamma=0.97, seed=a.seed, device="cpu", tensorboard_log=str(out / "tb"),
                policy_kwargs=policy_kwargs(bundle, spatial=16, log_std_init=-1.0))
    agent.gaia_action_range = speeds.as_dict()  # the evaluator maps actions the same way
    keep = CheckpointCallback(max(1, 50_000 // a.envs), str(out / "checkpoints"), name_prefix="agent")
    agent.learn(a.timesteps, callback=[ProgressBar(a.timesteps), StopAfter(a.minutes), keep])
    path = save_agent(agent, out / "agent.zip", world_model=bundle)
    score = evaluate_policy(str(path), seeds=validation_tracks(a.tracks), bundle=bundle,
                            max_steps=a.eval_max_steps, progress=True)
    print(f"{path}: {agent.num_timesteps} imagined steps; real return on {a.tracks} validation tracks "
          f"{score['real_return_mean']:.1f} +- {score['real_return_std']:.1f}")
    return score


if __name__ == "__main__":
    main()
