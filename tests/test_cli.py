"""Every CLI verb, run as README.md and docs/cli.md show it: required arguments only, plus the knobs that
only shrink the work (steps, clips, seconds) — never a path the verb should find by itself. Run from a
directory other than the repository's, so nothing is found relative to the working directory by accident."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset
from gaia_gym.cli import main


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data(work) -> Path:
    return make_dataset(work / "data", train=(40,) * 4, val=(40,) * 2)


def run(*argv: str) -> None:
    assert main([str(a) for a in argv]) == 0, f"gaia-gym {' '.join(map(str, argv))} failed"


def test_entry_point_help_and_version():
    out = subprocess.run([sys.executable, "-m", "gaia_gym.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout and "pretrain" in out.stdout


def test_data_verbs(data, work, monkeypatch):
    monkeypatch.chdir(work)
    run("data", "stats", data)
    run("data", "verify", data)


def test_eval_world_model_without_model_uses_the_shipped_one(data, work, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizer").mkdir()  # a stray ./tokenizer must not be picked up
    run("eval", "world-model", "--data", data, "--max-clips", "2", "--real-seconds", "0", "--throughput-seconds", "0",
        "--json", tmp_path / "wm.json", "--quiet")
    r = json.loads((tmp_path / "wm.json").read_text())
    assert np.isfinite(r["val_cross_entropy"]) and "gaia_gym/assets/world_model" in r["model"]


def test_eval_tokenizer_without_model(data, work, monkeypatch):
    monkeypatch.chdir(work)
    run("eval", "tokenizer", "--data", data, "--max-frames", "16", "--quiet")


def test_train_then_eval_from_elsewhere(data, work, monkeypatch, tmp_path):
    """`train world-model --tokenizer ../R` then using the model from another directory (and moved)."""
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    monkeypatch.chdir(runs)
    run("train", "tokenizer", "--data", data, "--out", "tok", "--preset", "tiny", "--steps", "2", "--quiet")
    sub = runs / "sub"
    sub.mkdir(exist_ok=True)
    monkeypatch.chdir(sub)
    run("train", "world-model", "--data", data, "--tokenizer", "../tok", "--out", "../wm", "--preset", "tiny",
        "--steps", "2", "--quiet")
    moved = tmp_path / "moved_wm"
    (runs / "wm").rename(moved)
    monkeypatch.chdir(tmp_path)
    run("eval", "world-model", "--data", data, "--model", moved, "--max-clips", "2", "--real-seconds", "0",
        "--throughput-seconds", "0", "--quiet")
    run("imagine", "--model", moved, "--out", tmp_path / "x.gif", "--steps", "2", "--futures", "1")


def test_world_verbs_with_the_shipped_model(work, monkeypatch, tmp_path, headless):
    monkeypatch.chdir(tmp_path)
    run("demo")
    assert (tmp_path / "gaia_demo.gif").exists()
    run("imagine", "--out", tmp_path / "i.gif", "--steps", "2")
    run("play", "--keys", "LR", "--steps", "2")
    run("bench", "--batch-sizes", "1", "--seconds", "0.1", "--real-seconds", "0.5", "--json", tmp_path / "b.json")
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["batches"]["1"]["tokens_steps_per_s"] > 0


def test_train_probe(data, work, monkeypatch):
    monkeypatch.chdir(work)
    run("train", "probe", "--data", data, "--out", work / "probe", "--steps", "2", "--minutes", "0.2", "--quiet")


def test_collect_import_scripted_with_tiny_presets(work, monkeypatch, tmp_path):
    pytest.importorskip("Box2D")
    monkeypatch.chdir(tmp_path)
    run("collect", "carracing", "--out", tmp_path / "cr", "--preset", "tiny", "--episodes", "1", "--workers", "1")
    run("data", "scripted", "--episodes", "1", "--workers", "1", "--quiet")


def test_import_a_drive(work, monkeypatch, tmp_path):
    import cv2

    video, log = tmp_path / "drive.avi", tmp_path / "drive.csv"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.5, (64, 64))
    for i in range(30):
        w.write(np.full((64, 64, 3), 8 * i % 255, np.uint8))
    w.release()
    log.write_text("time_s,speed_mps,steering\n" + "".join(f"{i / 12.5:.3f},{i % 10},0.1\n" for i in range(30)))
    monkeypatch.chdir(tmp_path)
    run("import", video, "--log", log, "--out", tmp_path / "mine")


def test_fast_model_pipeline_train_decoder_world_model_export_bench(data, work, monkeypatch, tmp_path):
    """The faster model's commands (docs/performance.md): a narrower decoder for a tokenizer, a patch-4 world
    model with the digit embedding on its codes, both exported into one directory, benched in int8."""
    monkeypatch.chdir(tmp_path)
    run("train", "tokenizer", "--data", data, "--out", "tok", "--preset", "tiny", "--steps", "2", "--quiet")
    run("train", "decoder", "--data", data, "--tokenizer", "tok", "--out", "dec", "--channels", "8", "8", "4",
        "--steps", "2", "--quiet")
    run("train", "world-model", "--data", data, "--tokenizer", "tok", "--out", "wm", "--preset", "tiny",
        "--patch", "4", "--embedding", "digits", "--steps", "2", "--quiet")
    run("export", "--model", "wm", "--decoder", "dec", "--out", "fast")
    run("bench", "--model", "fast", "--int8", "--batch-sizes", "2", "--seconds", "0.05", "--real-seconds", "0.5",
        "--json", "bench.json", "--quiet")
    r = json.loads(Path("bench.json").read_text())
    assert r["int8"] and r["decoder"] == [8, 8, 4] and r["tokens_per_step"] == (8 // 4) ** 2 + 2  # 8x8 tokens in 4x4 patches + 2 actions


def test_eval_world_model_int8(data, work, monkeypatch, tmp_path, model_dir):
    monkeypatch.chdir(tmp_path)
    run("eval", "world-model", "--data", data, "--model", model_dir, "--int8", "--max-clips", "2",
        "--real-seconds", "0", "--throughput-seconds", "0", "--json", tmp_path / "q.json", "--quiet")
    r = json.loads((tmp_path / "q.json").read_text())
    assert r["int8"] is True and np.isfinite(r["val_cross_entropy"])
