"""`gaia-gym collect`, `import` and `data`: record, import, inspect and check datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaia_gym.fileio import merge_json
from gaia_gym.seeds import HELD_OUT_FROM


def _add_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", choices=["default", "tiny"],
                   help="configuration preset (tiny: a few short episodes, for smoke tests)")


def cmd_collect_carracing(a: argparse.Namespace) -> None:
    from gaia_gym.config import CarRacingCollectConfig, preset
    from gaia_gym.sims.carracing_collect import collect_carracing
    from gaia_gym.sims.rig import split_names

    cfg = preset(CarRacingCollectConfig, a.preset, episodes=a.episodes, seed=a.seed, workers=a.workers,
                 frame_size=a.frame_size, frame_skip=a.frame_skip, max_steps=a.max_steps,
                 mix=a.mix, clean_fraction=a.clean_fraction,
                 cameras=split_names(a.cameras) if a.cameras else None)
    m = collect_carracing(cfg, Path(a.out), progress=not a.quiet)
    print(f"{a.out}: {m['num_episodes']} episodes, {m['num_steps']} steps "
          f"(train {sum(e['steps'] for e in m['episodes'] if e['split'] == 'train')}, "
          f"val {sum(e['steps'] for e in m['episodes'] if e['split'] == 'val')})")


def cmd_collect_highway(a: argparse.Namespace) -> None:
    from gaia_gym.config import HighwayCollectConfig, preset
    from gaia_gym.sims.highway import collect_highway

    scen = tuple(a.scenarios.split(",")) if a.scenarios else None
    cfg = preset(HighwayCollectConfig, a.preset, episodes=a.episodes, seed=a.seed, workers=a.workers,
                 frame_size=a.frame_size, max_steps=a.max_steps, scenarios=scen,
                 scenario_order=a.scenario_order)
    m = collect_highway(cfg, Path(a.out), progress=not a.quiet)
    print(f"{a.out}: {m['num_episodes']} episodes, {m['num_steps']} steps")


def cmd_import(a: argparse.Namespace) -> None:
    from gaia_gym.data.importer import import_drive

    m = import_drive(
        a.video, a.log, Path(a.out), like=a.like, fps=a.fps, frame_size=a.frame_size,
        time_col=a.time_col, speed_col=a.speed_col, steering_col=a.steering_col,
        speed_scale=a.speed_scale, steering_scale=a.steering_scale, video_fps=a.video_fps,
        trim_start_s=a.trim_start, split=a.split, progress=not a.quiet, allow_duplicate=a.allow_duplicate,
        return_col=a.return_col,
    )
    e = m["episodes"][-1]
    print(f"{a.out}: imported {e['steps']} steps from {a.video} as {e['file']} "
          f"({m['num_episodes']} episodes in the dataset)")


def cmd_data_stats(a: argparse.Namespace) -> None:
    from gaia_gym.data.stats import dataset_stats, format_stats

    s = dataset_stats(Path(a.dir), sheet=Path(a.sheet) if a.sheet else None, json_path=a.json)
    print(format_stats(s))


def cmd_data_coverage(a: argparse.Namespace) -> None:
    from gaia_gym.data.coverage import coverage, plot_coverage
    from gaia_gym.fileio import write_json

    r = coverage(Path(a.dir), [Path(d) for d in a.against], split=None if a.split == "all" else a.split,
                 min_count=a.min_count, progress=not a.quiet, max_episodes=a.max_episodes)
    ref = r["reference"]
    print(f"{a.dir} ({a.split}): {ref['steps']} steps, speed p50/p95/max {ref['speed_mps']['p50']}/"
          f"{ref['speed_mps']['p95']}/{ref['speed_mps']['max']} m/s, off-road {ref['share_offroad']:.1%}, "
          f"{ref['cells_used']} cells used")
    for d, o in r["against"].items():
        print(f"  {d}: {o['steps']} steps, speed p50/p95 {o['speed_mps']['p50']}/{o['speed_mps']['p95']} m/s, "
              f"off-road {o['share_offroad']:.1%}: {o['covered_share']:.1%} of its steps covered")
    if a.json:
        write_json(a.json, {**r, "command": "gaia-gym data " + " ".join(a.argv_tail)})
    if a.plot:
        print(f"wrote {plot_coverage(r, a.plot)}")


def cmd_data_verify(a: argparse.Namespace) -> None:
    from gaia_gym.data.stats import verify_dataset

    n = verify_dataset(Path(a.dir), progress=not a.quiet)
    print(f"{a.dir}: {n} shards read back intact")


def cmd_data_scripted(a: argparse.Namespace) -> None:
    from gaia_gym.sims.carracing_collect import evaluate_scripted_driver

    r = evaluate_scripted_driver(seeds=range(a.seed, a.seed + a.episodes), workers=a.workers,
                                 frame_skip=a.frame_skip, progress=not a.quiet)
    print(f"scripted driver on {len(r['returns'])} tracks (seeds {a.seed}..{a.seed + a.episodes - 1}): "
          f"mean return {r['mean']:.1f} +- {r['std']:.1f}, laps finished {r['laps_finished']}")
    if a.json:
        merge_json(Path(a.json), ".", {"scripted_driver_return_mean": r["mean"], "scripted_driver": r})
        print(f"wrote {a.json}")


def cmd_bench_collect(a: argparse.Namespace) -> None:
    from gaia_gym.sims.carracing_collect import bench_collection

    r = bench_collection(seconds=a.seconds, workers=a.workers, frame_skip=a.frame_skip)
    print(json.dumps(r, indent=1))
    if a.json:
        merge_json(Path(a.json), ".", {"collect_vs_raw_speed_ratio": r["collect_vs_raw_speed_ratio"],
                                   "collect_bench": r})
        print(f"wrote {a.json}")


def add_parsers(sub) -> None:
    """`collect carracing|highway`, `import`, `data stats|verify|scripted|bench`."""
    # collect
    c = sub.add_parser("collect", help="record real driving from a simulator into a dataset directory",
                       description="Record real driving into DIR. Resumable: rerun the same command (only --episodes and --workers may change; other settings are refused).")
    csub = c.add_subparsers(dest="sim", metavar="SIM", required=True)
    cr = csub.add_parser("carracing", help="CarRacing-v3 with the scripted driver + behaviour mix",
                         description="Record CarRacing-v3 driven by privileged pure-pursuit drivers of many "
                         "styles, perturbed by noise, weaves, excursions to both sides, late braking, "
                         "fast and random segments (the v2 mix; --mix v1 is the first one).")
    cr.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    _add_preset(cr)
    cr.add_argument("--episodes", type=int, help="number of episodes (tracks); default 714 (<= 170k steps)")
    cr.add_argument("--mix", choices=["v2", "v1"], help="behaviour mix (default v2; v1 + --episodes 840 "
                    "--clean-fraction 0.15 rebuilds the first dataset)")
    cr.add_argument("--clean-fraction", type=float, help="share of expert-only episodes (default 0.10)")
    cr.add_argument("--seed", type=int, help="track seed of episode 0 (episode i uses seed+i)")
    cr.add_argument("--workers", type=int, help="collector processes (default 2)")
    cr.add_argument("--frame-size", type=int, help="dataset frame side in pixels (default 64)")
    cr.add_argument("--frame-skip", type=int, help="simulator frames per recorded step (default 4)")
    cr.add_argument("--max-steps", type=int, help="cap on recorded steps per episode (0: none)")
    cr.add_argument("--cameras", help="a camera rig, comma-separated from front,left,rear,right (front first), "
                    "e.g. front,left,rear,right: every shard gains `views` (T, V, S, S, 3); default: front only")
    cr.add_argument("--quiet", action="store_true", help="no progress bar")
    cr.set_defaults(fn=cmd_collect_carracing)

    hw = csub.add_parser("highway", help="highway-env scenarios (highway-fast, merge, roundabout, intersection)",
                         description="Record highway-env driving with continuous actions.")
    hw.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    _add_preset(hw)
    hw.add_argument("--episodes", type=int, help="number of episodes, round-robin over scenarios")
    hw.add_argument("--scenarios", help="comma-separated env ids (default highway-fast-v0,merge-v0,roundabout-v0,intersection-v0)")
    hw.add_argument("--seed", type=int)
    hw.add_argument("--workers", type=int)
    hw.add_argument("--frame-size", type=int)
    hw.add_argument("--max-steps", type=int, help="recorded steps per episode")
    hw.add_argument("--scenario-order", choices=["interleaved", "round_robin"],
                    help="interleaved (default: every scenario in both splits) or round_robin (the shipped highway "
                         "model's dataset: its validation split holds merge and intersection only)")
    hw.add_argument("--quiet", action="store_true")
    hw.set_defaults(fn=cmd_collect_highway)

    # import
    im = sub.add_parser("import", help="turn a logged drive (video + CSV log) into a dataset episode",
                        description="Import VIDEO with its CSV log (time_s, speed_mps, steering by default) "
                        "into the dataset at --out (appends one episode).")
    im.add_argument("video", help="video file readable by OpenCV (mp4, avi, ...)")
    im.add_argument("--log", required=True, help="CSV log with a time column, speed and steering")
    im.add_argument("--out", required=True, help="dataset directory (created or appended to)")
    im.add_argument("--like", choices=["carracing"], help="apply a collector's frame conventions exactly")
    im.add_argument("--return-col", help="log column with the return accumulated so far (a simulator's drive): "
                    "each step's reward is its increase; default: rewards unknown (0)")
    im.add_argument("--fps", type=float, help="dataset frame rate (default 12.5, or the --like source's)")
    im.add_argument("--frame-size", type=int, default=64)
    im.add_argument("--time-col", default="time_s")
    im.add_argument("--speed-col", default="speed_mps")
    im.add_argument("--steering-col", default="steering")
    im.add_argument("--speed-scale", type=float, default=1.0, help="multiply speed by this to get m/s")
    im.add_argument("--steering-scale", type=float, default=1.0,
                    help="multiply steering by this to get [-1, 1] (e.g. 1/540 for degrees of a 540-deg wheel)")
    im.add_argument("--video-fps", type=float, help="override the video's frame rate")
    im.add_argument("--trim-start", type=float, default=0.0, help="seconds to drop from the start")
    im.add_argument("--split", default="train", choices=["train", "val"])
    im.add_argument("--allow-duplicate", action="store_true",
                    help="import a drive already in the dataset (same video, log and options) again")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(fn=cmd_import)

    # data
    d = sub.add_parser("data", help="inspect and check datasets")
    dsub = d.add_subparsers(dest="what", metavar="WHAT", required=True)
    st = dsub.add_parser("stats", help="counts, action/speed distributions and a contact sheet PNG")
    st.add_argument("dir", help="dataset directory")
    st.add_argument("--sheet", help="contact sheet path (default DIR/contact_sheet.png)")
    st.add_argument("--json", help="also write the statistics as JSON here")
    st.set_defaults(fn=cmd_data_stats)
    co = dsub.add_parser("coverage", help="how much of other drives' speed x steering x off-road cells a dataset holds",
                         description="Place every step in a speed x steering x off-road cell (off-road read from "
                         "the frame); report each --against dataset's share of steps whose cell holds enough "
                         "steps of DIR.")
    co.add_argument("dir", help="reference dataset directory (CarRacing frames)")
    co.add_argument("--against", nargs="+", default=[], help="datasets to measure (every split of each)")
    co.add_argument("--split", default="train", choices=["train", "val", "all"], help="reference split")
    co.add_argument("--min-count", type=int, default=20, help="reference steps a cell needs to count as covered")
    co.add_argument("--max-episodes", type=int, help="only the reference split's first N episodes (compare "
                    "datasets of equal size)")
    co.add_argument("--json", help="write the figures here")
    co.add_argument("--plot", help="write the reference's speed x steering heat map here (PNG)")
    co.add_argument("--quiet", action="store_true")
    co.set_defaults(fn=cmd_data_coverage)
    ve = dsub.add_parser("verify", help="read back every shard and report the first corrupt one")
    ve.add_argument("dir")
    ve.add_argument("--quiet", action="store_true")
    ve.set_defaults(fn=cmd_data_verify)
    sc = dsub.add_parser("scripted", help="score the clean scripted driver in the real CarRacing-v3")
    sc.add_argument("--episodes", type=int, default=10)
    sc.add_argument("--seed", type=int, default=HELD_OUT_FROM,
                    help="first track seed (default 1000000: outside every collected range)")
    sc.add_argument("--workers", type=int, default=2)
    sc.add_argument("--frame-skip", type=int, default=4)
    sc.add_argument("--json", help="merge the result into this JSON file (e.g. results/data.json)")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(fn=cmd_data_scripted)
    bc = dsub.add_parser("bench", help="collection speed vs the raw simulator, measured in one run")
    bc.add_argument("--seconds", type=float, default=60.0, help="seconds for each of the two measurements")
    bc.add_argument("--workers", type=int, default=2, help="processes for each measurement")
    bc.add_argument("--frame-skip", type=int, default=4)
    bc.add_argument("--json", help="merge the result into this JSON file (e.g. results/data.json)")
    bc.set_defaults(fn=cmd_bench_collect)
