"""`gaia-gym`: the command-line entry point. Each verb is a thin shell over a library function.

Run `gaia-gym --help`, or `gaia-gym VERB --help` for any verb. The verbs live by group, each group's parser
beside its handlers: `data` (collect, import, data), `train`, `eval`, `world` (demo, imagine, bench, export,
play, pretrain).
"""

from __future__ import annotations

import argparse
import sys

from gaia_gym.errors import GaiaGymError


class CLIError(GaiaGymError):
    """A user-facing error of the command line itself: printed as one line, exit code 2."""


def _version() -> str:
    from gaia_gym import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The whole `gaia-gym` parser: every group's verbs, in the order `--help` lists them."""
    from gaia_gym.cli import data, eval as eval_verbs, train, world

    p = argparse.ArgumentParser(
        prog="gaia-gym",
        description="gaia_gym: a GAIA-style driving world model for reinforcement learning.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    data.add_parsers(sub)
    train.add_parsers(sub)
    eval_verbs.add_parsers(sub)
    world.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv_tail = argv[1:]
    try:
        args.fn(args)
    except (GaiaGymError, OSError) as e:  # every one-line error; OSError (missing file, disk full...) names its file
        print(f"gaia-gym: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gaia-gym: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


__all__ = ["CLIError", "build_parser", "main"]
