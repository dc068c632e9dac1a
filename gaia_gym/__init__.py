"""gaia_gym: a GAIA-style generative driving world model, packaged for reinforcement learning.

Pipeline: real driving data (`gaia_gym.data`) -> tokenizer -> world model -> imagination engine ->
Gymnasium / SB3 adapters -> agents and planners.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
