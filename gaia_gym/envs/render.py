"""Rendering for the GaiaDrive adapters and the pictures: an enlarged imagined frame with a small text
overlay, labelled grids of frames (contact sheets), and a lazily created pygame window for
``render_mode="human"``.

Nothing here imports pygame at module import time: a headless machine only needs it (and a display, or
``SDL_VIDEODRIVER=dummy``) when human rendering is actually used.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

RENDER_SCALE = 4  # 64x64 imagined frames are shown at 256x256


def annotate(frame: np.ndarray, lines: Sequence[str], scale: int = RENDER_SCALE) -> np.ndarray:
    """`frame` (H, W, 3) uint8 enlarged `scale` times (nearest neighbour) with `lines` of text drawn in
    the top-left corner (white on a black outline, readable on any background). Returns a new array."""
    import cv2

    h, w = frame.shape[:2]
    big = cv2.resize(np.ascontiguousarray(frame), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.35 if w * scale < 320 else 0.5
    step = int(32 * size) + 2
    for i, text in enumerate(lines):
        org = (4, step * (i + 1))
        cv2.putText(big, text, org, font, size, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(big, text, org, font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return big


def overlay_lines(steering: float, speed_mps: float, reward: float, step: int) -> list[str]:
    """The overlay text of one imagined row."""
    return [f"steer {steering:+.2f}  {speed_mps:5.1f} m/s", f"r {reward:+.3f}  t {step}"]


def text_strip(text: str, width: int, height: int = 14, scale: float = 0.35) -> np.ndarray:
    """A white (height, width, 3) uint8 strip with `text` in black: labels of picture grids."""
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, min(height - 4, height // 2 + 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
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


class Viewer:
    """A pygame window showing RGB frames at (at most) `fps` frames per second; created on first `show`."""

    def __init__(self, title: str = "GaiaDrive-v0", fps: int = 12) -> None:
        self.title, self.fps = title, fps
        self._window = None
        self._clock = None
        self._pygame = None

    def show(self, rgb: np.ndarray) -> None:
        if self._pygame is None:
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            try:
                import pygame
            except ImportError as e:  # pragma: no cover - pygame-ce is installed with the package's extras
                raise ImportError("render_mode='human' needs pygame: pip install pygame-ce") from e
            self._pygame = pygame
            pygame.display.init()  # the display only: no audio (ALSA) or other subsystems
            pygame.display.set_caption(self.title)
            self._clock = pygame.time.Clock()
        pg = self._pygame
        h, w = rgb.shape[:2]
        if self._window is None or self._window.get_size() != (w, h):
            self._window = pg.display.set_mode((w, h))
        surf = pg.surfarray.make_surface(np.ascontiguousarray(rgb.swapaxes(0, 1)))
        self._window.blit(surf, (0, 0))
        pg.event.pump()
        pg.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        if self._pygame is not None:
            self._pygame.display.quit()
        self._pygame = self._window = self._clock = None
