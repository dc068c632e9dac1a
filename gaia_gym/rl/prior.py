"""The behaviour prior: the scripted expert's actions, cloned onto what the agent itself sees.

CarRacing's collector records, at every step (noisy, excursion and random segments included), what the
clean privileged expert would have done there (``expert_steering``, ``expert_speed_mps``;
`gaia_gym.sims.carracing_collect`). Those labels on the *perturbed* states are what a cloned policy
needs to recover from its own mistakes (noise injection into the demonstrator, as in DART), and they
cost no real transition beyond the dataset's own.

- `real_observations` replays logged episodes through the imagination engine with the real frames
  observed, exactly as `RealCarRacingEnv` does at test time: the same tokens, the same world-model
  features, the same standing start;
- `expert_targets` turns the expert's physical actions into the agent's action units (through the
  agent's `ActionRange`, inverted);
- `fit_prior` regresses an SB3 actor-critic's action mean onto them (and, optionally, its value onto
  the data's discounted reward-to-go), holding out the dataset's validation episodes;
- `split_arrays` builds (and caches) one split's replayed observations, targets and returns;
- the prior *term* for training in imagination (`gaia_gym.rl.wrappers.prior_reward_env`) adds
  ``-coef * |u - mu0(s)|^2 / (2 std^2)`` to each reward, mu0 the frozen prior's action. With SB3's
  entropy bonus this is the reverse KL to a Gaussian prior of std ``std`` (up to a constant):
  KL(pi || pi0) = -H(pi) - E_pi[log pi0(a|s)].
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaia_gym.errors import ConfigError, DatasetError
from gaia_gym.rl.agent import ActionRange

EXPERT_FIELDS = ("expert_steering", "expert_speed_mps")


def inverse_range(action_range: ActionRange, a: np.ndarray) -> np.ndarray:
    """Model actions `a` (..., 2) -> the agent's units u in [-1, 1] (the inverse of `action_range`, clipped)."""
    lo, hi = action_range.low, action_range.high
    return np.clip(2.0 * (np.asarray(a, np.float32) - lo) / (hi - lo) - 1.0, -1.0, 1.0).astype(np.float32)


def expert_targets(episode: dict, codec, action_range: ActionRange) -> np.ndarray:
    """(T, 2) agent-unit targets of one logged episode: its expert labels, encoded and range-inverted."""
    missing = [k for k in EXPERT_FIELDS if k not in episode]
    if missing:
        src = (episode.get("meta") or {}).get("source", "carracing")
        raise DatasetError(f"episode has no {', '.join(missing)}: recollect it with `gaia-gym collect {src}` "
                           "(datasets from before the expert labels cannot train a prior)")
    return inverse_range(action_range, codec.encode(episode["expert_steering"], episode["expert_speed_mps"]))


def discounted_returns(reward: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go sum_k gamma^k r_{t+k} of one episode."""
    out, acc = np.zeros(len(reward), np.float32), 0.0
    for t in range(len(reward) - 1, -1, -1):
        acc = float(reward[t]) + gamma * acc
        out[t] = acc
    return out


def episode_start(bundle, episode: dict):
    """How the real env starts this logged episode in the world model: (the context's action (2,), scene
    rows or None). CarRacing: a standing start ("stand still" under the first frame, as `RealCarRacingEnv`);
    highway-env (``meta["source"] == "highway"``): `gaia_gym.envs.real_highway.highway_start` (straight on
    at the recorded first speed, the scenario's road family and lane count), as `RealHighwayEnv`."""
    meta = episode.get("meta") or {}
    if meta.get("source") == "highway":
        from gaia_gym.envs.real_highway import highway_start

        if "speed_mps" not in episode:
            raise DatasetError("a highway episode's replay needs its speed_mps (the first speed starts it)")
        return highway_start(bundle, meta["scenario"], int(meta["lanes"]), float(episode["speed_mps"][0]))
    return torch.as_tensor(bundle.codec.encode(0.0, 0.0), device=bundle.device), None


@torch.no_grad()
def real_observations(bundle, episodes: list[dict], rows: int = 32, progress: bool = True) -> dict[str, np.ndarray]:
    """The agent's observations along logged real episodes, as the real env (`RealCarRacingEnv`,
    `RealHighwayEnv`) would give them.

    `episodes`: dicts with ``frames`` (T, S, S, 3) uint8, ``steering`` and ``target_speed_mps`` (T,) (the
    executed actions), and ``meta`` (and ``speed_mps``) for highway episodes. Each is replayed from the
    real env's start (`episode_start`: the first frame held for the prompt length under the start's
    action, with the scene's conditions), every next frame observed. Returns ``tokens`` (N, g, g),
    ``features`` (N, d) and ``model_reward`` (N,): the reward head's prediction for each step's
    transition (NaN on an episode's last step, whose next frame is not in ``frames``), N = the
    episodes' summed length, episode after episode."""
    from tqdm import tqdm

    from gaia_gym.imagination import Imagination, SceneRows

    engine = Imagination(bundle, n=1, temperature=0.0, end_threshold=1.0)
    codec, C = bundle.codec, bundle.prompts.context
    toks, feats, rews = [], [], []
    bar = tqdm(total=sum(len(e["frames"]) for e in episodes), unit="step", desc="replay", disable=not progress)
    for i in range(0, len(episodes), rows):
        group = episodes[i : i + rows]
        lens = [len(e["frames"]) for e in group]
        T = max(lens)
        enc = [engine.encode(torch.from_numpy(np.ascontiguousarray(e["frames"]))) for e in group]
        tok = torch.stack([torch.cat([x, x[-1:].expand(T - len(x), *x.shape[1:])]) for x in enc])  # (k, T, g, g)
        act = np.stack([np.concatenate([a, np.repeat(a[-1:], T - len(a), 0)]) for a in
                        (codec.encode(e["steering"], e["target_speed_mps"]) for e in group)])
        act = torch.as_tensor(act, device=engine.device)
        k = len(group)
        starts = [episode_start(bundle, e) for e in group]
        hold = torch.stack([a.to(engine.device).float() for a, _ in starts])[:, None].expand(k, C, 2)
        scene = None
        if bundle.conditions is not None and starts[0][1] is not None:
            scene = SceneRows.empty(bundle.conditions, k, engine.device)
            for j, (_, sc) in enumerate(starts):
                scene.assign(torch.tensor([j], device=engine.device), sc)
        _, f = engine.reset(context=(tok[:, :1].expand(k, C, *tok.shape[2:]), hold), scene=scene)
        fs, rs = [f.float().cpu()], []
        for t in range(T - 1):
            out = engine.step(act[:, t], observed=tok[:, t + 1])
            fs.append(out.features.float().cpu())
            rs.append(out.reward.float().cpu())
            bar.update(sum(1 for n in lens if n > t + 1))
        fs = torch.stack(fs, 1)  # (k, T, d)
        rs = torch.cat([torch.stack(rs, 1) if rs else torch.zeros(k, 0), torch.full((k, 1), float("nan"))], 1)
        for j, n in enumerate(lens):
            toks.append(tok[j, :n].cpu().numpy().astype(np.uint16))
            feats.append(fs[j, :n].numpy())
            rews.append(rs[j, :n].numpy().copy())
            rews[-1][n - 1] = np.nan
        bar.update(len(group))
    bar.close()
    return {"tokens": np.concatenate(toks), "features": np.concatenate(feats).astype(np.float32),
            "model_reward": np.concatenate(rews).astype(np.float32)}


@dataclass
class PriorFit:
    """What `fit_prior` measured: per epoch, the train and held-out action MSE (agent units) and value MSE."""

    train_action_mse: list[float]
    val_action_mse: list[float]
    val_value_mse: list[float]
    seconds: float
    best_epoch: int | None = None  # with keep_best: the epoch whose weights were kept


def fit_prior(agent, train: dict[str, np.ndarray], val: dict[str, np.ndarray], epochs: int = 10,
              batch_size: int = 256, lr: float = 1e-3, value_coef: float = 0.0, log_std: float = -1.2,
              seed: int = 0, progress: bool = True, weight_decay: float = 0.0, keep_best: bool = False) -> PriorFit:
    """Regress `agent`'s (an SB3 actor-critic) action mean onto ``train["target"]`` from observations
    ``train["tokens"]``/``train["features"]`` (the keys its policy reads); with ``value_coef`` > 0 also
    its value onto ``train["returns"]``. The policy's log std is set to `log_std` (the exploration PPO
    starts from). ``val`` (the dataset's validation episodes) is scored after every epoch, never fit;
    with ``keep_best`` the weights of the epoch with the lowest validation action error are kept (early
    stopping; `PriorFit.best_epoch`). ``weight_decay``: AdamW's decoupled weight decay."""
    from tqdm import tqdm

    pol = agent.policy
    keys = list(pol.observation_space.spaces)
    for name, d in (("train", train), ("val", val)):
        missing = [k for k in (*keys, "target") if k not in d]
        if missing:
            raise ConfigError(f"fit_prior: {name} set lacks {missing}")
    dev = pol.device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    with torch.no_grad():
        pol.log_std.fill_(log_std)
    pol.log_std.requires_grad_(False)

    def obs_of(d, idx):
        return {k: torch.as_tensor(d[k][idx].astype(np.float32), device=dev) for k in keys}

    def heads(obs):
        feats = pol.extract_features(obs)
        lat_pi, lat_vf = pol.mlp_extractor(feats)
        return pol.action_net(lat_pi), pol.value_net(lat_vf).squeeze(-1)

    def score(d) -> tuple[float, float]:
        pol.set_training_mode(False)
        se, ve, n = 0.0, 0.0, len(d["target"])
        with torch.no_grad():
            for i in range(0, n, 4096):
                idx = np.arange(i, min(i + 4096, n))
                mu, v = heads(obs_of(d, idx))
                se += float(((mu.clamp(-1, 1) - torch.as_tensor(d["target"][idx], device=dev)) ** 2).sum())
                if "returns" in d:
                    ve += float(((v - torch.as_tensor(d["returns"][idx], device=dev)) ** 2).sum())
        return se / (2 * n), ve / n

    t0, fit = time.perf_counter(), PriorFit([], [], [], 0.0)
    n = len(train["target"])
    ret_var = float(np.var(train["returns"])) + 1e-6 if "returns" in train else 1.0
    for ep in range(epochs):
        pol.set_training_mode(True)
        perm = torch.randperm(n, generator=g).numpy()
        tot, bar = 0.0, tqdm(range(0, n, batch_size), desc=f"prior epoch {ep + 1}/{epochs}", disable=not progress,
                             leave=False)
        for i in bar:
            idx = perm[i : i + batch_size]
            mu, v = heads(obs_of(train, idx))
            loss = ((mu - torch.as_tensor(train["target"][idx], device=dev)) ** 2).mean()
            tot += float(loss.detach()) * len(idx)
            if value_coef > 0 and "returns" in train:  # scaled by the returns' variance: ~1 at the start
                err = (v - torch.as_tensor(train["returns"][idx], device=dev)) ** 2
                loss = loss + value_coef * err.mean() / ret_var
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        va, vv = score(val)
        if keep_best and (not fit.val_action_mse or va < min(fit.val_action_mse)):
            best = {k: v.detach().clone() for k, v in pol.state_dict().items()}
            fit.best_epoch = ep + 1
        fit.train_action_mse.append(round(tot / n, 5))
        fit.val_action_mse.append(round(va, 5))
        fit.val_value_mse.append(round(vv, 3))
        if progress:
            tqdm.write(f"prior epoch {ep + 1}: train action mse {tot / n:.4f}, val {va:.4f}, val value mse {vv:.2f}")
    if keep_best and epochs:
        pol.load_state_dict(best)
    pol.set_training_mode(False)
    fit.seconds = round(time.perf_counter() - t0, 1)
    return fit


def prior_mean(policy, obs: dict) -> np.ndarray:
    """The frozen prior's action mean mu0(s) (n, 2), clipped to [-1, 1]."""
    with torch.no_grad():
        t, _ = policy.obs_to_tensor(obs)
        mu = policy.get_distribution(t).distribution.mean
    return np.clip(mu.cpu().numpy(), -1.0, 1.0)


def split_arrays(data: Path, split: str, bundle, action_range, gamma: float, out: Path, rows: int,
                 max_episodes: int | None, progress: bool) -> dict[str, np.ndarray]:
    """Observations, targets and returns of one split, cached in `out` (atomic; reused when it was made
    from the same episodes, world-model weights, action range and discount)."""
    from gaia_gym.bundle import weights_sha256
    from gaia_gym.data.format import load_episode
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.fileio import atomic_write_bytes

    idx = EpisodeIndex(data, split=split)
    paths = idx.paths[:max_episodes] if max_episodes else idx.paths
    key = (f"{len(paths)}:{sum(idx.lengths[:len(paths)])}:{weights_sha256(bundle.path)}:"
           f"{action_range.as_dict()}:{gamma}")
    if out.exists():
        with np.load(out) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in z.files if k != "key"}
    parts: dict[str, list] = {"tokens": [], "features": [], "target": [], "returns": []}
    fields = ["frames", "steering", "target_speed_mps", "speed_mps", "reward", "expert_steering", "expert_speed_mps"]
    for i in range(0, len(paths), rows):
        eps = [load_episode(p, fields=fields) for p in paths[i : i + rows]]
        obs = real_observations(bundle, eps, rows=rows, progress=progress)
        parts["tokens"].append(obs["tokens"])
        parts["features"].append(obs["features"])
        parts["target"] += [expert_targets(e, bundle.codec, action_range) for e in eps]
        parts["returns"] += [discounted_returns(e["reward"], gamma) for e in eps]
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays, key=np.array(key))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: f.write(buf.getvalue()))
    return arrays


def load_prior(path: str | Path, world_model=None, device: str = "cpu", to_range: ActionRange | None = None):
    """The SB3 policy of a prior agent zip (agents/behaviour_prior.py) on `world_model` (see `load_agent`), frozen,
    in eval mode. ``to_range``: re-expressed in that action range (`ActionRange.rescale_policy`)."""
    from gaia_gym.rl.agent import load_agent

    agent = load_agent(path, world_model=world_model, device=device)
    pol = agent.policy
    if to_range is not None:
        ActionRange.of_agent(agent).rescale_policy(pol, to_range)
    pol.set_training_mode(False)
    for p in pol.parameters():
        p.requires_grad_(False)
    return pol


def prior_penalty(u: np.ndarray, mu0: np.ndarray, coef: float, std: float) -> np.ndarray:
    """-coef * |clip(u) - mu0|^2 / (2 std^2) per row: the prior term added to the imagined reward."""
    d = np.clip(np.asarray(u, np.float32), -1.0, 1.0) - mu0
    return (-coef * (d * d).sum(-1) / (2.0 * std * std)).astype(np.float32)


__all__ = ["EXPERT_FIELDS", "PriorFit", "discounted_returns", "episode_start", "expert_targets", "fit_prior", "inverse_range",
           "load_prior", "prior_mean", "prior_penalty", "real_observations", "split_arrays"]
