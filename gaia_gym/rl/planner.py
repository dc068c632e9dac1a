"""Look-ahead planning in imagination: model-predictive control with CEM or MPPI on the batched engine.

From one situation (an `EngineState` row: the world model's memory of what was seen), the planner
branches K candidate action sequences of horizon H, each imagined S times (sampled futures, so a
sequence is scored by its expected outcome, not by one lucky dream), all K*S rows stepped together in
ONE engine. A sequence's score is its discounted imagined return, each step weighted by the probability
that the episode is still running (the end head), averaged over its S futures. CEM refits a Gaussian
over sequences to the top `elites`; MPPI to all, weighted by exp(score / temperature). After
`iterations` refinements the first action of the mean sequence is executed (or its first `execute`
actions, one per step), and the next decision starts from that mean shifted by the actions driven
(receding horizon, warm start).

    planner = Planner(bundle, PlannerConfig(candidates=32, horizon=8, iterations=2), seed=0)
    action = planner.plan(engine.state(), row=0)      # (2,) in [-1, 1]; `engine` is left untouched

The planner never changes the state it is given (it restores copies into its own engine), and with a
seed its decisions are reproducible. `reward_fn(tokens, actions, features) -> (n,)` replaces the reward
head (e.g. a known reward in tests). `proposal(state) -> (H, 2)` (e.g. a trained policy's actions)
seeds the mean at each decision: the policy proposes, the planner refines (`PolicyProposal` makes one
from a trained agent). With a `margin` (a trust region around the proposal), the planner drives the
proposal's own action unless the best sequence it scored beats the proposal's score by more than the
margin, and then that sequence's first action: search overrides a good policy only where it sees a
clear gain. `value_fn(tokens, features) -> (n,)` adds a terminal value beyond the horizon
(TD-MPC2): a sequence's score gains gamma^H x P(still running) x V(the last imagined observation), so a
short horizon still sees what comes after it (`PolicyValue` makes one from a trained agent's critic).

`gaia_gym.evaluation.real.drive_tracks` drives the REAL CarRacing-v3 with it (`RealCarRacingEnv`: the world
model's memory is rebuilt from the real frames every step, the planner imagines from there).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from gaia_gym.imagination import EngineState, Imagination
from gaia_gym.rl.agent import agent_actor
from gaia_gym.errors import ConfigError

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PlannerConfig:
    method: str = "cem"  # "cem" or "mppi"
    candidates: int = 32  # K action sequences per iteration
    horizon: int = 8  # H imagined steps per sequence
    samples: int = 1  # S sampled futures per sequence (scores are averaged over them)
    iterations: int = 2  # refinements per decision
    execute: int = 1  # actions of each plan driven before planning again (1: replan every step)
    elites: int = 6  # CEM: sequences the Gaussian is refitted to
    mppi_temperature: float = 1.0  # MPPI: weights exp(score / temperature) (scores in reward units)
    init_std: float = 0.5  # std of the sampling Gaussian at each decision (action units)
    min_std: float = 0.05
    momentum: float = 0.1  # new mean = momentum * old + (1 - momentum) * refit
    gamma: float = 0.99  # discount within the horizon
    low: tuple[float, float] = (-1.0, -1.0)  # action range searched: [steering, speed]
    high: tuple[float, float] = (1.0, 0.6)  # speed capped where the data's commands end (see rl.agent.ActionRange)
    temperature: float = 1.0  # sampling temperature of imagined futures
    margin: float | None = None  # with a proposal: leave it only for a sequence scored this much higher (trust region)

    def __post_init__(self) -> None:
        if self.method not in ("cem", "mppi"):
            raise ConfigError(f"method must be 'cem' or 'mppi', got {self.method!r}")
        for k in ("candidates", "horizon", "samples", "iterations", "elites", "execute"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.execute > self.horizon:
            raise ConfigError(f"execute ({self.execute}) must not exceed horizon ({self.horizon})")
        if self.elites > self.candidates:
            raise ConfigError(f"elites ({self.elites}) must not exceed candidates ({self.candidates})")
        if not all(-1 <= lo < hi <= 1 for lo, hi in zip(self.low, self.high)):
            raise ConfigError(f"action range must satisfy -1 <= low < high <= 1, got {self.low} .. {self.high}")
        if self.mppi_temperature <= 0 or self.init_std <= 0:
            raise ConfigError("mppi_temperature and init_std must be > 0")
        if self.margin is not None and not self.margin >= 0:
            raise ConfigError(f"margin must be >= 0 (reward units) or None, got {self.margin}")

    @property
    def rows(self) -> int:
        """Engine rows per imagined step: K * S."""
        return self.candidates * self.samples

    def imagined_steps(self) -> int:
        """Imagined transitions per decision: K * S * H * iterations."""
        return self.rows * self.horizon * self.iterations


class Planner:
    """CEM / MPPI over one world model (see the module docstring)."""

    def __init__(self, bundle, config: PlannerConfig | None = None, seed: int | None = 0,
                 reward_fn: RewardFn | None = None,
                 proposal: Callable[[EngineState], torch.Tensor] | None = None,
                 value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.cfg = config or PlannerConfig()
        self.bundle = bundle
        self.engine = Imagination(bundle, n=self.cfg.rows, temperature=self.cfg.temperature, end_threshold=1.0,
                                  seed=seed)
        self.device = self.engine.device
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(0 if seed is None else int(seed) + 1)
        self.reward_fn, self.proposal, self.value_fn = reward_fn, proposal, value_fn
        self.low = torch.tensor(self.cfg.low, dtype=torch.float32, device=self.device)
        self.high = torch.tensor(self.cfg.high, dtype=torch.float32, device=self.device)
        self._mean: torch.Tensor | None = None  # (H, 2) the last plan (the next decision's warm start)
        self._used = 0  # actions of the last plan driven so far
        self.decisions, self.seconds, self.kept = 0, 0.0, 0
        self.last: dict = {}

    def reset(self) -> None:
        """Forget the last plan (call at a new episode)."""
        self._mean, self._used = None, 0

    @torch.no_grad()
    def score(self, state: EngineState, row: int, actions: torch.Tensor) -> torch.Tensor:
        """Expected discounted imagined return of each of the K sequences `actions` (K, H, 2) from
        `state`'s row `row`, averaged over S sampled futures, plus the discounted terminal value (with a
        `value_fn`). `state` is not changed."""
        c = self.cfg
        K, H = actions.shape[:2]
        self.engine.restore(state.branch(row, K * c.samples), copy=False)  # branch() made the copies
        seq = actions.repeat_interleave(c.samples, dim=0)  # rows k*S .. k*S+S-1 imagine sequence k
        total = torch.zeros(K * c.samples, device=self.device)
        alive = torch.ones_like(total)
        for t in range(H):
            out = self.engine.step(seq[:, t])
            r = out.reward if self.reward_fn is None else self.reward_fn(out.latents, seq[:, t], out.features).float()
            total += (c.gamma ** t) * alive * r
            alive = alive * (1.0 - out.end_prob)
        if self.value_fn is not None:
            v = torch.as_tensor(self.value_fn(out.latents, out.features), dtype=torch.float32, device=self.device)
            total += (c.gamma ** H) * alive * v.reshape(-1)
        return total.view(K, c.samples).mean(1)

    def _initial_mean(self, state: EngineState) -> torch.Tensor:
        H = self.cfg.horizon
        if self.proposal is not None:
            return torch.as_tensor(self.proposal(state), dtype=torch.float32, device=self.device).reshape(H, 2)
        if self._mean is None:
            mid = (self.low + self.high) / 2
            return mid.expand(H, 2).clone()
        k = min(self._used, self.cfg.horizon - 1)  # shifted by the actions driven since it was made
        return torch.cat([self._mean[k:], self._mean[-1:].expand(k, 2)])

    @torch.no_grad()
    def plan(self, state: EngineState, row: int = 0) -> torch.Tensor:
        """The action (2,) to take now from row `row` of `state` (float32 on the engine's device)."""
        c = self.cfg
        t0 = time.perf_counter()
        mean = self._initial_mean(state)
        std = torch.full_like(mean, c.init_std)
        best_score, best_first, proposed = -float("inf"), None, None
        for it in range(c.iterations):
            noise = torch.randn((c.candidates, c.horizon, 2), generator=self.gen, device=self.device)
            cand = (mean + std * noise).clamp(self.low, self.high)
            cand[0] = mean.clamp(self.low, self.high)  # the current mean is always among the candidates
            scores = self.score(state, row, cand)
            if it == 0:
                proposed = (float(scores[0]), cand[0, 0].clone())  # the starting mean (a proposal's own plan)
            i = int(scores.argmax())
            if float(scores[i]) > best_score:
                best_score, best_first = float(scores[i]), cand[i, 0].clone()
            if c.method == "cem":
                elite = cand[scores.topk(c.elites).indices]
                new_mean, new_std = elite.mean(0), elite.std(0, unbiased=False)
            else:
                w = torch.softmax((scores - scores.max()) / c.mppi_temperature, 0)
                new_mean = (w[:, None, None] * cand).sum(0)
                new_std = ((w[:, None, None] * (cand - new_mean) ** 2).sum(0)).sqrt()
            mean = c.momentum * mean + (1 - c.momentum) * new_mean
            std = new_std.clamp_min(c.min_std)
        self._mean, self._used = mean, 1
        action = mean[0].clamp(self.low, self.high)
        kept = None
        if c.margin is not None and self.proposal is not None:
            # trust region: the proposal's own action unless a scored sequence beats it by the margin
            kept = best_score - proposed[0] <= c.margin
            action = proposed[1] if kept else best_first
            self.kept += int(kept)
        self.decisions += 1
        self.seconds += time.perf_counter() - t0
        self.last = {"score_best": best_score, "first_action_best": best_first, "mean": mean,
                     "score_proposal": proposed[0], "kept_proposal": kept}
        return action

    def act(self, state: EngineState, row: int = 0) -> torch.Tensor:
        """The action to drive now: a new plan every `execute` calls (`plan`), else the last plan's next
        action (the state is only read when planning)."""
        if self._mean is None or self._used >= self.cfg.execute:
            return self.plan(state, row)
        a = self._mean[self._used].clamp(self.low, self.high)
        self._used += 1
        return a

    def decisions_per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds else float("nan")

    def describe(self) -> dict:
        return {**asdict(self.cfg), "imagined_steps_per_decision": self.cfg.imagined_steps()}


class PolicyProposal:
    """`proposal` for a `Planner` from a trained agent (policy proposes, planner refines): from row 0 of
    the state, the agent drives `horizon` greedy imagined steps on its own observations (the frame's
    tokens and the world model's features, as in GaiaDrive-v0), and those actions, mapped through the
    agent's action range (`gaia_gym.rl.agent.ActionRange`), are the search's starting mean."""

    def __init__(self, agent, bundle, horizon: int, seed: int | None = 0) -> None:
        self.act, self.horizon = agent_actor(agent), int(horizon)
        self.engine = Imagination(bundle, n=1, temperature=0.0, end_threshold=1.0, seed=seed)

    @torch.no_grad()
    def __call__(self, state: EngineState) -> torch.Tensor:
        self.engine.restore(state.branch(0, 1), copy=False)
        tokens, features = state.latents[:1], state.features[:1]
        actions = []
        for _ in range(self.horizon):
            obs = {"tokens": tokens.cpu().numpy(), "features": features.float().cpu().numpy()}
            a = torch.as_tensor(self.act(obs), dtype=torch.float32).reshape(1, 2)
            actions.append(a[0])
            out = self.engine.step(a.to(self.engine.device))
            tokens, features = out.latents, out.features
        return torch.stack(actions)


class PolicyValue:
    """`value_fn` for a `Planner` from a trained SB3 agent's critic: V(observation) of imagined frames'
    tokens and features (the observation GaiaDrive-v0 gave the agent), in the agent's reward units
    (its imagined returns; `scale` converts, e.g. for a critic trained on normalised rewards)."""

    def __init__(self, agent, scale: float = 1.0) -> None:
        if not hasattr(agent, "policy") or not hasattr(agent.policy, "predict_values"):
            raise ConfigError(f"a terminal value needs an actor-critic agent (PPO/A2C), got {type(agent).__name__}")
        self.agent, self.scale = agent, float(scale)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        obs = {"tokens": tokens.cpu().numpy(), "features": features.float().cpu().numpy()}
        t, _ = self.agent.policy.obs_to_tensor(obs)
        return self.agent.policy.predict_values(t).reshape(-1).float().cpu() * self.scale


def add_planner_args(parser) -> None:
    """The planner's settings (`PlannerConfig`) as command-line flags, plus --model and --seed (shared by
    the planning examples); `planner_config_from_args` turns the parsed flags back into a config."""
    d = PlannerConfig()
    p = parser
    p.add_argument("--method", choices=("cem", "mppi"), default=d.method, help="refinement (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=d.candidates, help="K sequences (default: %(default)s)")
    p.add_argument("--horizon", type=int, default=d.horizon, help="H imagined steps (default: %(default)s)")
    p.add_argument("--samples", type=int, default=d.samples, help="S futures per sequence (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=d.iterations, help="refinements (default: %(default)s)")
    p.add_argument("--execute", type=int, default=d.execute, help="actions driven per plan (default: %(default)s)")
    p.add_argument("--elites", type=int, default=d.elites, help="CEM elites (default: %(default)s)")
    p.add_argument("--speed-max", type=float, default=d.high[1], help="highest speed action (default: %(default)s)")
    p.add_argument("--margin", type=float, default=None, help="with a proposal: drive its action unless a sequence "
                   "scores this much more (reward units; default: always the refined plan)")
    p.add_argument("--init-std", type=float, default=d.init_std, help="sampling std around the mean (default: %(default)s)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="discount within the horizon (default: %(default)s)")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0, help="planner seed (default: %(default)s)")


def planner_config_from_args(args, **override) -> PlannerConfig:
    """The `PlannerConfig` of flags parsed with `add_planner_args` (elites capped at the candidates),
    with `override`'s fields on top; an invalid combination raises ValueError."""
    kw = dict(method=args.method, candidates=args.candidates, horizon=args.horizon, samples=args.samples,
              iterations=args.iterations, execute=args.execute, elites=min(args.elites, args.candidates),
              high=(1.0, args.speed_max), margin=args.margin, init_std=args.init_std, gamma=args.gamma)
    return PlannerConfig(**{**kw, **override})


__all__ = ["Planner", "PlannerConfig", "PolicyProposal", "PolicyValue", "RewardFn", "add_planner_args",
           "planner_config_from_args"]
