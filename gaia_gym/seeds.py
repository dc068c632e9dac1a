"""The seed ranges, in one place: which simulator seeds make data, which pick checkpoints, which test.

- Data: collectors drive seeds ``seed + i`` for their episode i (`gaia_gym.data.collect.plan_episodes`),
  from the configs' small seeds, always below `HELD_OUT_FROM`; every `VAL_EVERY`-th episode
  (``i % VAL_EVERY == VAL_EVERY - 1``) is the validation split (held-out tracks, never trained on).
- Test: `TEST_TRACKS`, CarRacing's 20 final test tracks 1,000,000..1,000,019; highway test episodes
  start at `HIGHWAY_TEST_SEED` (the same boundary). Only the final scores drive them.
- Rounds: `round_tracks` (500,000 + 1,000 x round + i), the tracks the current policy drives to add
  training data (`gaia_gym.rl.rounds`).
- Validation for choices: `VALIDATION_TRACKS` (1,000,100+): the real tracks that agents and planners
  are compared on while training or tuning (never the test tracks).
"""

from __future__ import annotations

from gaia_gym.errors import ConfigError

HELD_OUT_FROM = 1_000_000  # seeds from here up are never collected
VAL_EVERY = 10  # every 10th collected episode is validation
TEST_TRACK_COUNT = 20
TEST_TRACKS: tuple[int, ...] = tuple(range(HELD_OUT_FROM, HELD_OUT_FROM + TEST_TRACK_COUNT))
HIGHWAY_TEST_SEED = HELD_OUT_FROM  # highway test episodes: seeds from here up
VALIDATION_TRACK = 1_000_100  # the first validation track (1,000,100+)
ROUND_TRACKS_FROM = 500_000  # rounds of real driving (`gaia_gym.rl.rounds`): 500,000 + 1,000 x round + i


def validation_tracks(n: int) -> list[int]:
    """The first `n` validation tracks (1,000,100, 1,000,101, ...)."""
    return list(range(VALIDATION_TRACK, VALIDATION_TRACK + int(n)))


def round_tracks(round_index: int, n: int) -> list[int]:
    """`n` tracks for round `round_index` (>= 1) of real driving with the current policy: below
    `HELD_OUT_FROM` (training data, never validation or test) and above any collector's seeds."""
    if round_index < 1 or n > 1000:
        raise ConfigError(f"round_tracks: round >= 1 and n <= 1000, got round {round_index}, n {n}")
    first = ROUND_TRACKS_FROM + 1000 * int(round_index)
    return list(range(first, first + int(n)))


def test_tracks(n: int = TEST_TRACK_COUNT, first: int = HELD_OUT_FROM) -> list[int]:
    """`n` test tracks from `first` (default: the 20 final ones)."""
    return list(range(int(first), int(first) + int(n)))


__all__ = ["HELD_OUT_FROM", "HIGHWAY_TEST_SEED", "ROUND_TRACKS_FROM", "TEST_TRACKS", "TEST_TRACK_COUNT", "VALIDATION_TRACK", "VAL_EVERY",
           "round_tracks", "test_tracks", "validation_tracks"]
