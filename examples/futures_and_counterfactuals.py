"""Multiple futures and counterfactuals from real context clips, measured and pictured.

    python examples/futures_and_counterfactuals.py          # -> results/planning.json + 3 pictures
    python examples/futures_and_counterfactuals.py --clips 4 --futures 4 --steps 6 --json /tmp/f.json --out /tmp/f

Multiple futures (GAIA-1's "several possible futures from one context"): for each of `--clips` real
clips of the model's prompt bank (real context + what really happened next), `--futures` futures are
sampled under the SAME actions, the real ones. Per imagined step we measure, as the fraction of token
positions that differ (a Hamming distance on the token grid):
  - diversity: mean over pairs of futures (0 = one deterministic future);
  - to_real_mean: mean over futures of the distance to the real continuation's tokens;
  - to_real_best: the closest future's distance (best-of-N: do the futures cover what happened?);
  - copy_last: the distance of "nothing changes" (the last context frame) to the real continuation.
Plot: results/planning_futures.png; picture: results/planning_futures_grid.png (the real continuation
above 4 futures of one clip).

Counterfactuals: one context under held steering left / straight / right (at the context's speed) and
slow / fast (0 and 80 m/s, straight), as a picture grid (results/planning_counterfactuals.png), with the
car's turn read back from the imagined frames by the track-rotation instrument
(`gaia_gym.evaluation.readback`, positive = right) and how far the world moved (mean frame change) for
slow vs fast, over all clips.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gaia_gym.errors import exit_with, run_script
from gaia_gym.evaluation.futures import ROWS, counterfactuals, futures
from gaia_gym.fileio import merge_json
from gaia_gym.media import save_figure, subplots

def plot_futures(path: Path, m: dict, n: int) -> None:
    t = np.arange(1, len(m["diversity"]) + 1)
    fig, axes = subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for ax, pre, unit in ((axes[0], "", "tokens that differ (fraction)"),
                          (axes[1], "pixel_", "mean |pixel difference| (0-1)")):
        ax.plot(t, m[pre + "diversity"], "o-", label=f"diversity (pairs of the {n} futures)")
        ax.plot(t, m[pre + "to_real_mean"], "s-", label="future vs real (mean)")
        ax.plot(t, m[pre + "to_real_best"], "^-", label=f"future vs real (best of {n})")
        ax.plot(t, m[pre + "copy_last"], "k--", label="last context frame vs real")
        ax.set_xlabel("imagined step (80 ms each)")
        ax.set_ylabel(unit)
        ax.set_ylim(0, None)
    axes[0].legend(fontsize=7)
    fig.suptitle("Several futures under the same (real) actions", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--clips", type=int, default=16, help="prompt-bank clips used (default: %(default)s)")
    p.add_argument("--futures", type=int, default=8, help="futures per clip (default: %(default)s)")
    p.add_argument("--steps", type=int, default=16, help="imagined steps (default: %(default)s)")
    p.add_argument("--picture-clip", type=int, default=0, help="which of the clips is pictured (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--json", type=Path, default=Path("results/planning.json"), help="results file")
    p.add_argument("--out", type=Path, default=Path("results"), help="directory of the pictures")
    a = p.parse_args(argv)
    import imageio.v3 as iio

    from gaia_gym.bundle import load_bundle
    from gaia_gym.errors import GaiaGymError
    from gaia_gym.evaluation.readback import turn_deg
    from gaia_gym.media import grid_image

    try:
        bundle = load_bundle(a.model)
    except GaiaGymError as e:
        exit_with(f"futures_and_counterfactuals: {e}")
    bank = bundle.prompts
    if not bank.continuation:
        exit_with("futures_and_counterfactuals: the model's prompt bank has no real continuation")
    if not (1 <= a.clips <= len(bank) and a.futures >= 2 and a.steps >= 2 and 0 <= a.picture_clip < a.clips):
        exit_with(f"futures_and_counterfactuals: need 1 <= --clips <= {len(bank)}, --futures >= 2, "
                         "--steps >= 2 and --picture-clip < --clips")
    clips = list(range(a.clips))
    f = futures(bundle, clips, a.futures, a.steps, a.seed, a.temperature)
    a.out.mkdir(parents=True, exist_ok=True)
    plot_futures(a.out / "planning_futures.png", f["metrics"], a.futures)
    k, cols = a.picture_clip, [s for s in (1, 2, 4, 6, 8, 12, 16) if s <= f["steps"]]
    eng_frames = lambda t: bundle.tokenizer.decode(t.to(bundle.device)).cpu().numpy()  # noqa: E731
    real = eng_frames(f["real"][k, [c - 1 for c in cols]])
    fut = [eng_frames(f["tokens"][k, j, [c - 1 for c in cols]]) for j in range(min(4, a.futures))]
    grid = grid_image([list(real)] + [list(x) for x in fut], ["real"] + [f"future {j + 1}" for j in range(len(fut))],
                       [f"+{c}" for c in cols])
    iio.imwrite(a.out / "planning_futures_grid.png", grid)

    cf = counterfactuals(bundle, clips, min(a.steps, 8), a.seed, a.temperature)
    fr = cf["frames"]  # (B, R, T, H, W, 3)
    seq = torch.cat([cf["start"][:, None, None].expand(-1, len(ROWS), 1, -1, -1, -1), fr], 2)
    turns = turn_deg(seq.flatten(0, 1)).view(len(clips), len(ROWS))
    motion = (seq[:, :, 1:].float() - seq[:, :, :-1].float()).abs().mean((2, 3, 4, 5))  # (B, R)
    names = [r[0] for r in ROWS]
    T = fr.shape[2]
    rows = [[cf["start"][k].numpy()] + list(fr[k, r].numpy()) for r in range(len(ROWS))]
    labels = ["left", "straight", "right", "slow 0 m/s", "fast 80 m/s"]
    iio.imwrite(a.out / "planning_counterfactuals.png",
                grid_image(rows, labels, ["now"] + [f"+{i + 1}" for i in range(T)]))
    li, ri = names.index("left"), names.index("right")
    si, fi = names.index("slow"), names.index("fast")
    rec = {
        "multiple_futures": {**f["metrics"], "clips": a.clips, "futures": a.futures, "steps": f["steps"],
                             "temperature": a.temperature, "measure": "fraction of token positions that differ",
                             "plot": str(a.out / "planning_futures.png"),
                             "picture": str(a.out / "planning_futures_grid.png")},
        "counterfactuals": {
            "rows": labels, "steps": T, "clips": a.clips,
            "turn_deg_mean": dict(zip(names, turns.mean(0).tolist())),
            "left_turns_left_of_right": float((turns[:, li] < turns[:, ri]).float().mean()),
            "motion_mean": dict(zip(names, motion.mean(0).tolist())),
            "fast_moves_more_than_slow": float((motion[:, fi] > motion[:, si]).float().mean()),
            "picture": str(a.out / "planning_counterfactuals.png"),
            "readback": "turn: track rotation about the car summed over the steps, degrees, + = right "
                        "(gaia_gym.evaluation.readback); motion: mean absolute change between consecutive frames"},
        "futures_command": "python examples/futures_and_counterfactuals.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
    }
    merge_json(a.json, ".", rec)
    m = f["metrics"]
    print(f"futures (pixels): diversity at +1/+{f['steps']} = {m['pixel_diversity'][0]:.3f}/{m['pixel_diversity'][-1]:.3f}; "
          f"to real (mean) {m['pixel_to_real_mean'][0]:.3f}/{m['pixel_to_real_mean'][-1]:.3f}, best "
          f"{m['pixel_to_real_best'][0]:.3f}/{m['pixel_to_real_best'][-1]:.3f}, copy-last "
          f"{m['pixel_copy_last'][0]:.3f}/{m['pixel_copy_last'][-1]:.3f}")
    print(f"futures (tokens): diversity at +1/+{f['steps']} = {m['diversity'][0]:.3f}/{m['diversity'][-1]:.3f}; to real "
          f"(mean) {m['to_real_mean'][0]:.3f}/{m['to_real_mean'][-1]:.3f}, best of {a.futures} "
          f"{m['to_real_best'][0]:.3f}/{m['to_real_best'][-1]:.3f}, copy-last {m['copy_last'][0]:.3f}/{m['copy_last'][-1]:.3f}")
    c = rec["counterfactuals"]
    print(f"counterfactuals: turn left/straight/right {c['turn_deg_mean']['left']:.1f}/"
          f"{c['turn_deg_mean']['straight']:.1f}/{c['turn_deg_mean']['right']:.1f} deg "
          f"(left < right on {100 * c['left_turns_left_of_right']:.0f}% of clips); motion slow/fast "
          f"{c['motion_mean']['slow']:.1f}/{c['motion_mean']['fast']:.1f} (fast > slow on "
          f"{100 * c['fast_moves_more_than_slow']:.0f}%)")
    print(f"wrote {a.json}, {a.out}/planning_futures.png, planning_futures_grid.png, planning_counterfactuals.png")
    return rec


if __name__ == "__main__":
    run_script("futures_and_counterfactuals", main, sys.argv[1:])
