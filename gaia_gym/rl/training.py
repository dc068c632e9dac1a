"""A resumable training run of an SB3 agent in imagination, with its callbacks.

`Run` owns the output directory (OUT/last.zip, best.zip, state.json, tb/) and a wall clock that counts
over every resume; the callbacks stop at the wall-clock budget and checkpoint atomically (`Budget`,
`Checkpoint`), draw a progress bar (`ProgressBar`) and score the policy on the real simulator's
validation tracks (`RealEval`: `gaia_gym.evaluation.real.validation_episodes`, CarRacing's validation
tracks or highway-env's validation seeds of every scenario, never the test ones);
`learn_resumable` runs SB3's `learn` so that SIGTERM or Ctrl-C stop it like a finished run (the agent is
saved, and rerunning the same command resumes). `training_prompts`, `make_model`, `init_from` and
`action_range` build what agents/train_imagination.py trains from its settings.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import numpy as np
from gymnasium import spaces as gym_spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import safe_mean
from tqdm import tqdm

from gaia_gym.errors import ConfigError, MissingFileError, ResumeError
from gaia_gym.evaluation.real import episode_steps_max, real_env_for, run_episode, validation_episodes
from gaia_gym.fileio import atomic_write_bytes, atomic_write_json, clean_temp_files
from gaia_gym.rl.agent import ActionRange, agent_actor, algo_class, load_agent
from gaia_gym.rl.extractor import policy_kwargs
from gaia_gym.rl.ledger import BudgetExceeded, RealBudget


def save_model_atomic(model, path: Path) -> None:
    """Write an SB3 model to `path` atomically (a crash leaves the previous file)."""
    atomic_write_bytes(Path(path), lambda f: model.save(f))


# ---------------------------------------------------------------------------------------------
# the run: its directory, state and clock
# ---------------------------------------------------------------------------------------------
class Run:
    """OUT/ and state.json; `elapsed()` counts wall seconds over all resumes. `args`: the script's settings
    (a dataclass with at least ``out``, ``algo``, ``minutes`` and ``checkpoint_minutes``), saved in state.json."""

    def __init__(self, args) -> None:
        self.args, self.out = args, Path(args.out)
        if self.out.is_dir():
            clean_temp_files(self.out)  # leftovers of a write that was interrupted
        p = self.out / "state.json"
        self.state = json.loads(p.read_text()) if p.exists() else {}
        if self.state.get("algo", args.algo) != args.algo:
            raise ResumeError(f"{self.out} holds a {self.state['algo']} run; use --algo {self.state['algo']} or "
                              "another --out")
        self.state.setdefault("evals", [])
        self.t0, self.prior = time.perf_counter(), float(self.state.get("elapsed_s", 0.0))

    def elapsed(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.args.minutes is not None and self.elapsed() >= self.args.minutes * 60

    def save(self, model, name: str = "last.zip") -> None:
        """Atomically (temp file + os.replace) write the agent as OUT/`name` (with last.zip: SAC's replay
        buffer), then state.json (elapsed time; with last.zip: its timesteps). `name` "state": only state.json."""
        self.out.mkdir(parents=True, exist_ok=True)
        if name != "state":
            save_model_atomic(model, self.out / name)
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


class StopAfter(BaseCallback):
    """Stops `learn` after `minutes` of wall-clock time (None: never), counted from `t0` (a `time.time()`;
    None: the start of training)."""

    def __init__(self, minutes: float | None, t0: float | None = None) -> None:
        super().__init__()
        self.seconds = None if minutes is None else float(minutes) * 60
        self.t0 = t0

    def _on_training_start(self) -> None:
        if self.t0 is None:
            self.t0 = time.time()

    def _on_step(self) -> bool:
        return self.seconds is None or time.time() - self.t0 < self.seconds


class RealEval(BaseCallback):
    """Every `eval_every` timesteps: drive the real simulator (CarRacing-v3, or highway-env for a highway
    world model) on fixed held-out validation episodes, log the real
    return beside the imagined one, keep OUT/best.zip (like SB3's EvalCallback, in another env).
    ``at_start``: also score the policy a new run starts from (the learning curve's first point)."""

    def __init__(self, run: Run, bundle, at_start: bool = False) -> None:
        super().__init__()
        self.run, self.bundle, self.env, self.at_start = run, bundle, None, at_start
        a = run.args
        self.every, self.seeds = a.eval_every, validation_episodes(bundle, a.eval_episodes)
        self.last = run.state.get("last_eval_timesteps", 0)
        # every real step an evaluation drives is spent in the run's ledger, if it keeps one (rounds do)
        self.budget = RealBudget.open(a.ledger, a.ledger_limit) if getattr(a, "ledger", None) else None

    def _on_training_start(self) -> None:
        if self.at_start and self.every > 0 and not self.run.state["evals"]:
            self.evaluate()

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps - self.last >= self.every:
            self.evaluate()
        return True

    def evaluate(self) -> dict:
        if self.env is None:
            self.env = real_env_for(self.bundle, self.run.args.obs)
        t = time.perf_counter()
        if self.budget is not None:
            need = len(self.seeds) * (self.run.args.eval_max_steps or episode_steps_max(self.bundle))
            if self.budget.cap(need) < need:
                raise BudgetExceeded(f"an evaluation on {len(self.seeds)} real tracks may take {need} steps; the "
                                     f"ledger {self.budget.path} has {self.budget.left} left")
        act = agent_actor(self.model)
        eps = [run_episode(self.env, act, s, self.run.args.eval_max_steps, scenario=sc) for s, sc in self.seeds]
        if self.budget is not None:
            self.budget.spend(int(sum(e["steps"] for e in eps)), "checkpoint_eval", run=str(self.run.out),
                              timesteps=int(self.num_timesteps))
        real = np.array([e["return"] for e in eps])
        H = self.run.args.horizon
        rec = {"timesteps": int(self.num_timesteps), "elapsed_s": round(self.run.elapsed(), 1),
               "imagined_return_mean": _num(safe_mean([e["r"] for e in self.model.ep_info_buffer])),
               "imagined_length_mean": _num(safe_mean([e["l"] for e in self.model.ep_info_buffer])),
               "real_return_mean": float(real.mean()), "real_return_std": float(real.std()),
               "real_return_per_seed": {_episode_key(e): round(e["return"], 2) for e in eps},
               f"real_return_first_{H}_steps": float(np.mean([sum(e["rewards"][:H]) for e in eps])),
               "real_model_return_mean": float(np.mean([e["model_return"] for e in eps])),
               "real_steps_mean": float(np.mean([e["steps"] for e in eps])), "eval_seconds": 0.0}
        if "crashed" in eps[0]:  # highway-env: crashes are what the reward alone hides
            rec["real_crash_rate"] = float(np.mean([e["crashed"] for e in eps]))
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


def _episode_key(e: dict) -> str:
    return str(e["track"]) if "track" in e else f"{e['scenario']}/{e['seed']}"


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _fmt(x: float | None) -> str:
    return "    n/a" if x is None else f"{x:7.1f}"


# ---------------------------------------------------------------------------------------------
def training_prompts(args, bundle, out: Path):
    """The prompt bank imagined episodes start from: the model's own, or (--prompt-data) `dataset_prompts`
    (`highway_prompts` for a highway-env model: its clips carry their scene metadata)."""
    if args.prompt_data is None:
        return bundle.prompts
    from gaia_gym.evaluation.real import is_highway

    if is_highway(bundle):
        return highway_prompts(bundle, args.prompt_data, out, clips=args.prompt_clips, seed=args.seed,
                               starts=args.standing_starts, progress=getattr(args, "progress", True))
    return dataset_prompts(bundle, args.prompt_data, out, clips=args.prompt_clips, seed=args.seed,
                           standing_starts=args.standing_starts)


def highway_prompts(bundle, data: str | Path, out: Path, clips: int = 2048, seed: int = 0, starts: bool = True,
                    progress: bool = True):
    """Start contexts from a highway-env dataset's TRAINING split, each with its scene metadata (road family
    and lane count, as `RealHighwayEnv` conditions a real episode): `clips` mid-drive clips spread over
    the episodes and, with `starts`, every episode's first frame held at its first speed
    (`gaia_gym.envs.real_highway.highway_start`: how a real episode starts). Cached in
    OUT/prompts_highway.npz (rebuilt when the dataset, the model or the settings change). No new real step."""
    import torch
    from tqdm import tqdm

    from gaia_gym.bundle import PromptBank, weights_sha256
    from gaia_gym.data.format import load_episode
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.envs.real_highway import highway_start
    from gaia_gym.imagination import Imagination

    idx = EpisodeIndex(data, split="train")
    key = f"{Path(data).resolve()}:{len(idx.paths)}:{sum(idx.lengths)}:{weights_sha256(bundle.path)}:{clips}:{seed}:{starts}"
    cache = Path(out) / "prompts_highway.npz"
    if cache.exists() and (Path(out) / "prompts_highway.key").exists() and \
            (Path(out) / "prompts_highway.key").read_text() == key:
        return PromptBank.load(cache)
    engine = Imagination(bundle, n=1, temperature=0.0, end_threshold=1.0)
    C, codec = bundle.prompts.context, bundle.codec
    rng = np.random.default_rng(seed)
    per_episode = np.bincount(rng.integers(0, len(idx.paths), clips), minlength=len(idx.paths))
    toks, acts, meta = [], [], []
    for path, k in tqdm(list(zip(idx.paths, per_episode)), desc="start contexts", unit="ep", leave=False,
                       disable=not progress):
        e = load_episode(path, fields=["frames", "steering", "target_speed_mps", "speed_mps"])
        T = len(e["frames"])
        if not starts and (k == 0 or T < C):
            continue
        hold, scene = highway_start(bundle, e["meta"]["scenario"], int(e["meta"]["lanes"]), float(e["speed_mps"][0]),
                                    engine.device)
        ids = scene.metadata[0].cpu() if scene is not None else None
        tok = engine.encode(torch.from_numpy(np.ascontiguousarray(e["frames"]))).cpu()
        act = torch.from_numpy(codec.encode(e["steering"], e["target_speed_mps"]))
        if starts:
            toks.append(tok[:1].expand(C, *tok.shape[1:]))
            acts.append(hold.cpu().float().expand(C, 2))
            meta.append(ids)
        for t0 in (rng.integers(0, T - C + 1, int(k)) if T >= C else []):
            toks.append(tok[t0:t0 + C])
            acts.append(act[t0:t0 + C])
            meta.append(ids)
    if not toks:
        raise ConfigError(f"{data}: no training episode gives a start context of {C} frames")
    bank = PromptBank(torch.stack(toks).long(), torch.stack(acts).float(),
                      metadata=torch.stack(meta) if meta[0] is not None else None)
    Path(out).mkdir(parents=True, exist_ok=True)
    bank.save(cache)
    atomic_write_bytes(Path(out) / "prompts_highway.key", lambda f: f.write(key.encode()))
    return bank


def dataset_prompts(bundle, data: str | Path, out: Path, clips: int = 2048, seed: int = 0,
                    standing_starts: bool = True):
    """Start contexts from real drives: `clips` mid-drive clips of a dataset's TRAINING split (`data`: its
    directory, tokenized once into OUT/tokens, or a tokenized split .npz) plus, with `standing_starts`,
    each training episode's first frame held still (how a real episode starts). Real data only from the
    dataset the world model was trained on: no new real steps."""
    from gaia_gym.bundle import PromptBank

    src = Path(data)
    if src.is_dir():
        from gaia_gym.bundle import Sources, resolve_tokenizer
        from gaia_gym.train.world_model import tokenize_split

        tok_dir = resolve_tokenizer(Path(bundle.path), Sources.read(bundle.path))
        src = tokenize_split(src, tok_dir, "train", Path(out) / "tokens" / "train.npz", bundle.codec)
    elif not src.is_file():
        raise MissingFileError(f"{src}: no such dataset directory or tokenized split")
    C = bundle.prompts.context
    bank = PromptBank.from_token_file(src, context=C, n=clips, seed=seed, continuation=0)
    if standing_starts:
        bank = bank.concat(PromptBank.standing_starts(src, C, bundle.codec.encode(0.0, 0.0)))
    return bank


def make_model(args, run: Run, venv, device: str, bundle, prior=None):
    """A new agent, or the one in OUT/last.zip (resume). ``prior``: PMPO's KL reference policy (already in
    this run's action range; not saved with the agent, so it is given again on every resume)."""
    last, tb = run.out / "last.zip", str(run.out / "tb")
    if last.exists():
        model = load_agent(last, world_model=bundle, env=venv, device=device, tensorboard_log=tb)
        if (run.out / "replay.pkl").exists() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(run.out / "replay.pkl")
        if hasattr(model, "set_prior"):
            model.set_prior(prior)
        return model, True
    arch = [int(x) for x in args.net_arch.split(",") if x.strip()]
    if isinstance(venv.observation_space, gym_spaces.Dict):
        policy, kw = "MultiInputPolicy", policy_kwargs(bundle, freeze=args.freeze, net_arch=arch, spatial=args.spatial,
                                                        per_token=getattr(args, "per_token", False))
    elif args.obs == "features":  # one key is a Box: the hidden state alone needs no extractor
        policy, kw = "MlpPolicy", {"net_arch": arch}
    else:
        raise ConfigError(f"--obs {args.obs}: a latent alone cannot be embedded (the extractor reads a Dict): use "
                          f"'{args.obs}+features' or 'features'")
    common = dict(learning_rate=args.lr, gamma=args.gamma, batch_size=args.batch_size, tensorboard_log=tb,
                  seed=args.seed, device=device, verbose=0, policy_kwargs=kw)
    if args.algo in ("ppo", "pmpo"):
        algo = dict(n_steps=args.n_steps, n_epochs=args.n_epochs, ent_coef=args.ent_coef,
                    clip_range=args.clip_range, gae_lambda=args.gae_lambda)
        if args.algo == "pmpo":
            algo.update(prior=prior, alpha=args.alpha, kl_coef=args.kl_coef, critic_warmup=args.critic_warmup)
    else:
        algo = dict(buffer_size=args.buffer_size, learning_starts=args.learning_starts,
                    gradient_steps=args.gradient_steps)
    model = algo_class(args.algo)(policy, venv, **common, **algo)
    if args.init is not None:
        init_from(model, args.init, bundle, action_range(args))
    model.gaia_action_range = action_range(args).as_dict()  # saved with the agent; the evaluator applies it
    return model, False


def init_from(model, path: str, bundle, to_range: ActionRange | None = None) -> None:
    """Copy the policy weights of the agent zip at `path` into `model` (a new agent of the same network);
    with `to_range`, re-express them in that action range (`ActionRange.rescale_policy`: the same physical
    actions, e.g. a prior trained with a lower speed cap)."""
    src_agent = load_agent(path, world_model=bundle, device=model.device)
    src, dst = src_agent.policy.state_dict(), model.policy.state_dict()
    bad = sorted(k for k in set(src) | set(dst) if k not in src or k not in dst or src[k].shape != dst[k].shape)
    if bad:
        raise ConfigError(f"{path}: its policy does not fit this run's network ({', '.join(bad[:3])}...): "
                         "use the same --net-arch, --obs and world model")
    model.policy.load_state_dict(src)
    if to_range is not None:
        ActionRange.of_agent(src_agent).rescale_policy(model.policy, to_range)


def action_range(args) -> ActionRange:
    return ActionRange((-1.0, -1.0), (1.0, args.speed_max))


def default_speed_max(bundle) -> float:
    """The agent's highest speed action by default: 0.6 on CarRacing (60 m/s; faster than the data's
    driving is where the model is least right), 1.0 (40 m/s, highway-env's cap) on highway-env."""
    from gaia_gym.evaluation.real import is_highway

    return 1.0 if is_highway(bundle) else 0.6


class Checkpoint(StopAfter):
    """Saves the model to `path` atomically every `minutes`, and stops training after `budget_s` wall
    seconds from `t0` (None: no budget; `StopAfter`)."""

    def __init__(self, path: Path, minutes: float, budget_s: float | None = None, t0: float | None = None) -> None:
        super().__init__(None if budget_s is None else budget_s / 60, time.time() if t0 is None else t0)
        self.path, self.every = Path(path), minutes * 60
        self.last = time.time()

    def _on_step(self) -> bool:
        if time.time() - self.last > self.every:
            save_model_atomic(self.model, self.path)
            self.last = time.time()
        return super()._on_step()


def learn_resumable(model, run: Run, remaining: int, callbacks: list[BaseCallback], tb_log_name: str,
                    finish=None) -> bool:
    """`model.learn(remaining)` with `callbacks`; SIGTERM (`kill`, also of a background job where SIGINT is
    ignored) and SIGINT stop it like Ctrl-C. `finish()` runs after a complete learn (e.g. a last
    evaluation); OUT/last.zip is saved in every case. Returns False when it was interrupted."""

    def _stop(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    done = True
    try:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False, tb_log_name=tb_log_name)
        if finish is not None:
            finish()
    except KeyboardInterrupt:
        done = False
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        run.save(model)
    return done


__all__ = ["Budget", "Checkpoint", "ProgressBar", "RealEval", "Run", "StopAfter", "dataset_prompts", "highway_prompts", "action_range", "default_speed_max", "init_from", "learn_resumable",
           "make_model", "save_model_atomic", "training_prompts"]
