"""Train a driving agent entirely in the world model's imagination; score it in the REAL simulator.

    python agents/train_imagination.py --algo ppo --timesteps 2000000 --minutes 120 --out runs/agent_ppo
    python agents/train_imagination.py --algo sac --timesteps 300000 --out runs/agent_sac
    python agents/train_imagination.py --model gaia_gym/assets/world_model_highway --init runs/hw_prior/prior.zip \\
        --prior runs/hw_prior/prior.zip --spatial 8 --per-token --prompt-data data/highway2 --out runs/hw_ft
    tensorboard --logdir runs/agent_ppo/tb

On a highway-env world model (docs/highway.md) the same script trains in GaiaHighway-v0 and scores its
checkpoints in the real highway-env (`RealHighwayEnv`, `--eval-episodes` validation seeds of each of the
four scenarios; the crash rate is logged too); everything below about CarRacing's tracks holds for
those seeds.

The agent acts in GaiaDrive-v0 (`GaiaDriveVecEnv`: `--envs` imagined episodes batched in one engine),
each episode starting from a real context clip of the model's prompt bank and lasting at most
`--horizon` steps (short horizons from real contexts limit how far the agent can drift into states
where the model is wrong, and exploit it). Its network starts from the world model
(`gaia_gym.rl.extractor.WorldModelExtractor`: the model's own token embedding, `--freeze` or `--finetune`,
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
import sys
import time
import types
import typing
from dataclasses import dataclass, field

from stable_baselines3.common.vec_env import VecMonitor

from gaia_gym.errors import exit_with, run_script


@dataclass
class Args:
    algo: str = field(default="ppo", metadata={
        "help": "ppo, sac, or pmpo (PPO's rollouts with the sign-of-advantage update and a KL to --prior: "
                "gaia_gym.rl.pmpo)", "choices": ("ppo", "sac", "pmpo")})
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
        "help": "per-position token projection width (0: mean-pool; gaia_gym.rl.extractor.WorldModelExtractor)"})
    per_token: bool = field(default=False, metadata={
        "help": "with --spatial: every token its own position, not every patch (gaia_gym.rl.extractor.policy_kwargs)"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    batch_size: int = field(default=256, metadata={"help": "minibatch size"})
    n_steps: int = field(default=128, metadata={"help": "PPO: steps per env per rollout"})
    n_epochs: int = field(default=10, metadata={"help": "PPO: epochs per rollout"})
    ent_coef: float = field(default=0.0, metadata={"help": "PPO: entropy bonus"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO/PMPO: trust region of one update (ratio 1 +- this)"})
    gae_lambda: float = field(default=0.95, metadata={"help": "PPO/PMPO: GAE lambda"})
    alpha: float = field(default=0.5, metadata={"help": "PMPO: weight of the positive-advantage side"})
    kl_coef: float = field(default=0.1, metadata={"help": "PMPO: weight of KL(pi || prior) (needs --prior)"})
    critic_warmup: int = field(default=0, metadata={"help": "PMPO: rollouts that train the critic alone first"})
    buffer_size: int = field(default=100_000, metadata={"help": "SAC: replay buffer size"})
    learning_starts: int = field(default=1_000, metadata={"help": "SAC: steps before learning"})
    gradient_steps: int = field(default=-1, metadata={
        "help": "SAC: gradient steps per env step (-1: one per transition)"})
    prompt_data: str | None = field(default=None, metadata={
        "help": "real start contexts: a dataset directory (its train split is tokenized into OUT/tokens; a highway-env "
                "model's clips also carry their scene metadata: gaia_gym.rl.training.highway_prompts) or a "
                "tokenized split .npz; None: the model's prompt bank"})
    prompt_clips: int = field(default=2048, metadata={"help": "with --prompt-data: mid-drive context clips drawn"})
    standing_starts: bool = field(default=True, metadata={
        "help": "with --prompt-data: add every episode's first frame held still (highway-env: held at its first "
                "speed), which is how a real episode starts"})
    speed_max: float | None = field(default=None, metadata={
        "help": "highest speed action the agent can ask for (None: the world's default, `gaia_gym.rl.training."
                "default_speed_max`: CarRacing 0.6 (1 = 100 m/s; the data's 95th percentile is ~0.5), highway-env 1.0)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of imagined frames"})
    end_threshold: float = field(default=0.5, metadata={"help": "end-head probability that ends an imagined episode"})
    pessimism: float = field(default=0.0, metadata={
        "help": "imagined reward minus this many standard deviations of the reward head's prediction"})
    init: str | None = field(default=None, metadata={
        "help": "start the policy (actor, critic, log std) from this agent zip, e.g. the behaviour prior "
                "(agents/behaviour_prior.py); same network and observations"})
    prior: str | None = field(default=None, metadata={
        "help": "behaviour-prior agent zip. ppo/sac: add -prior_coef * |u - mu0(s)|^2 / (2 prior_std^2) to each "
                "imagined reward (with the entropy bonus: the reverse KL to the prior; gaia_gym.rl.prior); pmpo: the "
                "policy its KL term pulls towards (--kl-coef)"})
    prior_coef: float = field(default=1.0, metadata={"help": "weight of the prior term"})
    prior_std: float = field(default=0.3, metadata={"help": "std of the Gaussian prior around its action (agent units)"})
    ledger: str | None = field(default=None, metadata={
        "help": "a real-step ledger (gaia_gym.rl.ledger.RealBudget JSON): every real evaluation step is spent there"})
    ledger_limit: int = field(default=200_000, metadata={"help": "the ledger's budget of real steps"})
    eval_start: bool = field(default=True, metadata={
        "help": "score the starting policy on the validation tracks before a new run learns (the curve's first point)"})
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
            exit_with(f"train_imagination: --{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.minutes is not None and a.minutes <= 0:
        exit_with(f"train_imagination: --minutes must be > 0, got {a.minutes}")
    return a


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume) as the command line says; returns the run's state."""
    import torch

    from gaia_gym.bundle import load_bundle
    from gaia_gym.envs import GaiaDriveVecEnv
    from gaia_gym.errors import GaiaGymError
    from gaia_gym.rl.agent import ActionRange
    from gaia_gym.rl.training import (Budget, ProgressBar, RealEval, Run, action_range, default_speed_max,
                                      learn_resumable, make_model, training_prompts)
    from gaia_gym.rl.wrappers import ranged_vec_env

    args = parse_args(argv)
    try:
        run = Run(args)
    except GaiaGymError as e:
        exit_with(f"train_imagination: {e}")
    run.state["torch_threads"] = torch.get_num_threads()  # the wall-clock figures depend on it
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        bundle = load_bundle(args.model, device)
        args.obs = args.obs or f"{bundle.backend.latent_key}+features"
        if args.speed_max is None:
            args.speed_max = default_speed_max(bundle)
        bank = training_prompts(args, bundle, run.out)
        venv = GaiaDriveVecEnv(num_envs=args.envs, bundle=dataclasses.replace(bundle, prompts=bank), obs_mode=args.obs,
                               horizon=args.horizon, temperature=args.temperature, end_threshold=args.end_threshold,
                               pessimism=args.pessimism)
        ranged = ActionRange(**run.state["action_range"]) if "action_range" in run.state else action_range(args)
        venv = VecMonitor(ranged_vec_env(venv, ranged))
        prior = None
        if args.prior is not None:
            from gaia_gym.rl.prior import load_prior

            prior = load_prior(args.prior, bundle, device, to_range=ranged)
            if args.algo != "pmpo":  # outside the monitor: logged imagined returns stay the model's reward
                from gaia_gym.rl.wrappers import prior_reward_env

                venv = prior_reward_env(venv, prior, args.prior_coef, args.prior_std)
        model, resumed = make_model(args, run, venv, device, bundle, prior=prior if args.algo == "pmpo" else None)
        model.gaia_action_range = run.state["action_range"] = ranged.as_dict()
    except (GaiaGymError, ValueError, FileNotFoundError) as e:
        exit_with(f"train_imagination: {e}")
    remaining = args.timesteps - model.num_timesteps
    run.t0 = time.perf_counter()  # the budget counts training, not loading the model and the start contexts
    print(f"{'resuming' if resumed else 'training'} {args.algo} in {run.out}: {model.num_timesteps} / {args.timesteps} "
          f"steps, {run.prior / 60:.1f} min so far{'' if args.minutes is None else f' of {args.minutes}'}; "
          f"{len(bank)} start contexts, speed actions up to {ranged.high[1]:.2f}")
    if remaining <= 0 or run.over_budget():
        print("nothing to do: the run has reached --timesteps or --minutes (raise them to continue)")
        return run.state
    evaluator = RealEval(run, bundle, at_start=args.eval_start)

    def finish() -> None:
        if args.eval_every > 0 and model.num_timesteps - evaluator.last >= max(args.envs, args.eval_every // 10):
            evaluator.evaluate()  # the final policy, unless evaluated in its last tenth of an interval

    try:
        if not learn_resumable(model, run, remaining, [ProgressBar(args.timesteps, args.progress), Budget(run),
                                                       evaluator], args.algo, finish):
            print("interrupted: saved OUT/last.zip; rerun the same command to resume")
    finally:
        evaluator.close()
        venv.close()
    print(f"saved {run.out / 'last.zip'} at {model.num_timesteps} steps ({run.elapsed() / 60:.1f} min in all)"
          + (f"; best real return {run.state['best_real_return']:.1f}" if "best_real_return" in run.state else ""))
    return run.state


if __name__ == "__main__":
    run_script("train_imagination", main, sys.argv[1:])
