"""`gaia-gym play`: drive inside the world model.

With a window (pygame): arrow keys steer left/right (held = full lock) and change the target speed
(up/down, 4 m/s per step); Esc or closing the window ends. With `keys` (headless, for scripts and tests):
one character per step, L/R steer, U/D change the speed, '.' coasts. Either way the drive can be written
to a GIF/MP4.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import torch

from gaia_gym.bundle import WorldBundle
from gaia_gym.envs.render import annotate
from gaia_gym.errors import ConfigError
from gaia_gym.imagination import Imagination

SPEED_STEP_MPS = 4.0
KEYS = set("LRUD.")


@torch.no_grad()
def play(bundle: WorldBundle, keys: str | None = None, steps: int = 500, out: str | Path | None = None, seed: int = 0,
         prompt: int | None = None, scale: int = 6, fps: float = 12.5) -> dict:
    if keys is not None:
        bad = set(keys) - KEYS
        if bad:
            raise ConfigError(f"--keys may only hold L R U D . (got {''.join(sorted(bad))!r})")
        steps = min(steps, len(keys))
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ConfigError(f"--scale must be a positive integer (the frame is enlarged that many times), got {scale!r}")
    n_prompts = len(bundle.prompts)
    if prompt is not None and (isinstance(prompt, bool) or not isinstance(prompt, numbers.Integral)
                               or not 0 <= prompt < n_prompts):
        raise ConfigError(f"--prompt must be an index into the prompt bank (0..{n_prompts - 1}), got {prompt!r}")
    eng = Imagination(bundle, n=1, seed=seed)
    eng.reset(prompt=None if prompt is None else torch.tensor([prompt]))
    codec = bundle.codec
    last = bundle.prompts.actions[0 if prompt is None else prompt, -1]
    speed = float(codec.decode(last.numpy())[1])
    screen, clock, pg = None, None, None
    if keys is None:
        # the display only: pygame.init() would also open the audio device (ALSA errors on every start
        # of a machine without a sound card), and nothing here plays sound
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame as pg  # noqa: PLC0415 - only with a window

        pg.display.init()
        size = bundle.tokenizer.cfg.frame_size * scale
        screen = pg.display.set_mode((size, size))
        pg.display.set_caption("gaia-gym play")
        clock = pg.time.Clock()
    video, total, t = [], 0.0, 0
    while t < steps:
        steer = 0.0
        if keys is not None:
            k = keys[t]
            steer = {"L": -1.0, "R": 1.0}.get(k, 0.0)
            speed += {"U": SPEED_STEP_MPS, "D": -SPEED_STEP_MPS}.get(k, 0.0)
        else:
            if any(e.type == pg.QUIT or (e.type == pg.KEYDOWN and e.key == pg.K_ESCAPE) for e in pg.event.get()):
                break
            held = pg.key.get_pressed()
            steer = -1.0 * held[pg.K_LEFT] + 1.0 * held[pg.K_RIGHT]
            speed += SPEED_STEP_MPS * (held[pg.K_UP] - held[pg.K_DOWN])
        speed = float(np.clip(speed, 0.0, codec.max_speed_mps))
        o = eng.step(torch.as_tensor(codec.encode(steer, speed))[None])
        total += float(o.reward[0])
        frame = eng.frames()[0].cpu().numpy()
        img = annotate(frame, [f"step {t + 1}", f"steer {steer:+.0f}  speed {speed:.0f} m/s",
                                f"reward {float(o.reward[0]):+.2f}  return {total:.1f}"], scale)
        if out is not None:
            video.append(img)
        if screen is not None:
            screen.blit(pg.surfarray.make_surface(img.swapaxes(0, 1)), (0, 0))
            pg.display.flip()
            clock.tick(fps)
        t += 1
        if bool(o.terminated[0]):
            eng.reset()
    if screen is not None:
        pg.display.quit()
    res = {"steps": t, "return": total}
    if out is not None and video:
        from gaia_gym.media import write_video

        write_video(Path(out), np.stack(video), fps)
        res["out"] = str(out)
    return res
