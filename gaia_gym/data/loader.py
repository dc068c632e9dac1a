"""Fixed-length training clips streamed from a dataset directory, without loading the whole dataset.

`EpisodeIndex` lists the episodes of one split from the manifest (no shard is opened).
`ClipDataset` is a `torch.utils.data.IterableDataset` that streams episodes through a *shuffle
buffer* (WebDataset-style)::

    episode stream (shuffled per epoch) --> buffer of <= buffer_episodes decoded episodes --> clips

With ``shuffle=True`` it reads episodes in a seeded order that changes every epoch, keeps at most
``buffer_episodes`` of them decoded in memory, and yields clips drawn at random from the whole buffer;
an episode is dropped from the buffer (and the next one read) once its clip budget is spent. Each
episode's budget is a random-phase tiling of it into non-overlapping clips (``T // clip_len`` clips,
so every step is seen about once per epoch, at different clip boundaries each epoch), or
``clips_per_episode`` clips when given. With ``shuffle=False`` it yields every non-overlapping clip
``[0, L), [L, 2L), ...`` of every episode, in order, exactly once (deterministic; for evaluation).

A clip never crosses an episode boundary, and episodes shorter than ``clip_len`` are skipped. A clip is
a dict of tensors: ``frames`` uint8 ``(L, H, W, 3)``, float fields float32 ``(L,)`` (or ``(L, A)``),
bool fields bool ``(L,)``, plus ``episode`` (position of the episode in `EpisodeIndex`, int64) and
``start`` (first step of the clip in its episode, int64). The default `DataLoader` collate stacks them.

**Memory bound.** Each iterating process (the main process, or each `DataLoader` worker) holds at
most ``buffer_episodes`` decoded episodes, plus one being read: about
``(buffer_episodes + 1) x episode size`` per process, where an episode is ``T x H x W x 3`` bytes of
frames (CarRacing at 64x64, T <= 238: ~2.9 MB) plus a few bytes per step of the other fields. With
the defaults (8 episodes) that is ~26 MB per worker for CarRacing, whatever the dataset size.

**Sharding.** With ``num_workers > 0`` each worker takes a disjoint slice of the (epoch-shuffled)
episode list via `torch.utils.data.get_worker_info`; with DDP pass ``rank`` and ``world_size`` and
each rank takes a disjoint slice first. All processes shuffle the list with the same seed and epoch,
so the slices are disjoint and together cover every episode. Call `ClipDataset.set_epoch` between
epochs when you iterate a finite (``epochs=1``) stream once per epoch, as with `DistributedSampler`.

**Errors.** A shard that cannot be read raises `CorruptShardError` naming the file. Raised inside a
`DataLoader` worker, it crosses to the main process as a `WorkerCorruptShardError` (a
`CorruptShardError`) whose message is the same one line: torch re-creates a worker's exception as
``type(msg)`` with ``msg`` = its whole formatted traceback, and these classes keep only the original
message (the one line the CLI prints). Other `DatasetError`s do the same as `WorkerDatasetError`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gaia_gym.data.format import load_episode, read_manifest
from gaia_gym.errors import ConfigError, CorruptShardError, DatasetError, GaiaGymError

SPLITS = ("train", "val", "all")
DEFAULT_FIELDS = ("frames", "steering", "speed_mps", "target_speed_mps", "reward", "terminated", "truncated")


def _original_message(cls: type, msg: str) -> str:
    """The one-line message of a `cls` raised in a DataLoader worker, from what torch passes to
    ``cls(msg)`` in the main process: "Caught X in DataLoader worker process N.\\nOriginal Traceback
    ...\\nmodule.X: <message>\\n". A message that is not such a wrapper is returned unchanged."""
    if not (msg.startswith("Caught ") and "\nOriginal Traceback" in msg):
        return msg
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = msg.rfind("\n" + prefix)
        if at >= 0:
            rest = msg[at + 1 + len(prefix):].strip()
            if rest:
                return rest.splitlines()[0]
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else msg


class WorkerCorruptShardError(CorruptShardError):
    """A `CorruptShardError` raised in a DataLoader worker; re-created in the main process with its one-line
    message (not the worker's traceback)."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(_original_message(type(self), str(msg)))


class WorkerDatasetError(DatasetError):
    """Any other `DatasetError` raised in a DataLoader worker, kept to its one-line message likewise."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(_original_message(type(self), str(msg)))


def _across_workers(it: Iterator) -> Iterator:
    """`it`, re-raising gaia_gym's dataset errors as classes that survive torch's worker boundary."""
    try:
        yield from it
    except (WorkerCorruptShardError, WorkerDatasetError):
        raise
    except CorruptShardError as e:
        raise WorkerCorruptShardError(str(e)) from None
    except DatasetError as e:
        raise WorkerDatasetError(str(e)) from None


class EpisodeIndex:
    """The episodes of one split of a dataset directory, read from its manifest.

    Attributes:
        directory: the dataset directory.
        split: ``"train"``, ``"val"`` or ``"all"``.
        manifest: the whole manifest dict.
        entries: the manifest entries of this split, in file order.
        paths: shard paths, one per entry.
        lengths: steps per episode, one per entry.
    """

    def __init__(self, directory: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.directory = Path(directory)
        self.split = split
        self.manifest = read_manifest(self.directory)
        entries = sorted(self.manifest.get("episodes", []), key=lambda e: e["file"])
        if split != "all":
            entries = [e for e in entries if e.get("split", "train") == split]
        if not entries:
            have = sorted({e.get("split", "train") for e in self.manifest.get("episodes", [])})
            raise DatasetError(
                f"{self.directory} has no {split!r} episodes"
                + (f" (splits present: {', '.join(have)})" if have else " (the dataset is empty)")
            )
        self.entries: list[dict] = entries
        self.paths: list[Path] = [self.directory / e["file"] for e in entries]
        self.lengths: list[int] = [int(e["steps"]) for e in entries]

    @property
    def total_steps(self) -> int:
        return int(sum(self.lengths))

    @property
    def fps(self) -> float | None:
        fps = self.manifest.get("fps") or self.entries[0].get("meta", {}).get("fps")
        return float(fps) if fps else None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (f"EpisodeIndex({str(self.directory)!r}, split={self.split!r}: "
                f"{len(self)} episodes, {self.total_steps} steps)")


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """A copy of a clip slice as a tensor (a clip never pins its whole episode in memory)."""
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    elif a.dtype.kind == "u" and a.dtype != np.uint8:
        a = a.astype(np.int64)  # torch supports few ops on uint16/32/64
    else:
        a = a.copy()
    return torch.from_numpy(a)


class ClipDataset(IterableDataset):
    """Random (or, with ``shuffle=False``, all non-overlapping) fixed-length clips of one split.

    Args:
        directory: dataset directory.
        split: ``"train"``, ``"val"`` or ``"all"``.
        clip_len: steps per clip (L).
        fields: per-step shard fields to put in each clip (any per-step array in the shards, e.g. also
            ``raw_action`` or ``behaviour``).
        buffer_episodes: decoded episodes held at once per process (the memory bound, see module doc).
        clips_per_episode: clips drawn from an episode before it leaves the buffer; default
            ``T // clip_len`` (a random-phase non-overlapping tiling). Ignored when ``shuffle=False``.
        seed: seeds the episode order (per epoch) and the clip draws.
        shuffle: shuffle buffer (training) or every non-overlapping clip in order (evaluation).
        epochs: passes over the episodes; ``None`` means endless when shuffling and one pass otherwise.
        rank, world_size: DDP process rank and count; each rank reads a disjoint share of the episodes.
    """

    def __init__(
        self,
        directory: str | Path,
        split: str = "train",
        clip_len: int = 16,
        fields: Sequence[str] = DEFAULT_FIELDS,
        buffer_episodes: int = 8,
        clips_per_episode: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if clip_len < 1:
            raise ConfigError(f"clip_len must be >= 1, got {clip_len}")
        if buffer_episodes < 1:
            raise ConfigError(f"buffer_episodes must be >= 1, got {buffer_episodes}")
        if clips_per_episode is not None and clips_per_episode < 1:
            raise ConfigError(f"clips_per_episode must be >= 1 or None, got {clips_per_episode}")
        if epochs is not None and epochs < 1:
            raise ConfigError(f"epochs must be >= 1 or None, got {epochs}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if "last_frame" in fields or "meta" in fields:
            raise ConfigError("fields must be per-step arrays (not last_frame or meta)")
        self.index = EpisodeIndex(directory, split)
        self.clip_len = int(clip_len)
        self.fields = tuple(fields)
        self.buffer_episodes = int(buffer_episodes)
        self.clips_per_episode = clips_per_episode
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epochs = epochs if epochs is not None else (None if shuffle else 1)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        # episodes long enough for one clip, as positions in self.index
        self.eligible = [i for i, n in enumerate(self.index.lengths) if n >= self.clip_len]
        if not self.eligible:
            raise DatasetError(
                f"{directory}: no {split!r} episode has {clip_len} steps (longest has "
                f"{max(self.index.lengths)}); use a shorter clip_len"
            )
        if len(self.eligible) < self.world_size:
            raise DatasetError(
                f"{directory}: {len(self.eligible)} {split!r} episode(s) of >= {clip_len} steps cannot be "
                f"shared among world_size={self.world_size} ranks"
            )

    # ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at `epoch` (changes the episode order and the clip draws)."""
        self.epoch = int(epoch)

    @property
    def clips_per_epoch(self) -> int:
        """Clips one epoch yields on this rank (all workers together)."""
        mine = self._rank_share(self.eligible)
        if self.shuffle and self.clips_per_episode is not None:
            return len(mine) * self.clips_per_episode
        return int(sum(self.index.lengths[i] // self.clip_len for i in mine))

    def _rank_share(self, episodes: list[int]) -> list[int]:
        return episodes[self.rank :: self.world_size]

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _episode_order(self, epoch: int) -> list[int]:
        """This process's episodes for `epoch`: one shared shuffle, then the rank's and worker's slice."""
        order = list(self.eligible)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(order))
            order = [order[j] for j in perm]
        worker, num_workers = self._worker()
        return self._rank_share(order)[worker::num_workers]

    def _epoch_range(self) -> Iterator[int]:
        if self.epochs is None:
            return itertools.count(self.epoch)
        return iter(range(self.epoch, self.epoch + self.epochs))

    def _load(self, i: int) -> dict[str, Any]:
        path = self.index.paths[i]
        try:
            ep = load_episode(path, fields=self.fields)
        except GaiaGymError:
            raise
        except Exception as e:  # noqa: BLE001 - anything a damaged zip/zlib stream can throw
            raise CorruptShardError(f"corrupt shard {path}: {type(e).__name__}: {e}") from None
        ep.pop("meta", None)
        T = self.index.lengths[i]
        for f in self.fields:
            if len(ep[f]) != T:
                raise DatasetError(f"manifest says {self.index.entries[i]['file']} has {T} steps but its field {f} "
                                   f"has {len(ep[f])} in {path}; rebuild the manifest "
                                   f"(gaia_gym.data.format.rebuild_manifest)")
        return ep

    def _clip(self, ep: dict[str, Any], i: int, start: int) -> dict[str, torch.Tensor]:
        end = start + self.clip_len
        out = {f: _to_tensor(ep[f][start:end]) for f in self.fields}
        out["episode"] = torch.tensor(i, dtype=torch.int64)
        out["start"] = torch.tensor(start, dtype=torch.int64)
        return out

    # ------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        it = self._iter_shuffled() if self.shuffle else self._iter_ordered()
        return it if get_worker_info() is None else _across_workers(it)

    def _iter_ordered(self) -> Iterator[dict[str, torch.Tensor]]:
        L = self.clip_len
        for epoch in self._epoch_range():
            mine = self._episode_order(epoch)
            if not mine:
                return
            for i in mine:
                ep = self._load(i)
                T = self.index.lengths[i]
                for start in range(0, T - L + 1, L):
                    yield self._clip(ep, i, start)
                del ep

    def _starts(self, T: int, rng: np.random.Generator) -> list[int]:
        """Clip starts for one visit of an episode of T steps, in random order."""
        L = self.clip_len
        n = T // L
        phase = int(rng.integers(0, T - n * L + 1))
        starts = [phase + k * L for k in range(n)]
        rng.shuffle(starts)
        k = self.clips_per_episode
        if k is not None:
            if k <= n:
                starts = starts[:k]
            else:  # more clips than fit side by side: add uniformly random (overlapping) ones
                starts += [int(s) for s in rng.integers(0, T - L + 1, size=k - n)]
        return starts

    def _iter_shuffled(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, _ = self._worker()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])

        def stream() -> Iterator[int]:
            for epoch in self._epoch_range():
                mine = self._episode_order(epoch)
                if not mine:  # more workers than episodes: this worker has nothing to read
                    return
                yield from mine

        episodes = stream()
        # buffer slots: [episode position, decoded arrays, remaining clip starts]
        buffer: list[list] = []

        def refill() -> None:
            while len(buffer) < self.buffer_episodes:
                i = next(episodes, None)
                if i is None:
                    return
                buffer.append([i, self._load(i), self._starts(self.index.lengths[i], rng)])

        refill()
        while buffer:
            remaining = np.array([len(slot[2]) for slot in buffer], dtype=np.float64)
            j = int(rng.choice(len(buffer), p=remaining / remaining.sum()))
            i, ep, starts = buffer[j]
            clip = self._clip(ep, i, starts.pop())
            if not starts:
                del buffer[j]  # drop the spent episode before reading the next: <= buffer_episodes held
                del ep
                refill()
            yield clip


def iter_frames(
    directory: str | Path,
    split: str = "val",
    batch_size: int = 64,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Frames of a split, in order (episode by episode, step by step), as uint8 ``(B, H, W, 3)`` batches.

    Batches may span episode boundaries; the last one may be smaller. Reads one shard at a time.
    ``max_frames`` stops after that many frames. For evaluating a frame tokenizer.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    index = EpisodeIndex(directory, split)
    pending: list[np.ndarray] = []
    have = 0
    left = max_frames if max_frames is not None else index.total_steps
    for path in index.paths:
        if left <= 0:
            break
        frames = load_episode(path, fields=["frames"])["frames"][:left]
        left -= len(frames)
        pending.append(frames)
        have += len(frames)
        while have >= batch_size:
            allf = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(allf[:batch_size])
            rest = allf[batch_size:]
            pending = [rest] if len(rest) else []
            have = len(rest)
    if have:
        yield np.ascontiguousarray(np.concatenate(pending))


def has_split(data: Path, split: str) -> bool:
    """Whether `data` has a readable `split`."""
    try:
        EpisodeIndex(data, split=split)
        return True
    except Exception:  # noqa: BLE001 - any reason means "not usable"
        return False


__all__ = ["EpisodeIndex", "ClipDataset", "has_split", "iter_frames", "DEFAULT_FIELDS", "WorkerCorruptShardError",
           "WorkerDatasetError"]
