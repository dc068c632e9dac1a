"""One exception family: every one-line error gaia_gym raises derives from `GaiaGymError`.

The CLI catches `GaiaGymError` (and nothing broader) and prints its message on one line with exit code 2;
library users can catch it the same way. The message names the problem and, where there is one, the file.
Subclasses that also derive from a builtin (`ValueError`) keep working with code that catches the builtin.
"""

from __future__ import annotations

from typing import NoReturn


class GaiaGymError(Exception):
    """Base of every gaia_gym error whose message is meant to be shown to a user as one line."""


class ConfigError(GaiaGymError, ValueError):
    """An argument, option or input is out of range, of the wrong type or unreadable (bad action,
    temperature, obs_mode, a file that is not what it should be...)."""


class MissingFileError(GaiaGymError, FileNotFoundError):
    """An input file or directory the user named does not exist; the message names it."""


class DatasetError(GaiaGymError):
    """A dataset directory is missing, empty, not a gaia_gym dataset, or does not fit what is asked."""


class CorruptShardError(DatasetError):
    """A shard cannot be read back intact; the message names the file."""


class ModelFileError(GaiaGymError):
    """A model file or directory is missing, corrupt, foreign or does not fit; the message names the path."""


class ResumeError(GaiaGymError):
    """A run directory cannot be resumed with the given settings."""


class TrainingError(GaiaGymError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class ImaginationError(GaiaGymError, RuntimeError):
    """Misuse of the imagination engine (stepping before reset...)."""


def exit_with(message: str, code: int = 2) -> NoReturn:
    """End a script as the gaia-gym command line ends on a user's error: `message` as one line on stderr,
    exit code 2."""
    import sys

    print(" ".join(str(message).split("\n")), file=sys.stderr)
    raise SystemExit(code)


def run_script(name: str, main, *args):
    """`main(*args)` of a script named `name`; a `GaiaGymError` it lets out ends it as `exit_with` does."""
    try:
        return main(*args)
    except GaiaGymError as e:
        exit_with(f"{name}: {e}")


__all__ = ["ConfigError", "CorruptShardError", "DatasetError", "GaiaGymError", "ImaginationError", "MissingFileError",
           "ModelFileError", "ResumeError", "TrainingError", "exit_with", "run_script"]
