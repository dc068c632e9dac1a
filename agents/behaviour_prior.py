"""Clone the scripted expert onto the agent's own observations: the behaviour prior (and a starting policy).

    python agents/behaviour_prior.py --data data/carracing --out runs/prior
    python agents/evaluate_real.py --policy runs/prior/prior.zip --json results/agents.json --key prior

Every step of the CarRacing dataset (noisy and excursion segments included) carries the clean expert's
action at that state (`expert_steering`, `expert_speed_mps`). The logged episodes are replayed through
the world model with the real frames observed, exactly as the real-simulator env does at test time
(`gaia_gym.rl.prior.real_observations`), and an SB3 PPO agent with the same network as
agents/train_imagination.py (`WorldModelExtractor` + MLP) is fit to those labels: its action mean by
regression, its value to the data's discounted reward-to-go. No real transition beyond the dataset's.
The validation episodes (held-out tracks) are scored, never fit.

OUT/ holds obs_train.npz / obs_val.npz (the replayed observations: resumable, reused by a rerun),
prior.zip (the agent: `--init` and `--prior` of agents/train_imagination.py, or scored as it is) and
prior.json (the fit: per-epoch train/val action MSE, seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gaia_gym.errors import run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Fmt", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    p.add_argument("--data", type=Path, nargs="+", default=[Path("data/carracing")],
                   help="dataset(s) with expert labels (CarRacing or highway-env; several are pooled)")
    p.add_argument("--out", type=Path, default=Path("runs/prior"), help="output directory")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--keep-best", action="store_true", help="keep the epoch with the lowest validation action error "
                   "(early stopping on the dataset's held-out episodes)")
    p.add_argument("--net-arch", default="256,256", help="hidden layers after the extractor")
    p.add_argument("--spatial", type=int, default=0, help="per-position token projection width (0: mean-pool; "
                                                         "gaia_gym.rl.extractor.WorldModelExtractor)")
    p.add_argument("--per-token", action="store_true", help="with --spatial: every token its own position, not "
                   "every patch (gaia_gym.rl.extractor.policy_kwargs; highway-env's 8x8 token grid has 4 patches)")
    p.add_argument("--speed-max", type=float, default=None, help="the agent's highest speed action (as train_imagination; "
                   "default: the world's, 0.6 on CarRacing, 1.0 on highway-env)")
    p.add_argument("--log-std", type=float, default=-1.2, help="the policy's log std after the fit (PPO's exploration)")
    p.add_argument("--value-coef", type=float, default=0.5, help="weight of the value regression (0: leave it)")
    p.add_argument("--gamma", type=float, default=0.99, help="discount of the value targets")
    p.add_argument("--rows", type=int, default=32, help="episodes replayed together")
    p.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes per split (smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    import numpy as np
    import torch
    from stable_baselines3 import PPO

    from gaia_gym.bundle import load_bundle
    from gaia_gym.envs import GaiaDriveVecEnv
    from gaia_gym.errors import GaiaGymError, exit_with
    from gaia_gym.fileio import atomic_write_json
    from gaia_gym.rl.agent import ActionRange, save_agent
    from gaia_gym.rl.extractor import policy_kwargs
    from gaia_gym.rl.prior import fit_prior, split_arrays
    from gaia_gym.rl.training import default_speed_max

    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    try:
        bundle = load_bundle(a.model, a.device)
        rng = ActionRange((-1.0, -1.0), (1.0, a.speed_max if a.speed_max is not None else default_speed_max(bundle)))
        def cache(split: str, i: int, d: Path) -> Path:  # one cache per dataset (the first keeps the old name)
            return a.out / (f"obs_{split}.npz" if i == 0 else f"obs_{split}_{d.name}.npz")

        parts = {s: [split_arrays(d, s, bundle, rng, a.gamma, cache(s, i, d), a.rows, a.max_episodes,
                                  not a.no_progress) for i, d in enumerate(a.data)] for s in ("train", "val")}
        sets = {s: {k: np.concatenate([x[k] for x in v]) for k in v[0]} for s, v in parts.items()}
    except (GaiaGymError, FileNotFoundError) as e:
        exit_with(f"behaviour_prior: {e}")
    replay_s = time.perf_counter() - t0
    venv = GaiaDriveVecEnv(num_envs=1, bundle=bundle, obs_mode=f"{bundle.backend.latent_key}+features", horizon=8)
    arch = [int(x) for x in a.net_arch.split(",") if x.strip()]
    agent = PPO("MultiInputPolicy", venv, policy_kwargs=policy_kwargs(bundle, net_arch=arch, spatial=a.spatial,
                                                                   per_token=a.per_token),
                seed=a.seed, device=a.device, verbose=0)
    agent.gaia_action_range = rng.as_dict()
    fit = fit_prior(agent, sets["train"], sets["val"], epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                    value_coef=a.value_coef, log_std=a.log_std, seed=a.seed, progress=not a.no_progress,
                    weight_decay=a.weight_decay, keep_best=a.keep_best)
    a.out.mkdir(parents=True, exist_ok=True)
    save_agent(agent, a.out / "prior.zip")
    rec = {"command": "python agents/behaviour_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "data": [str(d) for d in a.data], "train_steps": int(len(sets["train"]["target"])),
           "val_steps": int(len(sets["val"]["target"])), "epochs": a.epochs,
           "train_action_mse": fit.train_action_mse, "val_action_mse": fit.val_action_mse,
           "val_value_mse": fit.val_value_mse, "best_epoch": fit.best_epoch, "replay_seconds": round(replay_s, 1), "fit_seconds": fit.seconds,
           "torch_threads": torch.get_num_threads(), "action_range": rng.as_dict(),
           "real_env_steps_used": 0}
    atomic_write_json(a.out / "prior.json", rec)
    venv.close()
    kept = fit.val_action_mse[fit.best_epoch - 1 if fit.best_epoch else -1]
    print(f"wrote {a.out / 'prior.zip'}: val action mse {kept:.4f}"
          + (f" (epoch {fit.best_epoch} kept)" if fit.best_epoch else "")
          + f" (replay {replay_s / 60:.1f} min, fit {fit.seconds / 60:.1f} min)")
    return rec


if __name__ == "__main__":
    run_script("behaviour_prior", main, sys.argv[1:])
