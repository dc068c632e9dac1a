"""Baseline: SB3 PPO trained directly on the REAL CarRacing-v3 (no world model), for a wall-clock budget.

    python agents/train_real_ppo.py --minutes 40 --out runs/real_ppo
    python agents/train_real_ppo.py --minutes 40 --out runs/real_ppo --json results/agents.json   # + score

The RL Zoo's CarRacing recipe (CnnPolicy on 64x64 grayscale frames, 2 stacked, the simulator's native
[steer, gas, brake] actions repeated for 2 frames, gSDE, reward normalisation, GELU 256-unit heads),
trained for `--minutes` of wall-clock on this machine, then scored on the 20 test tracks
1,000,000..1,000,019 exactly as `agents/evaluate_real.py` scores every other policy: the whole
1000-frame episode, -0.1 per frame from the first (the zoom-in included), deterministic actions.
This answers "what would the same CPU time buy without a world model?".

OUT/ holds last.zip and vecnormalize.pkl (checkpointed atomically every `--checkpoint-minutes`),
state.json (elapsed seconds, real transitions used) and tb/. Rerunning the same command resumes
until `--minutes` (a total over all runs) is spent.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

from gaia_gym.errors import exit_with, run_script
from gaia_gym.evaluation.real import summarize
from gaia_gym.seeds import TEST_TRACKS
from gaia_gym.fileio import merge_json

FRAME_SKIP = 2  # the zoo's CarRacing wrapper repeats each action for 2 simulator frames


def make_env(seed: int | None = None):
    """CarRacing-v3 as the zoo trains it: 64x64 grayscale, 2-frame action repeat (stacking is done by
    VecFrameStack). Episodes are the registered 1000 frames."""
    import gymnasium as gym
    from gymnasium.wrappers import GrayscaleObservation, ResizeObservation
    from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv
    from stable_baselines3.common.monitor import Monitor

    env = gym.make("CarRacing-v3", disable_env_checker=True)
    env = Monitor(env)  # counts every simulator frame's reward: the episode return as CarRacing scores it
    env = MaxAndSkipEnv(env, skip=FRAME_SKIP)
    env = ResizeObservation(env, (64, 64))
    env = GrayscaleObservation(env, keep_dim=True)
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_vec(n: int, seed: int):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecTransposeImage

    venv = DummyVecEnv([lambda i=i: make_env(seed + i) for i in range(n)])
    return VecTransposeImage(VecFrameStack(venv, n_stack=2))


def new_agent(venv, tb: str, seed: int):
    from stable_baselines3 import PPO
    from torch import nn

    return PPO("CnnPolicy", venv, learning_rate=1e-4, n_steps=512, batch_size=128, n_epochs=10, gamma=0.99,
               gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, use_sde=True,
               sde_sample_freq=4, policy_kwargs=dict(log_std_init=-2, ortho_init=False, activation_fn=nn.GELU,
                                                    net_arch=dict(pi=[256], vf=[256])),
               tensorboard_log=tb, seed=seed, verbose=0, device="cpu")


def evaluate(agent, vecnorm_path: Path | None, seeds=TEST_TRACKS) -> list[dict]:
    """Deterministic episodes on `seeds`; returns are the Monitor's (every frame of the episode)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecNormalize, VecTransposeImage

    episodes = []
    for s in seeds:
        venv = VecTransposeImage(VecFrameStack(DummyVecEnv([lambda: make_env()]), n_stack=2))
        if vecnorm_path is not None and vecnorm_path.exists():
            venv = VecNormalize.load(str(vecnorm_path), venv)
            venv.training, venv.norm_reward = False, False
        venv.seed(int(s))
        obs, done, steps = venv.reset(), False, 0
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, _, dones, infos = venv.step(action)
            done, steps = bool(dones[0]), steps + 1
        ep = infos[0]["episode"]
        tiles = infos[0].get("lap_finished", False)
        episodes.append({"track": int(s), "return": float(ep["r"]), "steps": steps, "lap_finished": bool(tiles)})
        venv.close()
    return episodes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget (total over resumes)")
    p.add_argument("--out", type=Path, default=Path("runs/real_ppo"), help="output directory")
    p.add_argument("--envs", type=int, default=8, help="parallel simulators (DummyVecEnv, one process)")
    p.add_argument("--seed", type=int, default=0, help="training seed (training tracks come from the env's RNG)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint every N minutes")
    p.add_argument("--json", type=Path, default=None, help="score on the 20 test tracks and merge here")
    p.add_argument("--key", default="ppo_real_sim", help="key under `baselines` in --json")
    p.add_argument("--episodes", type=int, default=len(TEST_TRACKS), help="test tracks to score (default 20)")
    a = p.parse_args(argv)
    if a.minutes <= 0 or a.envs < 1:
        exit_with("train_real_ppo: --minutes must be > 0 and --envs >= 1")
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecNormalize

    from gaia_gym.fileio import atomic_write_bytes, atomic_write_json

    a.out.mkdir(parents=True, exist_ok=True)
    state_p, last, vn_p = a.out / "state.json", a.out / "last.zip", a.out / "vecnormalize.pkl"
    state = json.loads(state_p.read_text()) if state_p.exists() else {"elapsed_s": 0.0}
    t0, prior = time.perf_counter(), float(state["elapsed_s"])
    elapsed = lambda: prior + time.perf_counter() - t0  # noqa: E731
    venv = make_vec(a.envs, a.seed + int(prior))  # a resumed run draws new training tracks
    if last.exists():
        venv = VecNormalize.load(str(vn_p), venv) if vn_p.exists() else VecNormalize(venv, norm_obs=False)
        agent = PPO.load(last, env=venv, device="cpu", tensorboard_log=str(a.out / "tb"))
    else:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True)
        agent = new_agent(venv, str(a.out / "tb"), a.seed)

    def save() -> None:
        atomic_write_bytes(last, lambda f: agent.save(f))
        atomic_write_bytes(vn_p, lambda f: pickle.dump(venv, f))  # what VecNormalize.save writes, atomically
        state.update(elapsed_s=round(elapsed(), 1), real_env_steps=int(agent.num_timesteps),
                     real_sim_frames=int(agent.num_timesteps) * FRAME_SKIP)
        atomic_write_json(state_p, state)

    class Clock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.saved = time.perf_counter()

        def _on_step(self) -> bool:
            if time.perf_counter() - self.saved > a.checkpoint_minutes * 60:
                save()
                self.saved = time.perf_counter()
            return elapsed() < a.minutes * 60

    if elapsed() < a.minutes * 60:
        print(f"training PPO on the real CarRacing-v3: {agent.num_timesteps} steps, {prior / 60:.1f} of {a.minutes} min")
        try:
            agent.learn(10**9, callback=Clock(), reset_num_timesteps=False, tb_log_name="ppo_real")
        except KeyboardInterrupt:
            print("interrupted: saving; rerun the same command to resume")
        finally:
            save()
    print(f"trained {elapsed() / 60:.1f} min: {agent.num_timesteps} agent steps = "
          f"{agent.num_timesteps * FRAME_SKIP} real simulator frames")
    venv.close()
    if a.json is None:
        return state
    t = time.perf_counter()
    eps = evaluate(agent, vn_p, TEST_TRACKS[: a.episodes])
    rec = summarize("ppo_real_sim", eps, time.perf_counter() - t, zoom_penalty_included=0.0,
                    train_minutes=round(state["elapsed_s"] / 60, 1), real_env_steps_used=int(agent.num_timesteps),
                    real_sim_frames_used=int(agent.num_timesteps) * FRAME_SKIP,
                    recipe="rl-zoo CarRacing PPO (CnnPolicy, 64x64 gray x2, skip 2, gSDE)",
                    command="python " + " ".join(["agents/train_real_ppo.py", *(argv if argv is not None else sys.argv[1:])]))
    print(f"PPO (real simulator, {rec['train_minutes']} min): real return {rec['real_return_mean']:.1f} +- "
          f"{rec['real_return_std']:.1f} over {len(eps)} tracks")
    merge_json(a.json, "baselines", {a.key: rec}, update=True)
    print(f"wrote {a.json} [baselines.{a.key}]")
    return rec


if __name__ == "__main__":
    run_script("train_real_ppo", main, sys.argv[1:])
