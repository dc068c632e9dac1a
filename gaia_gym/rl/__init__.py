"""The reinforcement-learning side (Stable-Baselines3), one concept per module:

- `gaia_gym.rl.extractor`: `WorldModelExtractor` (the world model's own token/latent embedding as the
  policy's features) and `policy_kwargs`;
- `gaia_gym.rl.agent`: loading and saving agents (the world model they were trained on is checked), the
  shipped agent, `ActionRange` and `agent_actor`;
- `gaia_gym.rl.wrappers`: VecEnv wrappers (the action range, the behaviour-prior term);
- `gaia_gym.rl.planner`: CEM/MPPI planning in imagination, `PolicyProposal`, `PolicyValue`;
- `gaia_gym.rl.prior`: the behaviour prior (the expert cloned onto the agent's observations);
- `gaia_gym.rl.ledger`: `RealBudget`, every real simulator step counted against one budget;
- `gaia_gym.rl.training`: a resumable training run in imagination with its callbacks.

Importing this package imports none of them (and so not Stable-Baselines3): import the module you need.
"""
