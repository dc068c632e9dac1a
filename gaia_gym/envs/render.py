"""Rendering for the GaiaDrive adapters: an enlarged imagined frame with the HUD (steering, speed,
reward, step) drawn at the output resolution, and a lazily created pygame window for
``render_mode="human"``. Contact sheets, text strips and video writing live in `gaia_gym.media`.

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
    the top-left corner at the enlarged resolution (white on a 1-pixel black outline, readable on any
    background). Returns a new array.

    The outline is the text's own mask grown by one pixel, not the text drawn again with a thicker pen:
    OpenCV >= 5 advances thick glyphs further than thin ones, so a thick black copy drifts to the right
    of the white text and the HUD smears."""
    import cv2

    h, w = frame.shape[:2]
    big = cv2.resize(np.ascontiguousarray(frame), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if not lines:
        return big
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.35 if w * scale < 320 else 0.5
    step = int(32 * size) + 2
    box_h = min(big.shape[0], step * len(lines) + step // 2 + 2)  # the HUD's rows (text, descenders, outline)
    mask = np.zeros((box_h, big.shape[1]), np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(mask, text, (4, step * (i + 1)), font, size, 255, 1, cv2.LINE_AA)
    ring = cv2.dilate(mask, np.ones((3, 3), np.uint8))[..., None].astype(np.float32) / 255
    ink = mask[..., None].astype(np.float32) / 255
    hud = big[:box_h].astype(np.float32) * (1 - ring)  # black outline (and under the text)
    big[:box_h] = np.rint(hud * (1 - ink) + 255 * ink).astype(np.uint8)  # white text, anti-aliased
    return big


def overlay_lines(steering: float, speed_mps: float, reward: float, step: int) -> list[str]:
    """The overlay text of one imagined row."""
    return [f"steer {steering:+.2f}  {speed_mps:5.1f} m/s", f"r {reward:+.3f}  t {step}"]


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
