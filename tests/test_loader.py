"""ClipDataset / EpisodeIndex / iter_frames on small synthetic datasets (no simulator needed).

Every synthetic step encodes its episode and step index: ``reward[t] = 1000 * code + t`` and the
first pixel holds ``(code, t % 256, t // 256)``, where ``code`` is the episode's seed. So a clip's
values prove where it came from and that it is one contiguous run of a single episode.
"""

from __future__ import annotations

import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gaia_gym.data import format as fmt
from gaia_gym.data import loader as loader_mod
from gaia_gym.data.loader import ClipDataset, EpisodeIndex, iter_frames

S = 8  # frame side


def make_dataset(root: Path, lengths: list[int], splits: list[str] | None = None) -> Path:
    """Episodes of the given lengths; episode i has seed/code 10 + i."""
    splits = splits or ["train"] * len(lengths)
    (root / fmt.EPISODES).mkdir(parents=True, exist_ok=True)
    m = fmt.new_manifest({"source": "synthetic", "fps": 10.0, "frame_size": S})
    for i, (T, split) in enumerate(zip(lengths, splits)):
        code = 10 + i
        t = np.arange(T)
        frames = np.zeros((T, S, S, 3), np.uint8)
        frames[:, 0, 0, 0] = code
        frames[:, 0, 0, 1] = t % 256
        frames[:, 0, 0, 2] = t // 256
        term = np.zeros(T, bool)
        term[-1] = True
        arrays = {
            "frames": frames,
            "last_frame": np.zeros((S, S, 3), np.uint8),
            "steering": np.sin(t / 5.0).astype(np.float32),
            "speed_mps": t.astype(np.float32),
            "target_speed_mps": (t + 1).astype(np.float32),
            "raw_action": np.zeros((T, 3), np.float32),
            "reward": (1000.0 * code + t).astype(np.float32),
            "terminated": term,
            "truncated": np.zeros(T, bool),
        }
        meta = {"source": "synthetic", "seed": code, "split": split, "fps": 10.0}
        m["episodes"].append(fmt.write_episode(root / fmt.EPISODES / fmt.episode_filename(i), arrays, meta))
    fmt.write_manifest(root, m)
    return root


def code_of(ds: ClipDataset, clip) -> int:
    return ds.index.entries[int(clip["episode"])]["seed"]


def check_clip(ds: ClipDataset, clip) -> tuple[int, int]:
    """Assert the clip is one contiguous run of its episode; returns (code, start)."""
    L = ds.clip_len
    code, start = code_of(ds, clip), int(clip["start"])
    steps = np.arange(start, start + L)
    assert start + L <= ds.index.lengths[int(clip["episode"])]
    np.testing.assert_array_equal(clip["reward"].numpy(), 1000.0 * code + steps)
    np.testing.assert_array_equal(clip["frames"][:, 0, 0, 0].numpy(), code)
    np.testing.assert_array_equal(clip["frames"][:, 0, 0, 1].numpy(), steps % 256)
    np.testing.assert_array_equal(clip["frames"][:, 0, 0, 2].numpy(), steps // 256)
    np.testing.assert_array_equal(clip["speed_mps"].numpy(), steps)
    return code, start


@pytest.fixture
def ds_dir(tmp_path):
    # 7 train episodes (one shorter than a clip), 3 val
    lengths = [23, 40, 3, 17, 31, 12, 25, 20, 9, 14]
    splits = ["train"] * 7 + ["val"] * 3
    return make_dataset(tmp_path / "ds", lengths, splits)


def expected_tiles(idx: EpisodeIndex, L: int) -> set[tuple[int, int]]:
    return {(e["seed"], s) for e, T in zip(idx.entries, idx.lengths) for s in range(0, T - L + 1, L)}


# ---------------------------------------------------------------------------------------------
def test_episode_index(ds_dir):
    tr, va, al = EpisodeIndex(ds_dir, "train"), EpisodeIndex(ds_dir, "val"), EpisodeIndex(ds_dir, "all")
    assert (len(tr), len(va), len(al)) == (7, 3, 10)
    assert tr.lengths == [23, 40, 3, 17, 31, 12, 25]
    assert va.total_steps == 20 + 9 + 14
    assert al.total_steps == tr.total_steps + va.total_steps
    assert all(p.exists() for p in al.paths)
    assert tr.fps == 10.0
    with pytest.raises(ValueError):
        EpisodeIndex(ds_dir, "test")


def test_episode_index_missing_split(tmp_path):
    d = make_dataset(tmp_path / "d", [10, 10])
    with pytest.raises(fmt.DatasetError, match="no 'val' episodes"):
        EpisodeIndex(d, "val")
    with pytest.raises(fmt.DatasetError):
        EpisodeIndex(tmp_path / "nope", "train")


def test_clip_shapes_and_dtypes(ds_dir):
    ds = ClipDataset(ds_dir, "train", clip_len=5, epochs=1, fields=fmt.PER_STEP_FIELDS)
    clip = next(iter(ds))
    assert clip["frames"].dtype == torch.uint8 and clip["frames"].shape == (5, S, S, 3)
    for f in ("steering", "speed_mps", "target_speed_mps", "reward"):
        assert clip[f].dtype == torch.float32 and clip[f].shape == (5,)
    assert clip["raw_action"].dtype == torch.float32 and clip["raw_action"].shape == (5, 3)
    for f in ("terminated", "truncated"):
        assert clip[f].dtype == torch.bool and clip[f].shape == (5,)
    assert clip["episode"].dtype == torch.int64 and clip["start"].dtype == torch.int64
    # the default collate stacks clips into a batch
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["frames"].shape == (4, 5, S, S, 3) and batch["start"].shape == (4,)


def test_clips_never_cross_episode_boundaries(ds_dir):
    ds = ClipDataset(ds_dir, "train", clip_len=6, epochs=3, buffer_episodes=3, clips_per_episode=7, seed=3)
    n = 0
    for clip in ds:
        check_clip(ds, clip)
        n += 1
    assert n == 3 * 7 * 6  # 6 train episodes are >= 6 steps


def test_only_the_requested_split(ds_dir):
    train_codes = {code_of(ds, c) for ds in [ClipDataset(ds_dir, "train", clip_len=4, epochs=2)] for c in ds}
    val_codes = {code_of(ds, c) for ds in [ClipDataset(ds_dir, "val", clip_len=4, epochs=2)] for c in ds}
    assert train_codes == {10, 11, 13, 14, 15, 16}  # 12 (3 steps) is shorter than a clip
    assert val_codes == {17, 18, 19}
    all_codes = {code_of(ds, c) for ds in [ClipDataset(ds_dir, "all", clip_len=4, shuffle=False)] for c in ds}
    assert all_codes == train_codes | val_codes


def test_seeded_shuffling_is_reproducible(ds_dir):
    def run(seed, epoch=0):
        ds = ClipDataset(ds_dir, "train", clip_len=5, epochs=2, buffer_episodes=2, seed=seed)
        ds.set_epoch(epoch)
        return [(int(c["episode"]), int(c["start"])) for c in ds]

    a = run(0)
    assert a == run(0)
    assert a != run(1)
    assert a != run(0, epoch=5)
    # and the order really is shuffled: not the episode-by-episode order of shuffle=False
    ordered = [(int(c["episode"]), int(c["start"])) for c in ClipDataset(ds_dir, "train", clip_len=5, shuffle=False)]
    assert a[: len(ordered)] != ordered


def test_endless_stream_by_default(ds_dir):
    ds = ClipDataset(ds_dir, "train", clip_len=5, buffer_episodes=2)
    it = iter(ds)
    clips = [next(it) for _ in range(3 * ds.clips_per_epoch)]  # more than one epoch's worth
    for c in clips:
        check_clip(ds, c)


def test_shuffled_epoch_tiles_each_episode(ds_dir):
    """One shuffled epoch: T // L non-overlapping clips per episode, at a random phase."""
    L = 5
    ds = ClipDataset(ds_dir, "train", clip_len=L, epochs=1, buffer_episodes=3, seed=7)
    clips = [check_clip(ds, c) for c in ds]
    assert len(clips) == ds.clips_per_epoch
    per_ep: dict[int, list[int]] = {}
    for code, start in clips:
        per_ep.setdefault(code, []).append(start)
    for code, starts in per_ep.items():
        T = ds.index.lengths[code - 10]
        assert len(starts) == T // L
        s = sorted(starts)
        assert all(b - a == L for a, b in zip(s, s[1:]))  # non-overlapping, adjacent tiling


def test_ordered_covers_every_clip_once(ds_dir):
    L = 4
    ds = ClipDataset(ds_dir, "train", clip_len=L, shuffle=False)
    got = [check_clip(ds, c) for c in ds]
    assert len(got) == len(set(got)) == ds.clips_per_epoch
    assert set(got) == expected_tiles(ds.index, L)
    assert got == sorted(got)  # episode by episode, in order
    assert [check_clip(ds, c) for c in ds] == got  # deterministic


def test_dataloader_two_workers_no_duplicates(ds_dir):
    L = 4
    ds = ClipDataset(ds_dir, "train", clip_len=L, shuffle=False)
    got = []
    for b in DataLoader(ds, batch_size=3, num_workers=2):
        got += [(code_of(ds, {"episode": e}), int(s)) for e, s in zip(b["episode"], b["start"])]
    assert len(got) == len(set(got))
    assert set(got) == expected_tiles(ds.index, L)
    # shuffled, one epoch: the workers read disjoint episodes, so still no duplicates
    ds = ClipDataset(ds_dir, "train", clip_len=L, epochs=1, buffer_episodes=2)
    got = [(int(e), int(s)) for b in DataLoader(ds, batch_size=3, num_workers=2)
           for e, s in zip(b["episode"], b["start"])]
    assert len(got) == len(set(got)) == ds.clips_per_epoch


def test_ddp_ranks_are_disjoint(ds_dir):
    L = 4
    shares = []
    for rank in range(2):
        ds = ClipDataset(ds_dir, "train", clip_len=L, epochs=1, rank=rank, world_size=2, seed=1)
        shares.append({code_of(ds, c) for c in ds})
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {10, 11, 13, 14, 15, 16}
    with pytest.raises(ValueError):
        ClipDataset(ds_dir, "train", rank=2, world_size=2)


def test_buffer_bound(ds_dir, monkeypatch):
    """At most `buffer_episodes` decoded episodes are alive at any time; each is read once per epoch."""
    live, peak, loads = [0], [0], Counter()

    class Tracked(dict):
        pass

    real = loader_mod.load_episode

    def tracking_load(path, fields=None):
        ep = Tracked(real(path, fields))
        loads[Path(path).name] += 1
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(ep, lambda: live.__setitem__(0, live[0] - 1))
        return ep

    monkeypatch.setattr(loader_mod, "load_episode", tracking_load)
    for buf in (1, 2, 4):
        live[0] = peak[0] = 0
        loads.clear()
        ds = ClipDataset(ds_dir, "train", clip_len=3, epochs=2, buffer_episodes=buf, seed=buf)
        seq = []
        for c in ds:
            seq.append(int(c["episode"]))
            assert live[0] <= buf
        assert peak[0] == buf
        assert sorted(loads.values()) == [2] * 7  # all 7 train episodes have >= 3 steps; 2 epochs
        runs = 1 + sum(a != b for a, b in zip(seq, seq[1:]))
        if buf == 1:
            assert runs == 14  # one episode at a time: clips come episode by episode
        else:
            assert runs > 14  # the buffer interleaves episodes


def test_clips_per_episode_and_too_long_clips(ds_dir):
    ds = ClipDataset(ds_dir, "val", clip_len=9, clips_per_episode=5, epochs=1)
    got = Counter(code_of(ds, c) for c in ds)
    assert got == {17: 5, 18: 5, 19: 5}  # more than fit side by side: random extra starts
    with pytest.raises(fmt.DatasetError, match="clip_len"):
        ClipDataset(ds_dir, "val", clip_len=21)


def test_iter_frames(ds_dir):
    idx = EpisodeIndex(ds_dir, "val")
    batches = list(iter_frames(ds_dir, "val", batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 10, 10, 3]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (S, S, 3) for b in batches)
    allf = np.concatenate(batches)
    codes = np.concatenate([np.full(T, e["seed"]) for e, T in zip(idx.entries, idx.lengths)])
    steps = np.concatenate([np.arange(T) for T in idx.lengths])
    np.testing.assert_array_equal(allf[:, 0, 0, 0], codes)
    np.testing.assert_array_equal(allf[:, 0, 0, 1], steps)
    assert sum(len(b) for b in iter_frames(ds_dir, "val", batch_size=4, max_frames=22)) == 22
