"""Frame conventions: the one place that decides how a simulator or camera image becomes a dataset frame.

CarRacing-v3 (the convention every CarRacing frame in gaia_gym goes through, collected or imported):

- The simulator's observation is 96x96 RGB. Its bottom 12 rows are the HUD (score digits, speed bar,
  ABS and steering/gyro bars). We **crop the HUD away**: speed and steering are logged as numbers in
  every record, so drawing them again in pixels would only make the tokenizer spend codes on digits
  and bars, and the reward digits would leak the return into the image.
- From the remaining 84x96 we take the centred 84x84 square (6 columns lost each side, grass almost
  always) and resize it to ``size`` x ``size`` (64 by default) with area interpolation. A square crop
  keeps the geometry isotropic, so a rotation of the track in the frame is a true rotation.
- The car sits at a fixed place in the frame (about 72% of the way down, centred), as in the simulator.

Generic frames (highway-env renders, users' videos): centre-crop to a square, then area-resize.
"""

from __future__ import annotations

import cv2
import numpy as np

from gaia_gym.errors import ConfigError

CARRACING_NATIVE = 96  # CarRacing-v3 state_pixels size
SIM_FPS = 50  # CarRacing-v3 simulates (and renders) 50 frames per second
CARRACING_HUD_ROWS = 12  # bottom rows holding the HUD
CARRACING_SIDE_COLS = 6  # columns dropped each side to make the 84x84 square


def carracing_frame(obs: np.ndarray, size: int = 64) -> np.ndarray:
    """CarRacing-v3 96x96x3 observation -> (size, size, 3) uint8 dataset frame (HUD cropped)."""
    if obs.ndim != 3 or obs.shape[2] != 3:
        raise ConfigError(f"expected an HxWx3 RGB frame, got shape {obs.shape}")
    if obs.shape[:2] != (CARRACING_NATIVE, CARRACING_NATIVE):
        # Recordings at another resolution (e.g. the 600x400 render): scale to the native grid first,
        # so the HUD crop lands on the same pixels.
        obs = cv2.resize(obs, (CARRACING_NATIVE, CARRACING_NATIVE), interpolation=cv2.INTER_AREA)
    h = CARRACING_NATIVE - CARRACING_HUD_ROWS
    c = CARRACING_SIDE_COLS
    crop = obs[:h, c : CARRACING_NATIVE - c]  # (84, 84, 3)
    return resize_square(crop, size)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an HxWx3 image to a square and area-resize it to (size, size, 3) uint8."""
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0 : y0 + s, x0 : x0 + s]
    if s != size:
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return np.ascontiguousarray(img, dtype=np.uint8)


FRAME_CONVENTIONS = {
    "carracing": carracing_frame,
    "square": resize_square,
}


# Where the car's wheels touch the ground in a 64x64 CarRacing frame (rows 49-59, columns 27-37 hold
# the car and the ground under it; the car's own red, black and grey-wheel pixels are not grass).
CAR_BOX_64 = (slice(49, 60), slice(27, 38))


def carracing_grass_fraction(frames: np.ndarray) -> np.ndarray:
    """(T, 64, 64, 3) uint8 CarRacing frames -> (T,) share of grass pixels around the car, in [0, 1].

    Read from pixels alone, so collected, imported and imagined frames are measured alike: on the road
    it is ~0 (the kerbs are red and white), fully off the road it is ~0.8 (the car hides the rest).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (64, 64, 3):
        raise ConfigError(f"expected (T, 64, 64, 3) CarRacing frames, got shape {frames.shape}")
    box = frames[:, CAR_BOX_64[0], CAR_BOX_64[1]].astype(np.int16)
    r, g, b = box[..., 0], box[..., 1], box[..., 2]
    grass = (g - np.maximum(r, b)) > 40
    return grass.mean(axis=(1, 2))
