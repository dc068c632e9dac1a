"""Imagined futures and counterfactuals from one real context clip (`gaia-gym demo` / `gaia-gym imagine`).

One batched engine does it all: the prompt clip is prefilled once, then the rows are
``n_futures`` samples under the real continuation's actions (or the last context action, held) and the
left / straight / right counterfactuals (steering held at -1 / 0 / +1, the context's last speed). The
GIF/MP4 shows, per time step, the real continuation (through the tokenizer) beside every row; a PNG
contact sheet of the counterfactuals is written next to it. A camera-rig model's frames are drawn as its
views laid out around the car (front above, rear below, left and right beside; `media.rig_mosaics`), so
the first tile is the real rig and the others the imagined rigs under the same actions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from gaia_gym.bundle import WorldBundle
from gaia_gym.imagination import Imagination, scene_rows
from gaia_gym.media import grid_image, rig_mosaics, text_strip
from gaia_gym.evaluation.common import STEER_ROWS
from gaia_gym.errors import ConfigError


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix.lower() == ".gif":
        iio.imwrite(tmp, frames, duration=1000.0 / fps, loop=0)
    elif path.suffix.lower() in (".mp4", ".m4v", ".mov"):
        # pad to multiples of 16 (the codec's macro blocks) with white
        ph, pw = -frames.shape[1] % 16, -frames.shape[2] % 16
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
        iio.imwrite(tmp, frames, fps=fps, codec="libx264")
    else:
        raise ConfigError(f"{path}: write a .gif or .mp4")
    tmp.replace(path)


@torch.no_grad()
def imagine(bundle: WorldBundle, out: str | Path, prompt: int = 0, n_futures: int = 4, steps: int = 16,
            temperature: float = 1.0, seed: int = 0, counterfactual: bool = True, scale: int = 2,
            fps: float = 6.0, guidance: float = 1.0, scene: dict | None = None, scratch: bool = False,
            guide=("action",)) -> dict:
    """Write the futures / counterfactual video to `out` (.gif or .mp4) and a PNG contact sheet beside it.
    Returns what was done (paths, rows, seconds).

    A conditioned (highway-env) model: `scene` options (`gaia_gym.imagination.scene_rows`: metadata,
    text, negative, vehicles, agent_steps) condition every row; `scratch` hides the context clip (the
    scene is generated from the conditions alone); `guide` names what classifier-free guidance
    contrasts (with `guidance` > 1; a negative prompt replaces "no text")."""
    t0 = time.perf_counter()
    bank = bundle.prompts
    if not 0 <= prompt < len(bank):
        raise ConfigError(f"prompt must lie in [0, {len(bank)}): the model's prompt bank has {len(bank)} clips")
    if n_futures < 0 or steps < 1:
        raise ConfigError("n_futures must be >= 0 and steps >= 1")
    names = [f"sample {i + 1}" for i in range(n_futures)] + ([n for n, _ in STEER_ROWS] if counterfactual else [])
    if not names:
        raise ConfigError("nothing to imagine: n_futures is 0 and counterfactuals are off")
    n = len(names)
    eng = Imagination(bundle, n=n, temperature=temperature, seed=seed, guidance=guidance, guide=guide,
                      step_seconds=bundle.step_seconds)
    idx = torch.full((n,), prompt, dtype=torch.long)
    rows_scene = scene_rows(bundle, n, idx, scene)
    if rows_scene is None and scratch:
        raise ConfigError("--scratch needs a world model with scene conditions")
    eng.reset(prompt=idx, **({} if rows_scene is None else {"scene": rows_scene, "scratch": scratch}))
    dev = eng.device
    last = bank.actions[prompt, -1].to(dev)
    F = bank.continuation
    real_acts = bank.next_actions[prompt].to(dev) if F else None
    rows = []
    for s in range(steps):
        a_real = real_acts[min(s, F - 1)] if F else last
        acts = [a_real] * n_futures + ([torch.stack([torch.tensor(st, device=dev), last[1]]) for _, st in STEER_ROWS]
                                       if counterfactual else [])
        rows.append(eng.step(torch.stack(acts)).latents)
    imagined = eng.frames(torch.stack(rows, 1).flatten(0, 1)).cpu().numpy()
    imagined = imagined.reshape(n, steps, *imagined.shape[1:])
    ctx = eng.frames(bank.tokens[prompt].to(dev)).cpu().numpy()
    if scratch:  # the model never saw the context: show it greyed out
        ctx = (ctx // 4 + 96).astype(np.uint8)
    C = len(ctx)
    real_frames = eng.frames(bank.next_tokens[prompt, :steps].to(dev)).cpu().numpy() if F else None
    if eng.backend.cameras:  # a camera rig: every frame becomes its views laid out around the car
        yaws = [c[1] for c in eng.backend.cameras]
        imagined, ctx = rig_mosaics(imagined, yaws), rig_mosaics(ctx, yaws)
        real_frames = None if real_frames is None else rig_mosaics(real_frames, yaws)

    video = []
    for t in range(C + steps):
        if t < C:
            tiles, head = [ctx[t]] * (n + 1), f"real context {t + 1}/{C}"
        else:
            i = t - C
            r = real_frames[i] if real_frames is not None and i < len(real_frames) else np.full_like(ctx[0], 255)
            tiles, head = [r] + [imagined[k, i] for k in range(n)], f"imagined step +{i + 1}"
        grid = grid_image([tiles], [""], ["real"] + names, scale, label_w=4)
        video.append(np.concatenate([text_strip(head, grid.shape[1]), grid], 0))
    out = Path(out)
    _write_video(out, np.stack(video), fps)
    result = {"video": str(out), "prompt": prompt, "context_frames": C, "steps": steps, "rows": names,
              "temperature": temperature, "seed": seed, "scene": scene or {}, "scratch": scratch}
    if counterfactual:
        import imageio.v3 as iio

        k = min(steps, 8)
        sheet = grid_image([[ctx[-1]] + list(imagined[n_futures + j, :k]) for j in range(3)],
                            [nm for nm, _ in STEER_ROWS], ["now"] + [f"+{i + 1}" for i in range(k)], scale)
        png = out.with_suffix(".png")
        iio.imwrite(png, sheet)
        result["contact_sheet"] = str(png)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result
