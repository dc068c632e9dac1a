"""Pictures and videos: labelled grids of frames (contact sheets), text strips, GIF/MP4 writing.

Every picture or video gaia_gym writes goes through here; writes are atomic (a temp file renamed over
the target), so an interrupted run never leaves half a GIF behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from gaia_gym.errors import ConfigError

VIDEO_SUFFIXES = (".gif", ".mp4", ".m4v", ".mov")


def text_strip(text: str, width: int, height: int = 14, scale: float = 0.35) -> np.ndarray:
    """A white (height, width, 3) uint8 strip with `text` in black: labels of picture grids."""
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, min(height - 4, height // 2 + 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return strip


def grid_image(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str], scale: int = 2,
               gap: int = 2, label_w: int = 64) -> np.ndarray:
    """Tiles (H, W, 3) uint8 in rows, upscaled `scale`x, with labels left of rows and above columns."""
    h, w = rows[0][0].shape[:2]
    th, tw = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    width = label_w + ncol * (tw + gap)
    parts = [np.concatenate([text_strip("", label_w)] +
                            [np.concatenate([text_strip(c, tw), np.full((14, gap, 3), 255, np.uint8)], 1)
                             for c in (col_labels + [""] * ncol)[:ncol]], 1)]
    for r, label in zip(rows, row_labels):
        tiles = [np.kron(t, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else t for t in r]
        tiles += [np.full((th, tw, 3), 255, np.uint8)] * (ncol - len(tiles))
        line = [text_strip(label, label_w, th)]
        for t in tiles:
            line += [t, np.full((th, gap, 3), 255, np.uint8)]
        parts += [np.concatenate(line, 1), np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(parts, 0)


def label_tiles(grid: np.ndarray, row: int, names: Sequence[str], tile: int, gap: int = 2, label_w: int = 64,
                header: int = 14) -> np.ndarray:
    """Write `names` into the top-left corner of the tiles of grid row `row` (a `grid_image`), in place."""
    import cv2

    y0 = header + row * (tile + gap) + 10
    for i, name in enumerate(names):
        cv2.putText(grid, name, (label_w + i * (tile + gap) + 2, y0), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return grid


def rig_mosaic(frames: np.ndarray, yaws_deg: Sequence[float], gap: int = 2, upright: bool = True) -> np.ndarray:
    """A camera rig's views (V, H, W, 3) laid out around the car: a 3x3 grid with the camera looking ahead
    (yaw 0) at the top, left (+90) on the left, behind (180) at the bottom, right (-90) on the right and a
    dark centre. `upright`: each view turned by its yaw so that the car points up in every tile (the rear
    view's car at its top edge, next to the centre), so the tiles read as one map around the car. Yaws that
    do not fall on distinct slots: the views side by side instead, as rendered."""
    frames = np.asarray(frames)
    V, H, W = frames.shape[:3]
    slots = {0: (0, 1), 90: (1, 0), 180: (2, 1), 270: (1, 2)}
    keys = [int(round((float(y) % 360) / 90.0)) % 4 * 90 for y in yaws_deg]
    if len(yaws_deg) != V or len(set(keys)) != V:
        return np.concatenate([np.pad(f, ((0, 0), (0, gap), (0, 0))) for f in frames], axis=1)[:, : V * (W + gap) - gap]
    out = np.full((3 * H + 2 * gap, 3 * W + 2 * gap, 3), 24, np.uint8)
    for f, k in zip(frames, keys):
        r, c = slots[k]
        if upright and H == W:
            f = np.rot90(f, k // 90)
        out[r * (H + gap) : r * (H + gap) + H, c * (W + gap) : c * (W + gap) + W] = f
    return out


def rig_mosaics(frames: np.ndarray, yaws_deg: Sequence[float]) -> np.ndarray:
    """Frames (..., H, W, 3) as they are without `yaws_deg` (one camera); a rig's frames (..., V, H, W, 3)
    as their `rig_mosaic`s (..., H', W', 3)."""
    frames = np.asarray(frames)
    if not len(yaws_deg):
        return frames
    flat = frames.reshape(-1, *frames.shape[-4:])
    m = np.stack([rig_mosaic(f, yaws_deg) for f in flat])
    return m.reshape(*frames.shape[:-4], *m.shape[1:])


def write_video(path: str | Path, frames, fps: float) -> Path:
    """Frames (T, H, W, 3) uint8 as a GIF or MP4 (by the suffix), written atomically."""
    import imageio.v3 as iio

    path = Path(path)
    frames = np.asarray(frames)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"{path}: write a .gif or .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, duration=1000.0 / fps, loop=0)
        else:  # pad to multiples of 16 (the codec's macro blocks) with white
            ph, pw = -frames.shape[1] % 16, -frames.shape[2] % 16
            frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
            iio.imwrite(tmp, frames, fps=fps, codec="libx264")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_gif(frames, path: str | Path, fps: float) -> Path:
    """`write_video` for a list of frames into a .gif."""
    return write_video(path, np.stack(list(frames)), fps)


__all__ = ["grid_image", "label_tiles", "rig_mosaic", "rig_mosaics", "text_strip", "write_gif", "write_video"]


# ---------------------------------------------------------------------------------------------
# plots (matplotlib, file-only backend)
# ---------------------------------------------------------------------------------------------
def subplots(*args, **kwargs):
    """matplotlib's `subplots` with the file-only backend (Agg): (figure, axes), for plots written to files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out `fig`, write it to `path` atomically (the format by the suffix; parent directories
    created), close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


__all__ += ["save_figure", "subplots"]
