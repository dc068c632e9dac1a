"""Several futures from one real context, and counterfactual actions: what the world model imagines.

- `futures`: n futures sampled per prompt-bank clip under the SAME (real) actions, measured per step as
  the fraction of token positions that differ (`hamming`) and as the mean absolute pixel difference:
  diversity between futures, distance to the real continuation (mean and best of n), and the
  "nothing changes" baseline (the last context frame);
- `counterfactuals`: each clip under held actions (`ROWS`: left / straight / right at the context's
  speed, slow / fast straight), as imagined frames.

The command line is examples/futures_and_counterfactuals.py (the plots, pictures and record).
"""

from __future__ import annotations

import torch

from gaia_gym.imagination import Imagination

ROWS = (("left", -1.0, None), ("straight", 0.0, None), ("right", 1.0, None), ("slow", 0.0, 0.0), ("fast", 0.0, 80.0))


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of token positions that differ: (..., g, g) x (..., g, g) -> (...)."""
    return (a != b).float().flatten(-2).mean(-1)


@torch.no_grad()
def futures(bundle, clips: list[int], n: int, steps: int, seed: int, temperature: float) -> dict:
    """Sample n futures per clip under the real actions; distances per step (averaged over clips)."""
    bank = bundle.prompts
    steps = min(steps, bank.continuation)
    eng = Imagination(bundle, n=len(clips) * n, temperature=temperature, seed=seed)
    idx = torch.tensor(clips).repeat_interleave(n)
    eng.reset(prompt=idx)
    real = bank.next_tokens[idx, :steps].to(eng.device)  # (B*n, T, g, g)
    acts = bank.next_actions[idx, :steps].to(eng.device)
    out = torch.stack([eng.step(acts[:, t]).latents for t in range(steps)], 1)  # (B*n, T, g, g)
    out = out.view(len(clips), n, steps, *out.shape[2:])
    real = real.view(len(clips), n, steps, *real.shape[2:])[:, 0]
    iu = torch.triu_indices(n, n, 1)
    pair = hamming(out[:, iu[0]], out[:, iu[1]]).mean(1)  # (B, T)
    to_real = hamming(out, real[:, None])  # (B, n, T)
    last = bank.tokens[torch.tensor(clips), -1].to(eng.device)
    copy = hamming(last[:, None], real)  # (B, T)
    # the same four measures on the decoded frames: mean absolute pixel difference, in [0, 1]
    dec = lambda t: eng.frames(t.flatten(0, -3)).float().view(*t.shape[:-2], -1) / 255  # noqa: E731
    px, px_real, px_last = dec(out), dec(real), dec(last)
    l1 = lambda x, y: (x - y).abs().mean(-1)  # noqa: E731
    return {"tokens": out, "real": real, "steps": steps, "metrics": {
        "diversity": pair.mean(0).tolist(), "to_real_mean": to_real.mean((0, 1)).tolist(),
        "to_real_best": to_real.min(1).values.mean(0).tolist(), "copy_last": copy.mean(0).tolist(),
        "pixel_diversity": l1(px[:, iu[0]], px[:, iu[1]]).mean((0, 1)).tolist(),
        "pixel_to_real_mean": l1(px, px_real[:, None]).mean((0, 1)).tolist(),
        "pixel_to_real_best": l1(px, px_real[:, None]).min(1).values.mean(0).tolist(),
        "pixel_copy_last": l1(px_last[:, None], px_real).mean(0).tolist()}}


@torch.no_grad()
def counterfactuals(bundle, clips: list[int], steps: int, seed: int, temperature: float) -> dict:
    """Every clip under each of ROWS (held actions): imagined frames (B, R, T, H, W, 3) uint8."""
    bank, R = bundle.prompts, len(ROWS)
    eng = Imagination(bundle, n=len(clips) * R, temperature=temperature, seed=seed)
    idx = torch.tensor(clips).repeat_interleave(R)
    eng.reset(prompt=idx)
    ctx_speed = bank.actions[idx, -1, 1].to(eng.device)
    acts = []
    for i in range(len(idx)):
        _, steer, mps = ROWS[i % R]
        speed = ctx_speed[i] if mps is None else torch.tensor(float(bundle.codec.encode(0.0, mps)[1]))
        acts.append(torch.stack([torch.tensor(steer), speed.cpu()]))
    acts = torch.stack(acts).to(eng.device)
    toks = torch.stack([eng.step(acts).latents for _ in range(steps)], 1)
    frames = eng.frames(toks.flatten(0, 1)).cpu()
    start = eng.frames(bank.tokens[torch.tensor(clips), -1].to(eng.device)).cpu()
    return {"frames": frames.view(len(clips), R, steps, *frames.shape[1:]), "start": start}


__all__ = ["ROWS", "counterfactuals", "futures", "hamming"]
