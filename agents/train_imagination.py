"""Train a driving agent entirely in the world model's imagination; score it in the REAL CarRacing-v3.

    python agents/train_imagination.py --algo ppo --timesteps 2000000 --minutes 120 --out runs/agent_ppo
    python agents/train_imagination.py --algo sac --timesteps 300000 --out runs/agent_sac
    tensorboard --logdir runs/agent_ppo/tb

The agent acts in GaiaDrive-v0 (`GaiaDriveVecEnv`: `--envs` imagined episodes batched in one engine),
each episode starting from a real context clip of the model's prompt bank and lasting at most
`--horizon` steps (short horizons from real contexts limit how far the agent can drift into states
where the model is wrong, and exploit it). Its network starts from the world model
(`gaia_gym.policy.WorldModelExtractor`: the model's own token embedding, `--freeze` or `--finetune`,
plus the model's hidden features). It never sees the real simulator while learning.

Every `--eval-every` timesteps the policy drives `--eval-episodes` tracks of the REAL CarRacing-v3
(`RealCarRacingEnv`, same observation space) on fixed held-out seeds 1,000,100+ (distinct from the 20
final test seeds 1,000,000..1,000,019 of agents/evaluate_real.py); the imagined episode return (what
the agent optimises) is logged beside the real return, the real reward of the first `--horizon` steps
(the imagined episodes' length) and the return the reward head predicted along the real drive. The
best policy by real return is kept as OUT/best.zip.

OUT/ holds: last.zip (checkpoint, written atomically every `--checkpoint-minutes` and at the end),
best.zip, state.json (elapsed seconds across runs, evaluations), tb/ (TensorBoard), replay.pkl (SAC).
Rerunning the same command RESUMES from OUT/last.zip until `--timesteps` or `--minutes` (both totals
over all runs) is reached; the saved agent keeps its hyperparameters, the budget flags may change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecMonitor
from tqdm import tqdm

from gaia_gym.evaluation.real import evaluate_env_policy
from gaia_gym.policy import agent_actor

EVAL_SEEDS = 1_000_100  # real-simulator evaluations during training: 1,000,100+ (the test tracks are 1,000,000..19)


@dataclass
class Args:
    algo: str = field(default="ppo", metadata={"help": "ppo or sac", "choices": ("ppo", "sac")})
    model: str | None = field(default=None, metadata={"help": "world-model directory (None: the shipped model)"})
    envs: int = field(default=16, metadata={"help": "imagined episodes stepped together"})
    timesteps: int = field(default=1_000_000, metadata={"help": "total imagined steps (over all resumes)"})
    horizon: int = field(default=50, metadata={"help": "imagined episode length (steps)"})
    obs: str | None = field(default=None, metadata={
        "help": "observation keys: tokens (or latents, for a flow model), features or both joined by '+' "
                "(None: the model's latents + features)"})
    freeze: bool = field(default=True, metadata={"help": "keep the world model's token table fixed"})
    minutes: float | None = field(default=None, metadata={"help": "wall-clock budget in minutes (over all resumes)"})
    out: str | None = field(default=None, metadata={"help": "output directory (None: runs/agent_ALGO)"})
    eval_every: int = field(default=50_000, metadata={"help": "real-simulator evaluation every N timesteps (0: never)"})
    eval_episodes: int = field(default=3, metadata={"help": "real tracks per evaluation"})
    eval_max_steps: int | None = field(default=None, metadata={"help": "cap real evaluation episodes (smoke tests)"})
    checkpoint_minutes: float = field(default=5.0, metadata={"help": "write OUT/last.zip every N minutes"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "torch device for the world model and the agent"})
    net_arch: str = field(default="256,256", metadata={"help": "hidden layers after the extractor"})
    spatial: int = field(default=0, metadata={
        "help": "per-position token projection width (0: mean-pool; gaia_gym.policy.WorldModelExtractor)"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    batch_size: int = field(default=256, metadata={"help": "minibatch size"})
    n_steps: int = field(default=128, metadata={"help": "PPO: steps per env per rollout"})
    n_epochs: int = field(default=10, metadata={"help": "PPO: epochs per rollout"})
    ent_coef: float = field(default=0.0, metadata={"help": "PPO: entropy bonus"})
    buffer_size: int = field(default=100_000, metadata={"help": "SAC: replay buffer size"})
    learning_starts: int = field(default=1_000, metadata={"help": "SAC: steps before learning"})
    gradient_steps: int = field(default=-1, metadata={
        "help": "SAC: gradient steps per env step (-1: one per transition)"})
    prompt_data: str | None = field(default=None, metadata={
        "help": "real start contexts: a dataset directory (its train split is tokenized into OUT/tokens) or a "
                "tokenized split .npz; None: the model's prompt bank"})
    prompt_clips: int = field(default=2048, metadata={"help": "with --prompt-data: mid-drive context clips drawn"})
    standing_starts: bool = field(default=True, metadata={
        "help": "with --prompt-data: add every episode's first frame held still (how a real episode starts)"})
    speed_max: float = field(default=0.6, metadata={
        "help": "highest speed action the agent can ask for (the data's 95th percentile is ~0.5; 1 = 100 m/s)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of imagined frames"})
    end_threshold: float = field(default=0.5, metadata={"help": "end-head probability that ends an imagined episode"})
    pessimism: float = field(default=0.0, metadata={
        "help": "imagined reward minus this many standard deviations of the reward head's prediction"})
    init: str | None = field(default=None, metadata={
        "help": "start the policy (actor, critic, log std) from this agent zip, e.g. the behaviour prior "
                "(agents/behaviour_prior.py); same network and observations"})
    prior: str | None = field(default=None, metadata={
        "help": "behaviour-prior agent zip: add -prior_coef * |u - mu0(s)|^2 / (2 prior_std^2) to each imagined "
                "reward (with the entropy bonus: the reverse KL to the prior; gaia_gym.prior)"})
    prior_coef: float = field(default=1.0, metadata={"help": "weight of the prior term"})
    prior_std: float = field(default=0.3, metadata={"help": "std of the Gaussian prior around its action (agent units)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def _arg_type(hint):
    """int / float / str from a dataclass field's type (`X | None` -> X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Fmt", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    hints = typing.get_type_hints(Args)
    for f in dataclasses.fields(Args):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        if f.name == "freeze":
            g = p.add_mutually_exclusive_group()
            g.add_argument("--freeze", dest="freeze", action="store_true", default=f.default, help=meta["help"])
            g.add_argument("--finetune", dest="freeze", action="store_false", default=argparse.SUPPRESS,
                           help="fine-tune the token table with the policy instead")
        elif hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
        else:
            p.add_argument(flag, type=_arg_type(hints[f.name]), default=f.default, **meta)
    return p


def parse_args(argv: list[str] | None = None) -> Args:
    a = Args(**vars(build_parser().parse_args(argv)))
    a.out = a.out or f"runs/agent_{a.algo}"
    for name in ("envs", "timesteps", "horizon", "batch_size", "n_steps", "eval_episodes"):
        if getattr(a, name) < 1:
            raise SystemExit(f"train_imagination: --{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.minutes is not None and a.minutes <= 0:
        raise SystemExit(f"train_imagination: --minutes must be > 0, got {a.minutes}")
    return a


# ---------------------------------------------------------------------------------------------
# the run: its directory, state and clock
# ---------------------------------------------------------------------------------------------
class Run:
    """OUT/ and state.json; `elapsed()` counts wall seconds over all resumes."""

    def __init__(self, args: Args) -> None:
        from gaia_gym.fileio import clean_temp_files

        self.args, self.out = args, Path(args.out)
        if self.out.is_dir():
            clean_temp_files(self.out)  # leftovers of a write that was interrupted
        p = self.out / "state.json"
        self.state = json.loads(p.read_text()) if p.exists() else {}
        if self.state.get("algo", args.algo) != args.algo:
            raise SystemExit(f"train_imagination: {self.out} holds a {self.state['algo']} run; "
                             f"use --algo {self.state['algo']} or another --out")
        self.state.setdefault("evals", [])
        self.t0, self.prior = time.perf_counter(), float(self.state.get("elapsed_s", 0.0))

    def elapsed(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.args.minutes is not None and self.elapsed() >= self.args.minutes * 60

    def save(self, model, name: str = "last.zip") -> None:
        """Atomically (temp file + os.replace) write the agent as OUT/`name` (with last.zip: SAC's replay
        buffer), then state.json (elapsed time; with last.zip: its timesteps). `name` "state": only state.json."""
        from gaia_gym.fileio import atomic_write_bytes, atomic_write_json

        self.out.mkdir(parents=True, exist_ok=True)
        if name != "state":
            atomic_write_bytes(self.out / name, lambda f: model.save(f))
        if name == "last.zip":
            if getattr(model, "replay_buffer", None) is not None:
                atomic_write_bytes(self.out / "replay.pkl", lambda f: model.save_replay_buffer(f))
            self.state.update(num_timesteps=int(model.num_timesteps), args=dataclasses.asdict(self.args))
        self.state.update(algo=self.args.algo, elapsed_s=round(self.elapsed(), 2))
        atomic_write_json(self.out / "state.json", self.state)


# ---------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------
class ProgressBar(BaseCallback):
    """tqdm over the total timesteps (SB3's own progress bar needs `rich`)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        super().__init__()
        self.total, self.enabled, self.bar = total, enabled, None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", disable=not self.enabled,
                        dynamic_ncols=True, desc="imagination")

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class Budget(BaseCallback):
    """Stops training once the run's wall-clock budget (--minutes, over all resumes) is spent, and
    checkpoints OUT/last.zip every --checkpoint-minutes."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run, self.last_save = run, time.perf_counter()

    def _on_step(self) -> bool:
        if time.perf_counter() - self.last_save >= self.run.args.checkpoint_minutes * 60:
            self.run.save(self.model)
            self.last_save = time.perf_counter()
        return not self.run.over_budget()


class RealEval(BaseCallback):
    """Every `eval_every` timesteps: drive the real CarRacing-v3 on fixed held-out tracks, log the real
    return beside the imagined one, keep OUT/best.zip (like SB3's EvalCallback, in another env)."""

    def __init__(self, run: Run, bundle) -> None:
        super().__init__()
        self.run, self.bundle, self.env = run, bundle, None
        a = run.args
        self.every, self.seeds = a.eval_every, list(range(EVAL_SEEDS, EVAL_SEEDS + a.eval_episodes))
        self.last = run.state.get("last_eval_timesteps", 0)

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps - self.last >= self.every:
            self.evaluate()
        return True

    def evaluate(self) -> dict:
        from gaia_gym.envs.real import RealCarRacingEnv

        if self.env is None:
            self.env = RealCarRacingEnv(bundle=self.bundle, obs_mode=self.run.args.obs)
        t = time.perf_counter()
        eps, _ = evaluate_env_policy(self.env, agent_actor(self.model), self.seeds, self.run.args.eval_max_steps)
        real = np.array([e["return"] for e in eps])
        H = self.run.args.horizon
        rec = {"timesteps": int(self.num_timesteps), "elapsed_s": round(self.run.elapsed(), 1),
               "imagined_return_mean": _num(safe_mean([e["r"] for e in self.model.ep_info_buffer])),
               "imagined_length_mean": _num(safe_mean([e["l"] for e in self.model.ep_info_buffer])),
               "real_return_mean": float(real.mean()), "real_return_std": float(real.std()),
               "real_return_per_seed": {str(e["track"]): round(e["return"], 2) for e in eps},
               f"real_return_first_{H}_steps": float(np.mean([sum(e["rewards"][:H]) for e in eps])),
               "real_model_return_mean": float(np.mean([e["model_return"] for e in eps])),
               "real_steps_mean": float(np.mean([e["steps"] for e in eps])), "eval_seconds": 0.0}
        rec["eval_seconds"] = round(time.perf_counter() - t, 1)
        for k in ("imagined_return_mean", "imagined_length_mean"):
            if rec[k] is not None:  # None: no imagined episode has ended yet
                self.logger.record(f"imagined/{k[9:]}", rec[k])
        for k in ("real_return_mean", "real_return_std", f"real_return_first_{H}_steps", "real_model_return_mean",
                  "real_steps_mean", "eval_seconds"):
            self.logger.record(f"real/{k.removeprefix('real_')}", rec[k])
        self.logger.dump(self.num_timesteps)
        # recorded before best.zip is written: every real step spent is in state.json even if the run dies
        self.run.state["evals"].append(rec)
        self.last = self.run.state["last_eval_timesteps"] = int(self.num_timesteps)
        best = self.run.state.get("best_real_return")
        if best is None or rec["real_return_mean"] > best:
            self.run.state.update(best_real_return=rec["real_return_mean"], best_timesteps=rec["timesteps"])
        self.run.save(self.model, "best.zip" if self.run.state["best_timesteps"] == rec["timesteps"] else "state")
        tqdm.write(f"[{rec['timesteps']:>9} steps] imagined return {_fmt(rec['imagined_return_mean'])} | real return "
                   f"{rec['real_return_mean']:7.1f} +- {rec['real_return_std']:.1f} (first {H} steps "
                   f"{rec[f'real_return_first_{H}_steps']:.1f}, reward head {rec['real_model_return_mean']:.1f}) "
                   f"| best {self.run.state['best_real_return']:.1f}")
        return rec

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _fmt(x: float | None) -> str:
    return "    n/a" if x is None else f"{x:7.1f}"


# ---------------------------------------------------------------------------------------------
def training_prompts(args: Args, bundle, out: Path):
    """The prompt bank imagined episodes start from: the model's own, or (--prompt-data) `prompt_clips`
    mid-drive clips of the TRAINING split plus, with --standing-starts, each training episode's first
    frame held still. Real data only from the dataset the world model was trained on (no new real steps)."""
    from gaia_gym.bundle import PromptBank

    if args.prompt_data is None:
        return bundle.prompts
    src = Path(args.prompt_data)
    if src.is_dir():
        from gaia_gym.bundle import Sources, resolve_tokenizer
        from gaia_gym.train.world_model import tokenize_split

        tok_dir = resolve_tokenizer(Path(bundle.path), Sources.read(bundle.path))
        src = tokenize_split(src, tok_dir, "train", out / "tokens" / "train.npz", bundle.codec)
    elif not src.is_file():
        raise FileNotFoundError(f"{src}: no such dataset directory or tokenized split")
    C = bundle.prompts.context
    bank = PromptBank.from_token_file(src, context=C, n=args.prompt_clips, seed=args.seed, continuation=0)
    if args.standing_starts:
        bank = bank.concat(PromptBank.standing_starts(src, C, bundle.codec.encode(0.0, 0.0)))
    return bank


def make_model(args: Args, run: Run, venv, device: str):
    """A new agent, or the one in OUT/last.zip (resume)."""
    from gaia_gym.policy import algo_class, load_agent, policy_kwargs

    last, tb = run.out / "last.zip", str(run.out / "tb")
    if last.exists():
        model = load_agent(last, env=venv, device=device, tensorboard_log=tb)
        if (run.out / "replay.pkl").exists() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(run.out / "replay.pkl")
        return model, True
    arch = [int(x) for x in args.net_arch.split(",") if x.strip()]
    kw = policy_kwargs(world_model=args.model, freeze=args.freeze, net_arch=arch, spatial=args.spatial)
    common = dict(learning_rate=args.lr, gamma=args.gamma, batch_size=args.batch_size, tensorboard_log=tb,
                  seed=args.seed, device=device, verbose=0, policy_kwargs=kw)
    if args.algo == "ppo":
        algo = dict(n_steps=args.n_steps, n_epochs=args.n_epochs, ent_coef=args.ent_coef)
    else:
        algo = dict(buffer_size=args.buffer_size, learning_starts=args.learning_starts,
                    gradient_steps=args.gradient_steps)
    model = algo_class(args.algo)("MultiInputPolicy", venv, **common, **algo)
    if args.init is not None:
        init_from(model, args.init)
    model.gaia_action_range = action_range(args).as_dict()  # saved with the agent; the evaluator applies it
    return model, False


def init_from(model, path: str) -> None:
    """Copy the policy weights of the agent zip at `path` into `model` (a new agent of the same network)."""
    from gaia_gym.policy import load_agent

    src = load_agent(path, device=model.device).policy.state_dict()
    dst = model.policy.state_dict()
    bad = sorted(k for k in set(src) | set(dst) if k not in src or k not in dst or src[k].shape != dst[k].shape)
    if bad:
        raise ValueError(f"{path}: its policy does not fit this run's network ({', '.join(bad[:3])}...): "
                         "use the same --net-arch, --obs and world model")
    model.policy.load_state_dict(src)


def action_range(args: Args):
    from gaia_gym.policy import ActionRange

    return ActionRange((-1.0, -1.0), (1.0, args.speed_max))


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume) as the command line says; returns the run's state."""
    import torch

    from gaia_gym.bundle import load_bundle
    from gaia_gym.errors import ModelFileError
    from gaia_gym.envs import GaiaDriveVecEnv
    from gaia_gym.policy import ActionRange, ranged_vec_env

    args = parse_args(argv)
    run = Run(args)
    run.state["torch_threads"] = torch.get_num_threads()  # the wall-clock figures depend on it
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        bundle = load_bundle(args.model, device)
        args.obs = args.obs or f"{bundle.backend.latent_key}+features"
        bank = training_prompts(args, bundle, run.out)
        venv = GaiaDriveVecEnv(num_envs=args.envs, bundle=dataclasses.replace(bundle, prompts=bank), obs_mode=args.obs,
                               horizon=args.horizon, temperature=args.temperature, end_threshold=args.end_threshold,
                               pessimism=args.pessimism)
        ranged = ActionRange(**run.state["action_range"]) if "action_range" in run.state else action_range(args)
        venv = VecMonitor(ranged_vec_env(venv, ranged))
        if args.prior is not None:  # outside the monitor: logged imagined returns stay the model's reward
            from gaia_gym.prior import load_prior, prior_reward_env

            venv = prior_reward_env(venv, load_prior(args.prior, device), args.prior_coef, args.prior_std)
        model, resumed = make_model(args, run, venv, device)
        model.gaia_action_range = run.state["action_range"] = ranged.as_dict()
    except (ModelFileError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"train_imagination: {e}") from None
    remaining = args.timesteps - model.num_timesteps
    run.t0 = time.perf_counter()  # the budget counts training, not loading the model and the start contexts
    print(f"{'resuming' if resumed else 'training'} {args.algo} in {run.out}: {model.num_timesteps} / {args.timesteps} "
          f"steps, {run.prior / 60:.1f} min so far{'' if args.minutes is None else f' of {args.minutes}'}; "
          f"{len(bank)} start contexts, speed actions up to {ranged.high[1]:.2f}")
    if remaining <= 0 or run.over_budget():
        print("nothing to do: the run has reached --timesteps or --minutes (raise them to continue)")
        return run.state
    evaluator = RealEval(run, bundle)
    import signal

    def _stop(signum, frame):  # `kill` (SIGTERM) and SIGINT in a background job: stop and save like Ctrl-C
        raise KeyboardInterrupt

    old_handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    callbacks = CallbackList([ProgressBar(args.timesteps, args.progress), Budget(run), evaluator])
    try:
        model.learn(remaining, callback=callbacks, reset_num_timesteps=False, tb_log_name=args.algo)
        if args.eval_every > 0 and model.num_timesteps > evaluator.last:
            evaluator.evaluate()  # the final policy, unless just evaluated
    except KeyboardInterrupt:
        print("interrupted: saving OUT/last.zip; rerun the same command to resume")
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        run.save(model)
        evaluator.close()
        venv.close()
    print(f"saved {run.out / 'last.zip'} at {model.num_timesteps} steps ({run.elapsed() / 60:.1f} min in all)"
          + (f"; best real return {run.state['best_real_return']:.1f}" if "best_real_return" in run.state else ""))
    return run.state


if __name__ == "__main__":
    main(sys.argv[1:])
