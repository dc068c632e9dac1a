"""Evaluation: measurements of each stage on held-out data, each a small accumulator composing a report.

- `gaia_gym.evaluation.world_model`: teacher-forced, open-loop, counterfactual and termination metrics;
- `gaia_gym.evaluation.throughput`: imagined steps/s (the one measurement `bench` and the evaluation
  share) and the real simulator's speed, measured in the same run;
- `gaia_gym.evaluation.pictures`: counterfactual contact sheets and rollout GIFs;
- `gaia_gym.evaluation.readback`: reading the ego's motion back from frames (no learned model);
- `gaia_gym.evaluation.tokenizer`: reconstruction quality, code usage, speed;
- `gaia_gym.evaluation.real`: agents on the real simulator's test tracks, and result summaries.
Every rollout goes through the imagination engine (`gaia_gym.imagination.Imagination`).
"""
