"""Rounds of real driving: drive the real CarRacing-v3 with the current agent, add the drives to the data,
fine-tune the world model's reward and end heads on them, train the agent in imagination again.

    python agents/rounds.py --agent gaia_gym/assets/agents/driver.zip --data data/carracing --out runs/rounds \\
        --rounds 2 --tracks 20 -- --minutes 20 --spatial 16 --envs 64 --horizon 32 --n-steps 64 \\
        --batch-size 1024 --n-epochs 4 --gamma 0.97 --lr 1e-4 --speed-max 0.6 --eval-episodes 5 \\
        --eval-every 150000 --prompt-data data/carracing --prompt-clips 8192

Round k (1, 2, ...) writes OUT/round_k/: drives/ (a dataset of the agent's real episodes on the round's
tracks, `gaia_gym.seeds.round_tracks`), model/ (the world model with its heads fine-tuned on the data
plus every round's drives so far; heads_finetune.json scores them on held-out round drives before and
after) and agent/ (agents/train_imagination.py on that model, started from the current agent, with the
arguments after ``--`` (run as its own process); its best.zip, picked on the validation tracks, drives the next round).

Every real step goes into one ledger, OUT/budget.json (`gaia_gym.rl.ledger.RealBudget`, --limit): the
dataset's transitions once, each round's drives, every checkpoint evaluation. A step the ledger cannot
pay for is not taken (one-line error). Rerunning the same command resumes: finished stages are kept,
unfinished ones continue. OUT/rounds.json summarises each round and the ledger.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gaia_gym.errors import exit_with, run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="the agent zip the first round drives with")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--data", required=True, help="the world model's dataset (its steps are spent in the ledger once)")
    p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of real driving")
    p.add_argument("--tracks", type=int, default=20, help="real episodes per round")
    p.add_argument("--head-steps", type=int, default=1500, help="optimizer steps of the reward/end heads per round")
    p.add_argument("--max-steps", type=int, default=None, help="cap each real drive (smoke tests; drives get cut)")
    p.add_argument("--limit", type=int, default=200_000, help="real steps the whole pipeline may take")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("train", nargs=argparse.REMAINDER, help="after --: agents/train_imagination.py arguments")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    train = [x for x in a.train if x != "--"]
    for flag in ("--model", "--init", "--out", "--ledger", "--ledger-limit"):
        if flag in train:
            exit_with(f"rounds: {flag} is set by the rounds (pass the others after --)")
    if a.rounds < 1 or a.tracks < 1:
        exit_with(f"rounds: --rounds and --tracks must be >= 1, got {a.rounds}, {a.tracks}")

    from gaia_gym.bundle import load_bundle
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.fileio import atomic_write_json
    from gaia_gym.rl.agent import load_agent, save_agent
    from gaia_gym.rl.ledger import RealBudget
    from gaia_gym.rl.rounds import drive_round, finetune_heads
    from gaia_gym.seeds import round_tracks

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = RealBudget.open(out / "budget.json", a.limit)
    if "dataset" not in budget.by_purpose():
        index = EpisodeIndex(a.data, split="all")
        budget.spend(index.total_steps, "dataset", data=str(a.data))
    model, agent_path, summary = a.model, a.agent, {"rounds": []}
    for k in range(1, a.rounds + 1):
        here = out / f"round_{k}"
        bundle = load_bundle(model)
        agent = load_agent(agent_path, world_model=bundle, device="cpu")
        start = save_agent(agent, here / "start.zip", world_model=bundle)  # records what its inputs depend on
        drives = drive_round(agent, bundle, here / "drives", round_tracks(k, a.tracks), budget, k, progress=a.progress,
                             max_steps=a.max_steps)
        heads = finetune_heads(bundle, [a.data, *[out / f"round_{j}" / "drives" for j in range(1, k + 1)]],
                               here / "model", steps=a.head_steps, progress=a.progress, tokens_dir=out / "tokens")
        cmd = [sys.executable, str(Path(__file__).with_name("train_imagination.py")), *train, "--model",
               str(here / "model"), "--init", str(start), "--out", str(here / "agent"), "--ledger",
               str(out / "budget.json"), "--ledger-limit", str(a.limit)]
        if subprocess.run(cmd).returncode != 0:  # its own one-line error is above
            exit_with(f"rounds: round {k}: training in imagination stopped (rerun the same command to resume)")
        state = json.loads((here / "agent" / "state.json").read_text())
        best = here / "agent" / "best.zip"
        summary["rounds"].append({"round": k, "drove_with": str(agent_path), "drives": drives, "heads": heads,
                                  "agent": str(best), "best_real_return": state.get("best_real_return"),
                                  "evals": state.get("evals", [])})
        model, agent_path = str(here / "model"), str(best if best.exists() else here / "agent" / "last.zip")
        summary["budget"] = budget.refresh().summary()
        atomic_write_json(out / "rounds.json", summary)
        print(f"round {k}: drove {drives['steps_in_dataset']} real steps on {drives['episodes_in_dataset']} tracks; "
              f"heads {heads['held_out_before'].get('reward_loss', float('nan')):.3f} -> "
              f"{heads['held_out_after'].get('reward_loss', float('nan')):.3f} (held-out reward loss); "
              f"agent best {state.get('best_real_return')}; ledger {budget.used} / {budget.limit}")
    return summary


if __name__ == "__main__":
    run_script("rounds", main, sys.argv[1:])
