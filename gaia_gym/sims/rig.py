"""A camera rig in CarRacing-v3: several views rendered by the simulator's own renderer from one state.

CarRacing's camera is a top-down view that follows the car: the world is rotated so that the car's
heading points up, scaled by the zoom, and translated so that the car sits at a fixed *anchor* of the
window (its own camera: centred horizontally, 3/4 of the way down). A rig camera is the same renderer with
the rotation offset by a **yaw** about the car (``yaw_deg``: +90 looks to the car's left) and its own
anchor, so every view comes from the simulator itself (road polygons, grass, the car), not from cropping
one image. The default rig (`RIG4`):

| camera | yaw | sees (beyond the car) |
|--------|-----|-----------------------|
| front  | 0   | the road ahead (the single-camera dataset's frame, pixel for pixel) |
| left   | +90 | the car's left side |
| rear   | 180 | the road behind |
| right  | -90 | the car's right side |

**Overlap geometry.** All views share the zoom and the car's position, so a point on the ground seen by
two cameras maps between their frames by an exact affine map: undo the frame's scaling to window pixels,
rotate by the yaw difference about the car's anchor, scale back (`view_to_view`). CarRacing squeezes its
1000x800 window into the 96x96 observation (x and y scales differ), so the map is affine, not a pure
rotation. `overlap_mask` gives the pixels of one view that the other sees: with the default anchor,
front and rear share a band of 200 window pixels (100 ahead and 100 behind the car, 29% of the frame);
front and a side camera share 537 x 537 window pixels (47% of the frame).

The front camera's frame is the sim's own observation (tested equal to a rig render at yaw 0), so a rig
dataset's `frames` are exactly a single-camera dataset's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from gaia_gym.data.frames import (CARRACING_HUD_ROWS, CARRACING_NATIVE, CARRACING_SIDE_COLS, carracing_frame)
from gaia_gym.errors import ConfigError
from gaia_gym.specs import camera_pose

WINDOW_W, WINDOW_H = 1000, 800  # CarRacing-v3's render surface (gymnasium.envs.box2d.car_racing)


@dataclass(frozen=True)
class Camera:
    """A rig camera's pose relative to the car (see the module docstring)."""

    name: str
    yaw_deg: float  # rotation about the car from its heading, + = towards the car's left
    anchor_x: float = 0.5  # where the car sits in the window, fraction of the width from the left
    anchor_y: float = 0.75  # ... fraction of the height from the top (CarRacing's camera: 3/4 down)

    def row(self) -> tuple[str, float, float, float]:
        """(name, yaw_deg, anchor_x, anchor_y): how a world model's config stores the camera."""
        return (self.name, float(self.yaw_deg), float(self.anchor_x), float(self.anchor_y))

    def pose(self) -> np.ndarray:
        """(4,) float32 [cos yaw, sin yaw, anchor_x, anchor_y]: what the world model's camera embedding reads."""
        return camera_pose(self.yaw_deg, self.anchor_x, self.anchor_y)


CAMERAS = {
    "front": Camera("front", 0.0),
    "left": Camera("left", 90.0),
    "rear": Camera("rear", 180.0),
    "right": Camera("right", -90.0),
}
RIG4 = ("front", "left", "rear", "right")


def split_names(names) -> tuple[str, ...]:
    """Camera names from a comma-separated string ("front, rear") or a sequence, as a tuple."""
    if isinstance(names, str):
        return tuple(n.strip() for n in names.split(",") if n.strip())
    return tuple(names)


def cameras_from_names(names) -> tuple[Camera, ...]:
    """Camera names (a comma-separated string or a sequence) -> cameras; the first must be "front"."""
    names = list(split_names(names))
    bad = [n for n in names if n not in CAMERAS]
    if bad:
        raise ConfigError(f"unknown camera {bad[0]!r}; the rig's cameras are {', '.join(CAMERAS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"cameras {names}: a camera is listed twice")
    if names and names[0] != "front":
        raise ConfigError(f"cameras {names}: the first camera must be 'front' (the dataset's frames)")
    return tuple(CAMERAS[n] for n in names)


def rig_manifest(cameras) -> list[dict]:
    """The rig's poses as stored in a dataset manifest / model config."""
    return [asdict(c) for c in cameras]


def cameras_from_manifest(rows) -> tuple[Camera, ...]:
    try:
        return tuple(Camera(**r) for r in rows)
    except TypeError as e:
        raise ConfigError(f"a camera rig entry is malformed ({e}): expected name, yaw_deg, anchor_x, anchor_y") from None


def dataset_rig(data) -> tuple[Camera, ...]:
    """The cameras of rig dataset `data` (its manifest's `cameras`, `gaia-gym collect carracing --cameras`);
    a DatasetError naming the directory when it has none."""
    from gaia_gym.data.loader import EpisodeIndex
    from gaia_gym.errors import DatasetError

    rows = EpisodeIndex(data, split="all").manifest.get("cameras")
    if not rows:
        raise DatasetError(f"{data} has no camera rig (record one with `gaia-gym collect carracing --cameras ...`)")
    return cameras_from_manifest(rows)


def render_camera(sim, cam: Camera) -> np.ndarray:
    """The 96x96x3 state-pixels image of CarRacing-v3 `sim` (the unwrapped env, after reset) seen by `cam`:
    CarRacing's own renderer with the camera's yaw and anchor (HUD bars drawn, as in its observation)."""
    import pygame
    from gymnasium.envs.box2d import car_racing as cr

    pygame.font.init()
    sim.surf = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
    angle = -(sim.car.hull.angle + math.radians(cam.yaw_deg))
    zoom = 0.1 * cr.SCALE * max(1 - sim.t, 0) + cr.ZOOM * cr.SCALE * min(sim.t, 1)
    scroll = pygame.math.Vector2((-sim.car.hull.position[0] * zoom, -sim.car.hull.position[1] * zoom)).rotate_rad(angle)
    # the surface is flipped vertically afterwards: an anchor a fraction y from the top is drawn at 1 - y
    trans = (cr.WINDOW_W * cam.anchor_x + scroll[0], cr.WINDOW_H * (1 - cam.anchor_y) + scroll[1])
    sim._render_road(zoom, trans, angle)
    sim.car.draw(sim.surf, zoom, trans, angle, False)
    sim.surf = pygame.transform.flip(sim.surf, False, True)
    sim._render_indicators(cr.WINDOW_W, cr.WINDOW_H)
    return sim._create_image_array(sim.surf, (cr.STATE_W, cr.STATE_H))


def render_rig(sim, cameras, front_obs: np.ndarray | None = None, size: int = 64) -> np.ndarray:
    """(V, size, size, 3) uint8 dataset frames of every camera (`carracing_frame` convention). `front_obs`:
    the sim's own observation of this state, used for a yaw-0 camera at the default anchor."""
    out = []
    for cam in cameras:
        own = front_obs is not None and cam.yaw_deg == 0.0 and (cam.anchor_x, cam.anchor_y) == (0.5, 0.75)
        out.append(carracing_frame(front_obs if own else render_camera(sim, cam), size))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# geometry between views (dataset frames)
# ----------------------------------------------------------------------------------------------
def _frame_to_window(size: int) -> np.ndarray:
    """3x3 map from dataset-frame pixel coordinates (x, y, 1) to window coordinates (pixel centres)."""
    crop = CARRACING_NATIVE - CARRACING_HUD_ROWS  # 84 rows x 84 columns of the 96x96 observation
    s = crop / size  # frame pixel -> observation pixel
    ox, oy = CARRACING_SIDE_COLS, 0.0
    to_obs = np.array([[s, 0, ox + 0.5 * s - 0.5], [0, s, oy + 0.5 * s - 0.5], [0, 0, 1]])
    sx, sy = WINDOW_W / CARRACING_NATIVE, WINDOW_H / CARRACING_NATIVE
    to_win = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return to_win @ to_obs


def view_to_view(src: Camera, dst: Camera, size: int = 64) -> np.ndarray:
    """2x3 affine map taking a pixel (x, y) of `src`'s frame to the pixel of `dst`'s frame that shows the
    same ground point (exact for the renderer's geometry: shared zoom and car position)."""
    F = _frame_to_window(size)
    # window (x right, y down) relative to the car's anchor; a camera with yaw psi shows the world rotated
    # by -psi on screen relative to yaw 0. With y pointing down, a yaw to the left (psi > 0) turns the
    # scene clockwise on screen.
    d = math.radians(dst.yaw_deg - src.yaw_deg)
    c, s = math.cos(d), math.sin(d)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    A_src = np.array([[1, 0, -WINDOW_W * src.anchor_x], [0, 1, -WINDOW_H * src.anchor_y], [0, 0, 1]])
    A_dst = np.array([[1, 0, WINDOW_W * dst.anchor_x], [0, 1, WINDOW_H * dst.anchor_y], [0, 0, 1]])
    M = np.linalg.inv(F) @ A_dst @ R @ A_src @ F
    return M[:2].astype(np.float64)


def warp_view(frame: np.ndarray, src: Camera, dst: Camera) -> tuple[np.ndarray, np.ndarray]:
    """`src`'s frame (size, size, 3) drawn in `dst`'s frame: (warped image, bool mask of the pixels of dst
    that src sees)."""
    size = frame.shape[0]
    M = view_to_view(src, dst, size)
    warped = cv2.warpAffine(frame, M, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    ones = np.ones((size, size), np.uint8)
    # shrink the mask by a pixel so interpolation never mixes in the border
    mask = cv2.warpAffine(ones, M, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
    return warped, mask


def overlap_psnr(frame_src: np.ndarray, frame_dst: np.ndarray, src: Camera, dst: Camera,
                 exclude_car: bool = True) -> float:
    """PSNR (dB) between `dst`'s frame and `src`'s frame warped into it, over the pixels both see. The car
    itself is left out by default (it is drawn at its anchor in every view and would agree trivially)."""
    warped, mask = warp_view(frame_src, src, dst)
    if exclude_car:
        mask &= ~car_mask(dst, frame_dst.shape[0])
    if not mask.any():
        raise ConfigError(f"cameras {src.name} and {dst.name} do not overlap")
    err = (warped.astype(np.float64) - frame_dst.astype(np.float64))[mask]
    mse = float((err**2).mean())
    return float(10 * math.log10(255.0**2 / max(mse, 1e-10)))


def car_mask(cam: Camera, size: int = 64, radius_window_px: float = 60.0) -> np.ndarray:
    """Bool (size, size): the disc around the car's anchor in `cam`'s frame (the car and its wheels)."""
    F = np.linalg.inv(_frame_to_window(size))
    cx, cy, _ = F @ np.array([WINDOW_W * cam.anchor_x, WINDOW_H * cam.anchor_y, 1.0])
    yy, xx = np.mgrid[:size, :size]
    rx, ry = radius_window_px * F[0, 0], radius_window_px * F[1, 1]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def overlap_fraction(src: Camera, dst: Camera, size: int = 64) -> float:
    """Fraction of `dst`'s frame that `src` also sees."""
    return float(warp_view(np.zeros((size, size, 3), np.uint8), src, dst)[1].mean())


__all__ = ["Camera", "CAMERAS", "RIG4", "split_names", "cameras_from_names", "cameras_from_manifest", "dataset_rig", "rig_manifest",
           "render_camera", "render_rig", "view_to_view", "warp_view", "overlap_psnr", "overlap_fraction",
           "car_mask"]
