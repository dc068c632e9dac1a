"""gaia_gym: a GAIA-style generative driving world model, packaged for reinforcement learning.

Pipeline: real driving data (`gaia_gym.data`) -> tokenizer -> world model -> imagination engine ->
Gymnasium / SB3 adapters -> agents and planners.

Importing the package registers the Gymnasium environments "GaiaDrive-v0" (CarRacing) and
"GaiaHighway-v0" (highway-env, with scene conditions) (entry points given as strings: nothing heavy is
imported until an environment is made).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

ENV_ID = "GaiaDrive-v0"
HIGHWAY_ENV_ID = "GaiaHighway-v0"


def _register_envs() -> None:
    """Register GaiaDrive-v0 and GaiaHighway-v0 with Gymnasium once (a no-op when already registered)."""
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        return
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="gaia_gym.envs.gaia_drive:GaiaDriveEnv",
                 vector_entry_point="gaia_gym.envs.vector:GaiaDriveVectorEnv")
    if HIGHWAY_ENV_ID not in registry:
        register(id=HIGHWAY_ENV_ID, entry_point="gaia_gym.envs.gaia_highway:GaiaHighwayEnv",
                 vector_entry_point="gaia_gym.envs.vector:GaiaHighwayVectorEnv")


_register_envs()
