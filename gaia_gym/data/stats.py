"""Dataset statistics, a contact sheet, distribution plots, and a full read-back check.

`dataset_stats` reads the shards one at a time, and only their small per-step fields (the frames of
the few episodes shown on the contact sheet are the only frames decoded), so it runs in constant
memory on any dataset size. `verify_dataset` decodes every shard completely to prove it reads back.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from gaia_gym.data.format import (
    EPISODES,
    FIELD_DTYPES,
    CorruptShardError,
    DatasetError,
    atomic_write_bytes,
    atomic_write_json,
    load_episode,
    read_manifest,
    validate_episode,
)
from gaia_gym.errors import ConfigError

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HIST_BINS = 10
SCALAR_FIELDS = ("steering", "speed_mps", "target_speed_mps", "reward", "terminated", "truncated")

# contact sheet layout (pixels) and colours (RGB)
SHEET_ROWS = 8
SHEET_COLS = 8
TILE_TARGET = 128  # frames are upscaled (nearest) by an integer factor to about this size
SEP = 2
MARGIN = 10
TITLE_H = 30
HEADER_H = 20
CAPTION_H = 22
BG = (24, 26, 30)
SEP_COLOR = (58, 62, 70)
TEXT = (225, 228, 232)
DIM = (150, 156, 166)
SPLIT_COLOR = {"train": (120, 200, 130), "val": (245, 170, 80)}
GAUGE_LEFT = (90, 160, 250)
GAUGE_RIGHT = (250, 110, 100)
FONT = cv2.FONT_HERSHEY_SIMPLEX

# distributions figure
DIST_FIGSIZE = (16.0, 3.6)
DIST_DPI = 100


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def _distribution(x: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    x = np.asarray(x, dtype=np.float64)
    counts, _ = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)
    pct = np.percentile(x, PERCENTILES)
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def _count_by(entries: list[dict], key: str, fps: float | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in entries:
        k = e.get("meta", {}).get(key)
        if k is None:
            continue
        d = out.setdefault(str(k), {"episodes": 0, "steps": 0})
        d["episodes"] += 1
        d["steps"] += int(e["steps"])
    for d in out.values():
        d["driving_time_s"] = d["steps"] / fps if fps else None
    return out


def _mode_names(modes: Any) -> dict[int, str]:
    if isinstance(modes, dict):
        return {int(k): str(v) for k, v in modes.items()}
    return {i: str(v) for i, v in enumerate(modes)}


def dataset_stats(
    directory: str | Path,
    sheet: str | Path | None = None,
    json_path: str | Path | None = None,
    distributions: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Statistics of a dataset directory; also writes the contact sheet and distribution plots.

    Args:
        directory: the dataset directory.
        sheet: contact sheet PNG path (default ``DIR/contact_sheet.png``).
        json_path: also write the returned dict here as JSON.
        distributions: distribution plots PNG path (default ``DIR/distributions.png``).
        progress: show a progress bar over the shards.

    Returns a JSON-serialisable dict: counts (overall, per split, per source and scenario), driving
    time, distributions of steering / speed / target speed, rewards and returns, terminations,
    behaviour-mode fractions (when the shards record them) and the paths of the written images.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    entries = sorted(manifest.get("episodes", []), key=lambda e: e["file"])
    if not entries:
        raise DatasetError(f"{directory} holds no episodes")
    fps = manifest.get("fps") or entries[0].get("meta", {}).get("fps")
    fps = float(fps) if fps else None

    cols: dict[str, list[np.ndarray]] = {f: [] for f in ("steering", "speed_mps", "target_speed_mps")}
    returns, lengths, splits_of = [], [], []
    reward_sum = 0.0
    term_steps = trunc_steps = term_eps = trunc_eps = open_eps = 0
    mode_steps: dict[str, int] = {}
    behaviour_steps = 0
    for e in tqdm(entries, desc="stats", unit="shard", disable=not progress):
        modes = e.get("meta", {}).get("behaviour_modes")
        fields = list(SCALAR_FIELDS) + (["behaviour"] if modes is not None else [])
        ep = load_episode(directory / e["file"], fields=fields)
        for f in cols:
            cols[f].append(np.asarray(ep[f], dtype=np.float32))
        r = float(np.sum(ep["reward"], dtype=np.float64))
        returns.append(r)
        reward_sum += r
        lengths.append(len(ep["reward"]))
        splits_of.append(e.get("split", "train"))
        term, trunc = np.asarray(ep["terminated"]), np.asarray(ep["truncated"])
        term_steps += int(term.sum())
        trunc_steps += int(trunc.sum())
        term_eps += bool(term.any())
        trunc_eps += bool(trunc.any()) and not bool(term.any())
        open_eps += not (bool(term[-1]) or bool(trunc[-1]))
        if modes is not None:
            names = _mode_names(modes)
            ids, counts = np.unique(np.asarray(ep["behaviour"]), return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist()):
                name = names.get(int(i), str(i))
                mode_steps[name] = mode_steps.get(name, 0) + int(c)
            behaviour_steps += len(ep["behaviour"])
        del ep

    data = {f: np.concatenate(v) for f, v in cols.items()}
    steps = int(sum(lengths))
    vmax = float(max(data["speed_mps"].max(), data["target_speed_mps"].max(), 1e-6))
    speed_edges = np.linspace(0.0, _nice_ceil(vmax), HIST_BINS + 1)
    steer_edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    rets = np.asarray(returns)

    splits: dict[str, dict] = {}
    for s in sorted(set(splits_of)):
        n = [L for L, sp in zip(lengths, splits_of) if sp == s]
        splits[s] = {"episodes": len(n), "steps": int(sum(n)), "driving_time_s": sum(n) / fps if fps else None}

    frame_size = manifest.get("frame_size") or entries[0].get("meta", {}).get("frame_size")
    stats: dict[str, Any] = {
        "directory": str(directory),
        "source": manifest.get("source"),
        "fps": fps,
        "frame_size": frame_size,
        "episodes": len(entries),
        "steps": steps,
        "driving_time_s": steps / fps if fps else None,
        "bytes": int(sum(int(e.get("bytes", 0)) for e in entries)),
        "splits": splits,
        "by_source": _count_by(entries, "source", fps),
        "by_scenario": _count_by(entries, "scenario", fps),
        "episode_steps": {"mean": float(np.mean(lengths)), "min": int(min(lengths)), "max": int(max(lengths))},
        "steering": _distribution(data["steering"], steer_edges),
        "speed_mps": _distribution(data["speed_mps"], speed_edges),
        "target_speed_mps": _distribution(data["target_speed_mps"], speed_edges),
        "reward": {
            "sum": float(reward_sum),
            "per_step_mean": float(reward_sum / steps),
            "return_mean": float(rets.mean()),
            "return_std": float(rets.std()),
            "return_min": float(rets.min()),
            "return_max": float(rets.max()),
        },
        "terminated_steps": term_steps,
        "truncated_steps": trunc_steps,
        "terminated_episodes": term_eps,  # ended by a true MDP end
        "truncated_episodes": trunc_eps,  # ended by a time limit / end of log (and not terminated)
        "open_episodes": open_eps,  # last step carries neither flag
        "behaviour": None,
    }
    if behaviour_steps:
        stats["behaviour"] = {
            "steps": behaviour_steps,
            "fractions": {k: v / behaviour_steps for k, v in sorted(mode_steps.items(), key=lambda kv: -kv[1])},
        }

    sheet = Path(sheet) if sheet else directory / "contact_sheet.png"
    distributions = Path(distributions) if distributions else directory / "distributions.png"
    write_contact_sheet(directory, manifest, entries, sheet)
    write_distributions(stats, data, rets, distributions)
    stats["files"] = {"contact_sheet": str(sheet), "distributions": str(distributions)}
    if json_path:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, stats)
    return stats


def _nice_ceil(x: float) -> float:
    """Round up to 1, 2 or 5 times a power of ten (a readable histogram range)."""
    if x <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= x:
            return float(m * p)
    return float(10 * p)


# ----------------------------------------------------------------------------------------------
# contact sheet
# ----------------------------------------------------------------------------------------------
def _pick(n: int, k: int) -> list[int]:
    if k <= 0 or n == 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def sheet_episodes(entries: list[dict], rows: int = SHEET_ROWS) -> list[dict]:
    """Up to `rows` entries spread evenly over train and val (val gets about a quarter of the rows)."""
    train = [e for e in entries if e.get("split", "train") != "val"]
    val = [e for e in entries if e.get("split", "train") == "val"]
    rows = min(rows, len(entries))
    n_val = min(len(val), max(1, rows // 4)) if val else 0
    n_train = min(len(train), rows - n_val)
    n_val = min(len(val), rows - n_train)
    return [train[i] for i in _pick(len(train), n_train)] + [val[i] for i in _pick(len(val), n_val)]


def _text(img: np.ndarray, s: str, x: int, y: int, color, scale: float = 0.38) -> None:
    cv2.putText(img, s, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def _text_w(s: str, scale: float = 0.38) -> int:
    return cv2.getTextSize(s, FONT, scale, 1)[0][0]


def sheet_layout(frame_hw: tuple[int, int], rows: int, cols: int = SHEET_COLS) -> dict[str, int]:
    """Pixel geometry of a contact sheet with `rows` episodes of `cols` frames of size `frame_hw`."""
    h, w = frame_hw
    scale = max(1, TILE_TARGET // max(h, w))
    tw, th = w * scale, h * scale
    row_h = HEADER_H + th + CAPTION_H
    width = 2 * MARGIN + cols * tw + (cols - 1) * SEP
    height = TITLE_H + MARGIN + rows * row_h + (rows - 1) * SEP + MARGIN
    return {"scale": scale, "tile_w": tw, "tile_h": th, "row_h": row_h, "width": width, "height": height}


def write_contact_sheet(directory: Path, manifest: dict, entries: list[dict], path: Path,
                        rows: int = SHEET_ROWS, cols: int = SHEET_COLS) -> Path:
    """A grid: one row per sampled episode, `cols` frames evenly spaced in time, speed/steering below."""
    picked = sheet_episodes(entries, rows)
    episodes = []
    for e in picked:  # one row's shard at a time; only the shown frames are kept
        ep = load_episode(directory / e["file"], fields=["frames", "speed_mps", "steering"])
        T = len(ep["frames"])
        ts = sorted(set(np.linspace(0, T - 1, min(cols, T)).round().astype(int).tolist()))
        episodes.append((e, T, ts, ep["frames"][ts].copy(), ep["speed_mps"][ts], ep["steering"][ts]))
        del ep
    frame_hw = episodes[0][3].shape[1:3]
    g = sheet_layout(frame_hw, len(episodes), cols)
    img = np.empty((g["height"], g["width"], 3), np.uint8)
    img[:] = BG

    n_steps = int(sum(int(e["steps"]) for e in entries))
    fps = manifest.get("fps")
    title = f"{directory.name}  |  {manifest.get('source', '?')}  |  {len(entries)} episodes, {n_steps} steps"
    if fps:
        title += f" ({_duration(n_steps / float(fps))} at {float(fps):g} fps)"
    _text(img, title, MARGIN, 20, TEXT, 0.5)
    hint = "below each frame: speed (m/s), steering command (-1 left .. +1 right)"
    if g["width"] - 2 * MARGIN - _text_w(title, 0.5) > _text_w(hint, 0.33) + 20:
        _text(img, hint, g["width"] - MARGIN - _text_w(hint, 0.33), 20, DIM, 0.33)

    tw, th = g["tile_w"], g["tile_h"]
    for r, (e, T, ts, frames, speeds, steers) in enumerate(episodes):
        y0 = TITLE_H + MARGIN + r * (g["row_h"] + SEP)
        if r > 0:
            img[y0 - SEP : y0, MARGIN : g["width"] - MARGIN] = SEP_COLOR
        meta = e.get("meta", {})
        split = e.get("split", "train")
        x = MARGIN
        name = Path(e["file"]).name
        _text(img, name, x, y0 + 14, TEXT, 0.4)
        x += _text_w(name, 0.4) + 10
        _text(img, split, x, y0 + 14, SPLIT_COLOR.get(split, TEXT), 0.4)
        x += _text_w(split, 0.4) + 10
        bits = [f"seed {e.get('seed', meta.get('seed', '?'))}", f"{T} steps", f"return {e.get('return', 0.0):.1f}"]
        for k in ("scenario", "source"):
            if meta.get(k) and (k != "source" or meta[k] != manifest.get("source")):
                bits.append(str(meta[k]))
        if meta.get("clean"):
            bits.append("clean expert")
        if e.get("terminated"):
            bits.append("terminated")
        _text(img, "   ".join(bits), x, y0 + 14, DIM, 0.38)
        for c, (t, fr, v, s) in enumerate(zip(ts, frames, speeds, steers)):
            x0 = MARGIN + c * (tw + SEP)
            fy = y0 + HEADER_H
            img[fy : fy + th, x0 : x0 + tw] = cv2.resize(fr, (tw, th), interpolation=cv2.INTER_NEAREST)
            if c > 0:
                img[fy : fy + th + CAPTION_H, x0 - SEP : x0] = SEP_COLOR
            label = f"t={t}"  # step index, on a translucent badge in the frame's corner
            bw = _text_w(label, 0.33) + 6
            img[fy : fy + 13, x0 : x0 + bw] = (img[fy : fy + 13, x0 : x0 + bw] * 0.35).astype(np.uint8)
            _text(img, label, x0 + 3, fy + 10, TEXT, 0.33)
            cy = fy + th + 12
            _text(img, f"{float(v):.1f} m/s", x0 + 3, cy, TEXT, 0.36)
            st = f"{float(s):+.2f}"
            _text(img, st, x0 + tw - 3 - _text_w(st, 0.36), cy, GAUGE_LEFT if s < 0 else GAUGE_RIGHT, 0.36)
            # steering gauge: a track across the tile, centre tick, fill from centre to the command
            gy, gx0, gx1 = cy + 4, x0 + 3, x0 + tw - 3
            mid = (gx0 + gx1) // 2
            img[gy : gy + 3, gx0:gx1] = SEP_COLOR
            end = int(round(mid + float(np.clip(s, -1, 1)) * (gx1 - gx0) / 2))
            lo, hi = sorted((mid, end))
            img[gy : gy + 3, lo : max(hi, lo + 1)] = GAUGE_LEFT if s < 0 else GAUGE_RIGHT
            img[gy - 1 : gy + 4, mid : mid + 1] = TEXT
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ConfigError(f"could not encode the contact sheet {path}")
    atomic_write_bytes(path, lambda f: f.write(buf.tobytes()))
    return path


# ----------------------------------------------------------------------------------------------
# distribution plots
# ----------------------------------------------------------------------------------------------
def write_distributions(stats: dict, data: dict[str, np.ndarray], returns: np.ndarray, path: Path) -> Path:
    """Histograms of steering, speed (measured and target), episode return and behaviour modes/lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=DIST_FIGSIZE, dpi=DIST_DPI)
    try:
        ax = axes[0]
        ax.hist(data["steering"], bins=np.linspace(-1, 1, 41), color="#4c8bf5", alpha=0.9)
        ax.set_title("steering command")
        ax.set_xlabel("steering (-1 left, +1 right)")
        ax.set_ylabel("steps")
        ax = axes[1]
        edges = np.linspace(0, stats["speed_mps"]["histogram"]["edges"][-1], 41)
        ax.hist(data["speed_mps"], bins=edges, color="#2ca02c", alpha=0.75, label="measured")
        ax.hist(data["target_speed_mps"], bins=edges, histtype="step", color="#d62728", lw=1.5, label="target")
        ax.set_title("speed")
        ax.set_xlabel("m/s")
        ax.legend(frameon=False)
        ax = axes[2]
        ax.hist(returns, bins=min(30, max(5, len(returns) // 3)), color="#9467bd")
        ax.set_title(f"episode return (mean {returns.mean():.1f})")
        ax.set_xlabel("return")
        ax.set_ylabel("episodes")
        ax = axes[3]
        if stats.get("behaviour"):
            fr = stats["behaviour"]["fractions"]
            ax.bar(list(fr), [100 * v for v in fr.values()], color="#ff7f0e")
            ax.set_title("behaviour modes")
            ax.set_ylabel("% of steps")
            ax.tick_params(axis="x", labelrotation=30)
        else:
            ax.set_title("episode length")
            ax.set_xlabel("steps")
            ax.set_ylabel("episodes")
            lengths = [stats["episode_steps"]["min"], stats["episode_steps"]["max"]]
            ax.text(0.5, 0.5, f"{lengths[0]} .. {lengths[1]} steps\nmean {stats['episode_steps']['mean']:.1f}",
                    ha="center", va="center", transform=ax.transAxes)
        for ax in axes:
            ax.spines[["top", "right"]].set_visible(False)
        fig.suptitle(f"{Path(stats['directory']).name}: {stats['episodes']} episodes, {stats['steps']} steps",
                     fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DIST_DPI)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# text summary
# ----------------------------------------------------------------------------------------------
def _duration(s: float | None) -> str:
    if s is None:
        return "unknown (no fps)"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _bars(hist: dict, fmt: str, width: int = 32) -> list[str]:
    counts = hist["counts"]
    edges = hist["edges"]
    total = max(1, sum(counts))
    top = max(1, max(counts))
    blocks = " ▏▎▍▌▋▊▉█"
    lines = []
    for i, c in enumerate(counts):
        units = c / top * width
        full = int(units)
        frac = int(round((units - full) * 8))
        bar = "█" * full + (blocks[frac] if frac and full < width else "")
        if c and not bar:
            bar = "▏"
        lo, hi = format(edges[i], fmt), format(edges[i + 1], fmt)
        close = "]" if i == len(counts) - 1 else ")"
        lines.append(f"    [{lo}, {hi}{close} {bar:<{width}} {c:>8d} {100 * c / total:5.1f}%")
    return lines


def _dist_line(name: str, d: dict, fmt: str) -> str:
    p = d["percentiles"]
    return (f"  {name:<17} mean {d['mean']:{fmt}}  std {d['std']:{fmt.lstrip('+')}}  "
            + "  ".join(f"{k} {v:{fmt}}" for k, v in p.items()))


def format_stats(stats: dict) -> str:
    """A readable multi-line summary of `dataset_stats`' result."""
    L: list[str] = []
    fs = stats.get("frame_size")
    fs = f"{fs}x{fs}" if isinstance(fs, int) else (f"{fs[0]}x{fs[1]}" if fs else "?")
    L.append(f"dataset {stats['directory']}")
    L.append(f"  source {stats.get('source') or '?'}   frames {fs}   fps {stats.get('fps') or '?'}   "
             f"{stats['bytes'] / 1e6:.1f} MB on disk")
    L.append(f"  {stats['episodes']} episodes, {stats['steps']} steps, "
             f"driving time {_duration(stats['driving_time_s'])}   (episode length {stats['episode_steps']['min']}..{stats['episode_steps']['max']}, "
             f"mean {stats['episode_steps']['mean']:.1f})")
    for name, d in stats["splits"].items():
        L.append(f"    {name:<6} {d['episodes']:>6} episodes {d['steps']:>9} steps   {_duration(d['driving_time_s'])}")
    for key, title in (("by_source", "source"), ("by_scenario", "scenario")):
        groups = stats.get(key) or {}
        if len(groups) > 1 or key == "by_scenario" and groups:
            L.append(f"  by {title}:")
            for name, d in groups.items():
                L.append(f"    {name:<20} {d['episodes']:>6} episodes {d['steps']:>9} steps")
    L.append("")
    L.append("distributions (per step):")
    L.append(_dist_line("steering", stats["steering"], "+.3f"))
    L.extend(_bars(stats["steering"]["histogram"], "+.1f"))
    L.append(_dist_line("speed_mps", stats["speed_mps"], ".2f"))
    L.extend(_bars(stats["speed_mps"]["histogram"], "5.1f"))
    L.append(_dist_line("target_speed_mps", stats["target_speed_mps"], ".2f"))
    L.append("")
    r = stats["reward"]
    L.append(f"reward: total {r['sum']:.1f}, per step {r['per_step_mean']:.3f}; episode return mean "
             f"{r['return_mean']:.1f} +- {r['return_std']:.1f} (min {r['return_min']:.1f}, max {r['return_max']:.1f})")
    L.append(f"episode ends: {stats['terminated_episodes']} terminated, {stats['truncated_episodes']} truncated, "
             f"{stats['open_episodes']} with no end flag   (flagged steps: {stats['terminated_steps']} terminated, "
             f"{stats['truncated_steps']} truncated)")
    if stats.get("behaviour"):
        b = stats["behaviour"]
        L.append(f"behaviour modes ({b['steps']} steps):")
        for name, f in b["fractions"].items():
            L.append(f"    {name:<12} {'█' * int(round(f * 40)):<40} {100 * f:5.1f}%")
    files = stats.get("files") or {}
    if files:
        L.append("")
        L.append(f"contact sheet: {files.get('contact_sheet')}")
        L.append(f"distributions: {files.get('distributions')}")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------
def verify_dataset(directory: str | Path, progress: bool = True) -> int:
    """Decode every shard completely; return how many read back intact.

    Raises `CorruptShardError` naming the first (in file order) shard that is missing, truncated,
    corrupt, misses a field or has inconsistent lengths or dtypes, and `DatasetError` when a shard
    disagrees with the manifest (step count or split). Shards on disk that the manifest does not list
    (a collection killed between writing a shard and updating the manifest) are checked too, with a
    warning: rerunning the collection indexes them.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    listed = {e["file"]: e for e in manifest.get("episodes", [])}
    on_disk = {f"{EPISODES}/{p.name}" for p in (directory / EPISODES).glob("ep_*.npz")}
    files = sorted(set(listed) | on_disk)
    unlisted = sorted(on_disk - set(listed))
    n = 0
    for f in tqdm(files, desc="verify", unit="shard", disable=not progress):
        path = directory / f
        try:
            ep = load_episode(path)
            validate_episode(ep, where=str(path))
        except CorruptShardError:
            raise
        except Exception as e:  # anything a damaged zip/zlib stream can throw
            raise CorruptShardError(f"corrupt shard {path}: {type(e).__name__}: {e}") from None
        for k, dt in FIELD_DTYPES.items():
            if ep[k].dtype != dt:
                raise CorruptShardError(f"shard {path}: field {k} is {ep[k].dtype}, expected {np.dtype(dt)}")
        T = len(ep["frames"])
        e = listed.get(f)
        if e is not None:
            if int(e["steps"]) != T:
                raise DatasetError(f"manifest says {f} has {e['steps']} steps but the shard has {T}; "
                                   f"rebuild the manifest (gaia_gym.data.format.rebuild_manifest)")
            if e.get("split", "train") != ep["meta"].get("split", "train"):
                raise DatasetError(f"manifest puts {f} in split {e.get('split')!r} but the shard says "
                                   f"{ep['meta'].get('split')!r}; rebuild the manifest")
        del ep
        n += 1
    if unlisted:
        warnings.warn(f"{directory}: {len(unlisted)} shard(s) not in the manifest ({', '.join(unlisted[:3])}"
                      f"{', ...' if len(unlisted) > 3 else ''}); rerun the collection to index them",
                      stacklevel=2)
    total = manifest.get("num_steps")
    if total is not None and int(total) != sum(int(e["steps"]) for e in listed.values()):
        raise DatasetError(f"manifest num_steps {total} != sum of its episodes' steps; rebuild the manifest")
    return n


__all__ = ["dataset_stats", "format_stats", "verify_dataset", "write_contact_sheet", "write_distributions",
           "sheet_layout", "sheet_episodes"]
