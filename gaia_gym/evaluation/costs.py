"""What an imagination-trained policy cost: real transitions and wall-clock minutes per stage, from the
records each stage left (results/*.json, the agent run's state.json)."""

from __future__ import annotations

from pathlib import Path

from gaia_gym.fileio import read_json


def pipeline_costs(policy: Path, results: Path = Path("results")) -> dict:
    """What the imagination-trained `policy` cost, from the records each stage left: real transitions
    (the collected dataset, results/data.json, plus the real-simulator evaluations made while training,
    the run's state.json) and wall-clock minutes per stage (data.json, tokenizer.json, world_model.json,
    the agent run's state.json)."""
    results = Path(results)
    rd = lambda name: read_json(results / name, {})  # noqa: E731
    data, tok, wm = rd("data.json").get("default_carracing_dataset", {}), rd("tokenizer.json"), rd("world_model.json")
    state = read_json(Path(policy).parent / "state.json", {})
    args = state.get("args", {})
    # the behaviour prior (agents/behaviour_prior.py): the policy itself, or the run's --init / --prior
    prior_dirs = {Path(q).parent for q in (args.get("init"), args.get("prior")) if q}
    if not state:
        prior_dirs.add(Path(policy).parent)
    priors = [r for r in (read_json(d / "prior.json", {}) for d in sorted(prior_dirs)) if r]
    best_t = state.get("best_timesteps")
    evals = state.get("evals", [])
    # every evaluation counts, also those after the best checkpoint: they took part in picking it
    eval_steps = int(round(sum(e["real_steps_mean"] * len(e["real_return_per_seed"]) for e in evals)))
    prior_steps = sum(int(r.get("real_env_steps_used", 0)) for r in priors)
    agent_s = next((e["elapsed_s"] for e in evals if e["timesteps"] == best_t), state.get("elapsed_s"))
    wall = {"collect": data.get("wall_minutes_2_workers"), "tokenizer": tok.get("train_minutes"),
            "world_model": wm.get("train_minutes"),
            "agent_in_imagination": None if agent_s is None else round(agent_s / 60, 1)}
    if priors:
        wall["behaviour_prior"] = round(sum(r.get("replay_seconds", 0) + r.get("fit_seconds", 0) for r in priors) / 60, 1)
    return {
        "real_env_steps_used": int(data.get("transitions", 0)) + eval_steps + prior_steps,
        "real_env_steps_detail": {"dataset_transitions": data.get("transitions"),
                                  "training_time_real_evaluation_steps": eval_steps,
                                  **({"behaviour_prior_extra_steps": prior_steps} if priors else {}),
                                  "note": "evaluations (seeds 1,000,100+) only pick the checkpoint; no gradient "
                                          "ever sees a real transition outside the dataset"},
        "wall_clock_minutes": wall,
        "agent_run": {"imagined_steps": best_t, "imagined_steps_trained": state.get("num_timesteps"),
                      "real_evaluations": len(evals), "torch_threads": state.get("torch_threads"), "args": args},
    }


__all__ = ["pipeline_costs"]
