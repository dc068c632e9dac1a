"""One table from `gaia-gym eval world-model` records: models x evaluation sets, with per-drive figures.

    python benchmarks/generalisation_table.py \\
        --model "today's default=runs/eval_world_model" --model "new default=runs/eval_wm_v2" \\
        --set "validation tracks=val" --set "held-out drives, lossless=heldout_lossless" \\
        --set "held-out drives, MP4=heldout_mp4" --json results/generalisation.json

A record is PREFIX_SET.json (`gaia-gym eval world-model ... --json PREFIX_SET.json`, with `--per-episode` for
the drives). The table gives open-loop PSNR at 1 / 4 / 8 / 16 steps beside copy-last-frame, the counterfactual
steering read-back (paired), the reward head's error, and for per-episode records how many drives beat
copy-last by 2 dB at 8 steps and by 1 dB at 16 (the bars of the generalisation issue).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaia_gym.errors import ConfigError, run_script
from gaia_gym.fileio import write_json

HORIZONS = ("1", "4", "8", "16")
BAR_8, BAR_16 = 2.0, 1.0  # dB over copy-last at 8 and 16 steps


def pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name, value


def summarize(rec: dict) -> dict:
    out = {
        "clips": rec.get("clips"),
        "psnr": {h: rec["psnr_by_horizon"][h] for h in HORIZONS},
        "copy_last": {h: rec["copy_last_psnr_by_horizon"][h] for h in HORIZONS},
        "steering_paired": rec.get("counterfactual_steering_paired_accuracy"),
        "steering_per_branch": rec.get("counterfactual_steering_accuracy"),
        "reward_mae_teacher_forced": rec.get("reward_mae_teacher_forced"),
        "reward_mae_rollout": rec.get("reward_mae_rollout"),
    }
    out["lead"] = {h: out["psnr"][h] - out["copy_last"][h] for h in HORIZONS}
    per = rec.get("open_loop_by_episode")
    if per:
        drives = {}
        for name, d in per.items():
            lead8 = d["psnr_by_horizon"]["8"] - d["copy_last_psnr_by_horizon"]["8"]
            lead16 = d["psnr_by_horizon"]["16"] - d["copy_last_psnr_by_horizon"]["16"]
            drives[name] = {"clips": d["clips"], "lead_8": round(lead8, 2), "lead_16": round(lead16, 2),
                            "meets_both": bool(lead8 >= BAR_8 and lead16 >= BAR_16)}
        out["drives"] = drives
        out["drives_meeting_both_bars"] = sum(d["meets_both"] for d in drives.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", type=pair, required=True, help="NAME=RECORD_PREFIX")
    p.add_argument("--set", action="append", type=pair, required=True, help="NAME=SUFFIX")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    table: dict = {}
    lines = ["| model | set | clips | PSNR h1 / h4 / h8 / h16 (dB) | copy-last h1 / h4 / h8 / h16 | lead h8 / h16 "
             "| drives >= +2 / +1 dB | steering read-back, paired | reward MAE (teacher-forced) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mname, prefix in a.model:
        for sname, suffix in a.set:
            path = Path(f"{prefix}_{suffix}.json")
            if not path.is_file():
                raise ConfigError(f"no evaluation record {path}")
            s = summarize(json.loads(path.read_text()))
            table.setdefault(mname, {})[sname] = {"record": str(path), **s}
            f = lambda d: " / ".join(f"{d[h]:.2f}" for h in HORIZONS)  # noqa: E731
            drives = (f"{s['drives_meeting_both_bars']} of {len(s['drives'])}" if "drives" in s else "")
            sp = s["steering_paired"]
            rm = s["reward_mae_teacher_forced"]
            lines.append(f"| {mname} | {sname} | {s['clips']} | {f(s['psnr'])} | {f(s['copy_last'])} | "
                         f"{s['lead']['8']:+.2f} / {s['lead']['16']:+.2f} | {drives} | "
                         f"{'' if sp is None else f'{sp:.1%}'} | {'' if rm is None else f'{rm:.3f}'} |")
    print("\n".join(lines))
    if a.json:
        write_json(a.json, {"table": table, "markdown": lines, "bars_db": {"8": BAR_8, "16": BAR_16}})
        print(f"wrote {a.json}")


if __name__ == "__main__":
    run_script("generalisation_table", main)
