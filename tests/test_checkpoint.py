"""gaia_gym.checkpoint: save/load round trip and every bad-file case raising ModelFileError naming the path."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from gaia_gym import checkpoint as ck
from gaia_gym.checkpoint import load_model, read_model_info, save_model
from gaia_gym.errors import ModelFileError


@dataclass(frozen=True)
class TinyConfig:
    channels: int = 8
    hidden: tuple[int, ...] = (4, 2)


class TiedAE(nn.Module):
    """A conv autoencoder whose decoder reuses the encoder's kernel (a tied, shared-storage tensor)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.enc = nn.Conv2d(3, cfg.channels, 4, 2, 1)
        self.norm = nn.GroupNorm(1, cfg.channels)
        self.dec = nn.ConvTranspose2d(cfg.channels, 3, 4, 2, 1)
        self.dec.weight = self.enc.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return self.dec(torch.relu(self.norm(self.enc(x)))) * self.scale

    def compute_loss(self, batch):
        loss = (self(batch["x"]) - batch["x"]).pow(2).mean()
        return loss, {"mse": float(loss.detach())}


def build(d: dict) -> TiedAE:
    d = dict(d, hidden=tuple(d["hidden"]))
    return TiedAE(TinyConfig(**d))


@pytest.fixture()
def saved(tmp_path: Path):
    torch.manual_seed(0)
    model = TiedAE(TinyConfig())
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)  # non-default values everywhere
    d = tmp_path / "tok"
    save_model(d, model, "tokenizer", model.cfg, meta={"step": 7, "metrics": {"mse": 0.25}})
    return d, model


def test_round_trip_identical(saved):
    d, model = saved
    x = torch.rand(2, 3, 16, 16)
    for path in (d, d / ck.CONFIG, d / ck.WEIGHTS, str(d)):
        loaded, config, meta = load_model(path, "tokenizer", build)
        assert config == {"channels": 8, "hidden": [4, 2]}
        assert meta == {"step": 7, "metrics": {"mse": 0.25}}
        ref, got = model.state_dict(), loaded.state_dict()
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.equal(ref[k], got[k]), k
        assert torch.equal(model.eval()(x), loaded(x))
        assert loaded.dec.weight is loaded.enc.weight  # still tied
        assert not loaded.training
    # the tied kernel is stored once
    with safe_open(d / ck.WEIGHTS, "pt") as f:
        keys = set(f.keys())
    assert "enc.weight" in keys and "dec.weight" not in keys
    info = read_model_info(d)
    assert info["kind"] == "tokenizer" and info["weights"]["bytes"] == (d / ck.WEIGHTS).stat().st_size


def test_wrapped_and_strided_models_save_clean_names(tmp_path: Path):
    torch.manual_seed(1)
    model = TiedAE(TinyConfig(channels=4)).to(memory_format=torch.channels_last)
    wrapped = nn.DataParallel(model)  # stands in for DDP: a `module.` wrapper
    save_model(tmp_path, wrapped, "tokenizer", model.cfg)
    loaded, _, _ = load_model(tmp_path, "tokenizer", build)
    assert not any(k.startswith("module.") for k in loaded.state_dict())
    assert torch.equal(loaded.enc.weight, model.enc.weight)
    target = nn.DataParallel(TiedAE(TinyConfig(channels=4)))  # loading into a wrapped model works too
    ck.load_weights_into(target, tmp_path)
    assert torch.equal(target.module.norm.bias, model.norm.bias)


def test_overwrite_keeps_pair_consistent(saved):
    d, model = saved
    with torch.no_grad():
        model.enc.bias.add_(1.0)
    save_model(d, model, "tokenizer", model.cfg, meta={"step": 8})
    loaded, _, meta = load_model(d, "tokenizer", build)
    assert meta["step"] == 8 and torch.equal(loaded.enc.bias, model.enc.bias)
    assert not list(d.glob(".*.tmp"))


def _raises(path_part, fn, *args, match=None):
    with pytest.raises(ModelFileError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path_part) in msg, msg
    if match:
        assert match in msg, msg
    return msg


def test_missing_paths(tmp_path: Path, saved):
    d, _ = saved
    _raises(tmp_path / "nope", load_model, tmp_path / "nope", "tokenizer", build, match="does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(empty, load_model, empty, "tokenizer", build, match="no config.json")
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    _raises(other, load_model, other, "tokenizer", build)
    (d / ck.WEIGHTS).unlink()
    _raises(d / ck.WEIGHTS, load_model, d, "tokenizer", build, match="missing")


def test_truncated_and_corrupt_weights(saved):
    d, _ = saved
    w = d / ck.WEIGHTS
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    _raises(w, load_model, d, "tokenizer", build, match="truncated")
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    w.write_bytes(bytes(flipped))
    _raises(w, load_model, d, "tokenizer", build, match="sha256")
    # without the recorded size/hash, safetensors' own error is rephrased
    info = json.loads((d / ck.CONFIG).read_text())
    info["weights"] = {"file": ck.WEIGHTS}
    (d / ck.CONFIG).write_text(json.dumps(info))
    w.write_bytes(data[: len(data) // 2])
    _raises(w, load_model, d, "tokenizer", build, match="corrupt")
    w.write_bytes(b"\x07")
    _raises(w, load_model, d, "tokenizer", build, match="corrupt")


def test_wrong_kind(saved):
    d, _ = saved
    msg = _raises(d, load_model, d, "world_model", build)
    assert "is a tokenizer file, expected a world_model" in msg
    assert load_model(d, None, build)[0] is not None  # kind=None accepts any


def test_foreign_and_newer_config(saved):
    d, _ = saved
    cfg = d / ck.CONFIG
    good = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    _raises(cfg, load_model, d, "tokenizer", build, match="not a gaia_gym model")
    cfg.write_text("{not json")
    _raises(cfg, read_model_info, d, match="corrupt")
    cfg.write_text(json.dumps(dict(good, version=ck.FORMAT_VERSION + 1)))
    _raises(cfg, load_model, d, "tokenizer", build, match="version")
    bad = dict(good)
    del bad["config"]
    cfg.write_text(json.dumps(bad))
    _raises(cfg, read_model_info, d, match="'config'")


def test_shape_and_name_mismatch(saved):
    d, _ = saved
    msg = _raises(d / ck.WEIGHTS, load_model, d, "tokenizer", lambda c: build(dict(c, channels=4)))
    assert "enc.weight" in msg and "shape" in msg

    class Extra(TiedAE):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.head = nn.Linear(2, 2)

    msg = _raises(d / ck.WEIGHTS, load_model, d, "tokenizer", lambda c: Extra(TinyConfig(c["channels"])))
    assert "missing head.bias, head.weight" in msg


def test_save_rejects_bad_inputs(tmp_path: Path):
    model = TiedAE(TinyConfig())
    with pytest.raises(ValueError):
        save_model(tmp_path, model, "", model.cfg)
    with pytest.raises(TypeError):
        save_model(tmp_path, model, "tokenizer", object())
    with pytest.raises(TypeError):
        save_model(tmp_path, model, "tokenizer", asdict(model.cfg), meta={"x": object()})
    assert not (tmp_path / ck.CONFIG).exists()


# ----------------------------------------------------------------------------------------------
# a save is one transaction (see gaia_gym.fileio.atomic_write_files)
# ----------------------------------------------------------------------------------------------
def test_same_weights_same_bytes(tmp_path: Path, saved):
    """The weights file is canonical: re-saving the same model gives the same sha256 (probe.py relies
    on it; safetensors alone writes its metadata in hash order)."""
    d, model = saved
    data = (d / ck.WEIGHTS).read_bytes()
    for i in range(5):
        info = save_model(tmp_path / f"again{i}", model, "tokenizer", model.cfg, meta={"i": i})
        assert (tmp_path / f"again{i}" / ck.WEIGHTS).read_bytes() == data
        assert info["weights"]["sha256"] == read_model_info(d)["weights"]["sha256"]


def test_extra_files_join_the_transaction(tmp_path: Path, saved):
    d, model = saved
    seen = {}

    def extra(info):
        seen.update(info)
        return {"state.bin": lambda f: f.write(info["weights"]["sha256"].encode())}

    (d / "sources.json").write_text("{}")
    info = save_model(d, model, "tokenizer", model.cfg, meta={"step": 9}, extra=extra)
    assert seen == info and (d / "state.bin").read_text() == info["weights"]["sha256"]
    assert sorted(p.name for p in d.iterdir()) == sorted([ck.CONFIG, ck.WEIGHTS, "sources.json", "state.bin"])
    with pytest.raises(ValueError, match="overwrite"):
        save_model(d, model, "tokenizer", model.cfg, extra=lambda info: {ck.CONFIG: lambda f: None})


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_interrupted_save_loads_old_or_new_whole(tmp_path: Path, saved, monkeypatch, fail_at):
    """A save stopped at its Nth rename (1: the commit; 2, 3: publishing weights, config.json) loads
    complete: the old model before the commit, the new one after; the next save rolls it forward."""
    d, model = saved
    with torch.no_grad():
        model.enc.bias.add_(1.0)
    real, calls = __import__("os").replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr("os.replace", flaky)
    with pytest.raises(OSError, match="killed"):
        save_model(d, model, "tokenizer", model.cfg, meta={"step": 8})
    monkeypatch.undo()
    for path in (d, d / ck.CONFIG, d / ck.WEIGHTS):
        loaded, _, meta = load_model(path, "tokenizer", build)
        assert meta["step"] == (7 if fail_at == 1 else 8)
        assert torch.equal(loaded.enc.bias, model.enc.bias) == (fail_at != 1)
    save_model(d, model, "tokenizer", model.cfg, meta={"step": 9})
    assert load_model(d, "tokenizer", build)[2]["step"] == 9
    assert sorted(p.name for p in d.iterdir()) == [ck.CONFIG, ck.WEIGHTS]


def test_first_save_interrupted_while_publishing(tmp_path: Path, monkeypatch):
    model = TiedAE(TinyConfig())
    real, calls = __import__("os").replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr("os.replace", flaky)
    with pytest.raises(OSError):
        save_model(tmp_path, model, "tokenizer", model.cfg, meta={"step": 1})
    monkeypatch.undo()
    assert not (tmp_path / ck.CONFIG).exists()  # only the pending set has the model yet
    for path in (tmp_path, tmp_path / ck.CONFIG, tmp_path / ck.WEIGHTS):
        assert load_model(path, "tokenizer", build)[2] == {"step": 1}


def test_bad_header_metadata(saved):
    d, _ = saved
    w = d / ck.WEIGHTS
    data = w.read_bytes()
    import struct
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for meta in ({"gaia_gym.aliases": "[1]"}, {"gaia_gym.aliases": "{not json"}, {"gaia_gym.aliases": '{"a": 3}'}):
        h = json.dumps(dict(header, __metadata__=meta)).encode()
        h += b" " * (-len(h) % 8)
        w.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])
        info = json.loads((d / ck.CONFIG).read_text())
        info["weights"] = {"file": ck.WEIGHTS}
        (d / ck.CONFIG).write_text(json.dumps(info))
        _raises(w, load_model, d, "tokenizer", build, match="corrupt")


def test_load_retries_when_a_save_lands_between_its_reads(saved, monkeypatch):
    d, model = saved
    real, calls = ck.read_weights, []

    def racing(directory, info=None):
        if not calls:  # a trainer publishes a new checkpoint after load_model read config.json
            calls.append(1)
            with torch.no_grad():
                model.enc.bias.add_(1.0)
            save_model(d, model, "tokenizer", model.cfg, meta={"step": 8})
        return real(directory, info)

    monkeypatch.setattr(ck, "read_weights", racing)
    loaded, _, meta = load_model(d, "tokenizer", build)
    assert meta["step"] == 8 and torch.equal(loaded.enc.bias, model.enc.bias)
