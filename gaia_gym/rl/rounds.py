"""Rounds of real driving: the current policy drives the real simulator, its drives join the data, and the
world model's reward and end heads learn from them before the agent trains in imagination again.

An agent trained in imagination finds the states the collector never visited (a faster line, a later
brake), and there the reward and end heads guess. A round closes that loop with a few real episodes:

    budget = RealBudget.open("runs/rounds/budget.json", limit=200_000)
    drive_round(agent, bundle, "runs/rounds/round_1/drives", round_tracks(1, 20), budget, round_index=1)
    tuned = finetune_heads(bundle, ["data/carracing", "runs/rounds/round_1/drives"], "runs/rounds/round_1/model")
    ... train the agent again in imagination on `tuned` (agents/train_imagination.py --model ...) ...

`drive_round` writes each episode as a dataset shard (`gaia_gym.data.format`: frames, the decoded
[steering, target speed] actions, the measured speed, the simulator's raw action, rewards, ends), spends
its real steps in the `RealBudget` before the shard is written (a crash may over-count, never
under-count), skips tracks already on disk (a rerun resumes) and refuses to start an episode the
budget could not pay for in full (`BudgetExceeded`, one line). Round tracks come from
`gaia_gym.seeds.round_tracks`: never a collected, validation or test track.

`finetune_heads` trains only the reward and end heads (`gaia_gym.rl.extractor.HEAD_PREFIXES`) on clips
drawn half from the original data and half from the round drives, over the frozen model's memory, and
writes a complete model directory. Everything an agent observes is unchanged (tokens, hidden features),
so an agent trained on the old model loads on the new one (`load_agent` checks the ``observation_sha``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gaia_gym.data import format as fmt
from gaia_gym.envs.real import EPISODE_STEPS_MAX
from gaia_gym.errors import ConfigError
from gaia_gym.rl.ledger import BudgetExceeded, RealBudget


def drive_round(agent, bundle, out: str | Path, tracks: Sequence[int], budget: RealBudget, round_index: int,
                deterministic: bool = True, progress: bool = True, max_steps: int | None = None) -> dict:
    """Drive `agent` (a loaded SB3 agent) on the real CarRacing-v3 on every track of `tracks` and write each
    episode into the dataset directory `out` (train split; meta: round, track, return). Each episode's
    steps are spent in `budget` (purpose "round"); an episode the budget cannot pay for in full is not
    started (`BudgetExceeded`). Tracks already in `out` are not driven again. Returns a summary."""
    from tqdm import tqdm

    from gaia_gym.envs.real import ZOOM_PENALTY, RealCarRacingEnv
    from gaia_gym.rl.agent import agent_actor, agent_obs_mode

    out = Path(out)
    tracks = [int(t) for t in tracks]
    need = EPISODE_STEPS_MAX if max_steps is None else min(int(max_steps), EPISODE_STEPS_MAX)
    env = RealCarRacingEnv(bundle=bundle, obs_mode=agent_obs_mode(agent, bundle))
    info = {"source": "carracing", "sim": "CarRacing-v3", "fps": 1.0 / bundle.step_seconds,
            "frame_size": int(bundle.tokenizer.cfg.frame_size), "frame_convention": "carracing",
            "config": {"recorder": "gaia_gym.rl.rounds", "frame_skip": env.drive.frame_skip}}
    manifest = fmt.open_for_writing(out, info)
    have = {int(e["seed"]) for e in manifest["episodes"]}
    act = agent_actor(agent, deterministic=deterministic)
    driven, t0 = [], time.perf_counter()
    try:
        for track in tqdm(tracks, desc=f"round {round_index} (real tracks)", unit="track", disable=not progress):
            if track in have:
                continue
            if budget.cap(need) < need:
                raise BudgetExceeded(f"round {round_index}: the real-step budget has {budget.left} of {budget.limit} "
                                     f"steps left, an episode may take {need}: not driving track {track}")
            ep = record_episode(env, act, track, max_steps)
            budget.spend(len(ep["reward"]), "round", round=int(round_index), track=track)
            ret = float(ep["reward"].sum()) + ZOOM_PENALTY
            meta = {"source": "carracing", "seed": track, "split": "train", "index": len(manifest["episodes"]),
                    "round": int(round_index), "behaviour": "agent", "real_return": ret}
            path = out / fmt.EPISODES / f"track_{track:07d}.npz"
            manifest["episodes"].append(fmt.write_episode(path, ep, meta))
            fmt.write_manifest(out, manifest)
            driven.append({"track": track, "steps": int(len(ep["reward"])), "return": round(ret, 2)})
    finally:
        env.close()
    return {"round": int(round_index), "driven": driven, "episodes_in_dataset": len(manifest["episodes"]),
            "steps_in_dataset": int(sum(e["steps"] for e in manifest["episodes"])),
            "wall_seconds": round(time.perf_counter() - t0, 1), "budget": budget.summary()}


def record_episode(env, act, track: int, max_steps: int | None = None) -> dict[str, np.ndarray]:
    """One real episode of `env` (a `RealCarRacingEnv`) on `track` with `act(obs) -> action`, as the arrays
    of a dataset shard (`gaia_gym.data.format`)."""
    obs, _ = env.reset(options={"track": int(track)})
    frames, steer, speed, target, raw, rew, term, trunc = [], [], [], [], [], [], [], []
    done = False
    while not done and (max_steps is None or len(rew) < max_steps):
        frames.append(env.frame)
        speed.append(env.drive.speed_mps)  # measured at frame t, before the step
        obs, r, terminated, truncated, info = env.step(act(obs))
        steer.append(info["steering"])
        target.append(info["target_speed_mps"])
        raw.append(info["raw_action"])
        rew.append(r)
        term.append(terminated)
        done = terminated or truncated
        trunc.append(truncated or (not done and max_steps is not None and len(rew) >= max_steps))
    return {"frames": np.stack(frames), "last_frame": env.frame, "steering": np.asarray(steer, np.float32),
            "speed_mps": np.asarray(speed, np.float32), "target_speed_mps": np.asarray(target, np.float32),
            "raw_action": np.stack(raw).astype(np.float32), "reward": np.asarray(rew, np.float32),
            "terminated": np.asarray(term, bool), "truncated": np.asarray(trunc, bool)}


def _head_parameters(wm: torch.nn.Module) -> list[torch.nn.Parameter]:
    from gaia_gym.rl.extractor import HEAD_PREFIXES

    named = [(k, p) for k, p in wm.named_parameters() if k.startswith(HEAD_PREFIXES)]
    if not named:
        raise ConfigError(f"{type(wm).__name__} has no reward or end head to fine-tune")
    return [p for _, p in named]


def head_losses(wm, batch: dict[str, torch.Tensor], memory: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward head's two-hot cross-entropy and the end head's BCE on `batch` (tokens, actions, reward,
    terminated), over the world model's `memory` of it (computed here without gradient when not given:
    only the heads learn)."""
    from gaia_gym.models.world_model import symlog, two_hot

    if memory is None:
        with torch.no_grad():
            memory = wm.forward(batch["tokens"], batch["actions"], None).memory
    target = two_hot(symlog(batch["reward"].float()), wm.bins)
    r_loss = -(target * wm.reward_logits(memory).log_softmax(-1)).sum(-1).mean()
    e_loss = F.binary_cross_entropy_with_logits(wm.end_head(memory).squeeze(-1).float(), batch["terminated"].float())
    return r_loss, e_loss


def _path_key(d: str | Path) -> str:
    """A file name for dataset `d`'s encoded train split: its directory name, a hash of its full path and its
    train steps (a dataset that grew since it was encoded is encoded again)."""
    import hashlib

    from gaia_gym.data.loader import EpisodeIndex

    full = str(Path(d).resolve())
    steps = EpisodeIndex(d, split="train").total_steps
    return f"{Path(full).name}_{hashlib.sha1(full.encode()).hexdigest()[:10]}_{steps}"


def finetune_heads(bundle, data: Sequence[str | Path], out: str | Path, steps: int = 1500, batch_size: int = 32,
                   lr: float = 3e-4, seed: int = 0, val_fraction: float = 0.2, progress: bool = True,
                   tokens_dir: str | Path | None = None) -> dict:
    """Fine-tune `bundle`'s reward and end heads on the train splits of the datasets `data` (the first the
    original data, the rest rounds' drives: each batch takes half its clips from the first, half from the
    others) and write the model directory `out` (done already: returned as is). A held-out share
    (`val_fraction`) of the round episodes scores the heads before and after. `tokens_dir`: where the
    encoded datasets are cached (default: beside `out`; rounds share one, the tokenizer never changes).
    Returns the record."""
    from tqdm import tqdm

    from gaia_gym.bundle import TOKENIZER_DIR, load_bundle, save_bundle
    from gaia_gym.bundle.directory import weights_sha256
    from gaia_gym.train.world_model import TokenClips, tokenize_split

    out = Path(out)
    record_path = out / "heads_finetune.json"
    if record_path.exists() and (out / "config.json").exists():
        return json.loads(record_path.read_text())
    if len(data) < 2:
        raise ConfigError("finetune_heads needs the original data and at least one round's drives")
    if bundle.kind != "world_model":
        raise ConfigError(f"finetune_heads trains a discrete world model's heads, not a {bundle.kind}")
    bundle = load_bundle(bundle, "cpu")
    bundle = dataclasses.replace(bundle, world_model=copy.deepcopy(bundle.world_model))  # the caller's stays as it is
    wm = bundle.world_model
    tok_dir = Path(bundle.path) / TOKENIZER_DIR
    if not tok_dir.exists():
        raise ConfigError(f"{bundle.path}: no tokenizer directory to encode the drives with")
    work = Path(tokens_dir) if tokens_dir is not None else out.parent / (out.name + "_tokens")
    files = [tokenize_split(Path(d), tok_dir, "train", work / f"{_path_key(d)}.npz", bundle.codec, progress=progress)
             for d in data]
    L = wm.cfg.context
    base = TokenClips(files[0], L)
    rounds = [TokenClips(f, L) for f in files[1:]]
    # each round file's last `val_fraction` of episodes (whole episodes) scores the heads; the rest trains
    g = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for f, c in zip(files[1:], rounds):
        with np.load(f) as z:
            ep_of = np.searchsorted(z["episode_starts"], c.starts.numpy(), "right")  # 1-based episode of a clip
        n_ep = int(ep_of.max())
        held = torch.from_numpy(ep_of > n_ep - max(1, int(round(n_ep * val_fraction))) if n_ep > 1
                                else np.zeros(len(ep_of), bool))
        train_parts.append((c, c.starts[~held]))
        val_parts.append((c, c.starts[held]))

    def sample(parts, n) -> dict[str, torch.Tensor]:
        parts = [(c, s) for c, s in parts if len(s)]
        picks = [parts[int(i)] for i in torch.randint(len(parts), (n,), generator=g)]
        bs = [c.batch(s[torch.randint(len(s), (1,), generator=g)]) for c, s in picks]
        return {k: torch.cat([b[k] for b in bs]) for k in bs[0]}

    def score(parts) -> dict[str, float]:
        parts = [(c, s) for c, s in parts if len(s)]
        if not parts:
            return {}
        tot = {"reward_loss": 0.0, "end_loss": 0.0, "reward_mae": 0.0}
        n = 0
        with torch.no_grad():
            for c, s in parts:
                for i in range(0, len(s), 256):
                    b = c.batch(s[i:i + 256])
                    mem = wm.forward(b["tokens"], b["actions"], None).memory  # once for the losses and the MAE
                    r, e = head_losses(wm, b, mem)
                    mae = (wm.expected_reward(mem) - b["reward"].float()).abs().mean()
                    k = len(b["reward"])
                    tot["reward_loss"] += float(r) * k
                    tot["end_loss"] += float(e) * k
                    tot["reward_mae"] += float(mae) * k
                    n += k
        return {k: v / n for k, v in tot.items()}

    wm.eval()
    for p in wm.parameters():
        p.requires_grad_(False)
    params = _head_parameters(wm)
    for p in params:
        p.requires_grad_(True)
    before = score(val_parts)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    losses = []
    for _ in tqdm(range(int(steps)), desc="reward/end heads", unit="step", disable=not progress):
        half = batch_size // 2
        pick = base.starts[torch.randint(len(base.starts), (batch_size - half,), generator=g)]
        parts = [base.batch(pick), sample(train_parts, half)]
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        r_loss, e_loss = head_losses(wm, batch)
        loss = wm.cfg.reward_weight * r_loss + wm.cfg.end_weight * e_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = score(val_parts)
    for p in wm.parameters():
        p.requires_grad_(False)
    parent = weights_sha256(bundle.path)
    save_bundle(bundle, out, meta={"heads_finetuned_from": parent, "heads_finetuned_on": [str(d) for d in data]})
    rec = {"model": str(out), "from": str(bundle.path), "from_sha256": parent, "data": [str(d) for d in data],
           "steps": int(steps), "batch_size": int(batch_size), "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
           "train_loss_first_100": float(np.mean(losses[:100])) if losses else None,
           "train_loss_last_100": float(np.mean(losses[-100:])) if losses else None,
           "held_out_round_clips": int(sum(len(s) for _, s in val_parts)),
           "held_out_before": before, "held_out_after": after}
    from gaia_gym.fileio import atomic_write_json

    atomic_write_json(record_path, rec)
    return rec


__all__ = ["drive_round", "finetune_heads", "head_losses", "record_episode"]
