"""The model-free read-back of the car's turn from CarRacing-like frames (track rotation)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from gaia_gym.evaluation.readback import CAR_XY, TURN_SIGN, step_rotation_deg, turn_deg


def world(size: int = 160, seed: int = 0) -> np.ndarray:
    """A large synthetic CarRacing-like world: grass, lighter grass squares, a grey road."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (102, 204, 102)
    for _ in range(40):
        x, y = rng.integers(0, size - 12, 2)
        img[y : y + 12, x : x + 12] = (102, 229, 102)
    cv2.line(img, (size // 2 - 10, size), (size // 2 + 25, 0), (105, 105, 105), 16)
    return img


def view(w: np.ndarray, theta_deg: float, forward_px: float, size: int = 64) -> np.ndarray:
    """The 64x64 camera view with the world rotated by theta (counter-clockwise on screen) about the car and
    moved down by forward_px."""
    W = w.shape[0]
    car = (CAR_XY[0] * (size - 1), CAR_XY[1] * (size - 1))
    # place the car at the world's centre, then rotate about it and shift
    m = cv2.getRotationMatrix2D((W / 2, W / 2), theta_deg, 1.0)
    m[0, 2] += car[0] - W / 2
    m[1, 2] += car[1] - W / 2 + forward_px
    return cv2.warpAffine(w, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_step_rotation_recovers_the_sign_and_size_of_a_known_rotation():
    w = world()
    for theta in (-6.0, -3.0, 4.0, 8.0):
        a, b = view(w, 0.0, 0.0), view(w, theta, 3.0)
        # cv2's positive angle turns the image counter-clockwise; the estimator counts clockwise as positive
        est = -float(step_rotation_deg(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0])
        assert np.sign(est) == np.sign(theta) and abs(est - theta) <= 1.5, (theta, est)
    # pure forward motion: no rotation
    est = float(step_rotation_deg(torch.from_numpy(view(w, 0, 0))[None], torch.from_numpy(view(w, 0, 4))[None])[0])
    assert abs(est) <= 1.0


def test_turn_sums_steps_and_applies_the_calibrated_sign():
    w = world(seed=1)
    seq = np.stack([view(w, 3.0 * t, 2.0 * t) for t in range(5)])  # 4 steps of +3 degrees
    turn = float(turn_deg(torch.from_numpy(seq)[None])[0])
    # the world turning counter-clockwise on screen = the car turning right
    assert abs(turn - 12.0) <= 3.0 and TURN_SIGN < 0
    assert float(turn_deg(torch.from_numpy(seq[:1])[None])[0]) == 0.0
