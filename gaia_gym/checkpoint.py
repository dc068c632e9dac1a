"""The model file format: one place that reads and writes it.

A model is a directory::

    DIR/
      model.safetensors      # weights only (safetensors: no pickle, nothing executes on load)
      config.json            # what the weights are and how to rebuild the module around them

``config.json`` holds::

    {"format": "gaia_gym.model", "version": 1,
     "kind": "tokenizer" | "world_model" | ...,      # which model family the weights belong to
     "config": {...},                               # the model's config dataclass as JSON
     "meta": {...},                                 # free-form: training step, metrics, data used...
     "weights": {"file": "model.safetensors", "bytes": N, "sha256": "..."}}

A save is one transaction over all of its files (`gaia_gym.fileio.atomic_write_files`): they are
written and fsynced into ``DIR/.pending.PID.tmp/``, committed together by renaming that to
``DIR/.pending/``, then each renamed into DIR (weights first, ``config.json`` last) and ``.pending/``
removed. Readers here take each file from ``.pending/`` while it is still there, else from DIR, so a
save killed at any point leaves the previous model or the new one, complete, never a mix (the next
save rolls the interrupted publish forward). A save may carry more files of the same checkpoint
(training state: `save_model(extra=...)`); anything else in DIR (tb/, sources.json, tokenizer/...)
is left alone. In steady state DIR holds exactly the files above: nothing to know for other tools;
code that opens DIR's files itself (rather than through `read_model_info` / `read_weights` /
`load_model`) may see a half-published pair after a kill until the next save or training run
rolls it forward.

The weights file is canonical (its header written with sorted keys), so the same weights give the
same bytes and sha256 on every save.

``config.json`` also records the size and sha256 of the weights it describes: a truncated, corrupt or
mismatched weights file (copied by hand, or written by an older gaia_gym killed between its renames)
is detected on load instead of silently producing a broken model. Every problem raises
`ModelFileError` with a one-line message naming the offending path.

Tensors that share storage (tied weights) are stored once; the other names are recorded as aliases in
the safetensors header and restored on load. Wrappers (DistributedDataParallel's ``module.``,
``torch.compile``'s ``_orig_mod.``) are stripped, so a file never depends on how the model was trained.
"""

from __future__ import annotations

import hashlib
import json
import struct
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.fileio import PENDING, atomic_write_files, current_path, exists_current, read_current

FORMAT_NAME = "gaia_gym.model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ALIASES_KEY = "gaia_gym.aliases"  # safetensors header metadata: JSON {alias name: stored name}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefix(name: str) -> str:
    """``module._orig_mod.enc.weight`` -> ``enc.weight``."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def config_to_dict(config: Any) -> dict:
    """A config dataclass (or a dict) as plain JSON data (tuples become lists, as after a JSON round trip)."""
    if is_dataclass(config) and not isinstance(config, type):
        d = asdict(config)
    elif isinstance(config, dict):
        d = dict(config)
    else:
        raise TypeError(f"model config must be a dataclass instance or a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(d))
    except TypeError as e:
        raise TypeError(f"model config is not JSON-serialisable: {e}") from None


def _state_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, {alias: stored name}) from the model's state_dict, ready for safetensors.

    Tensors that are the very same view of one storage (tied weights) are stored once; everything else
    is made a contiguous CPU tensor that owns its storage (safetensors refuses shared or strided memory).
    """
    state = unwrap_model(model).state_dict()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for raw_name, t in state.items():
        name = strip_wrapper_prefix(raw_name)
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach()
        if t.numel() > 0:
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                   tuple(t.stride()), t.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        # clone: a tensor owning exactly its own bytes, in the standard (row-major) layout
        tensors[name] = t.to("cpu", copy=True, memory_format=torch.contiguous_format)
    return tensors, aliases


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if meta is not None and not isinstance(meta, dict):
            raise ConfigError("__metadata__ is not an object")
        return dict(meta or {})
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFileError(f"corrupt weights file {path}: unreadable header ({e})") from None


def _canonical(data: bytes) -> bytes:
    """A safetensors file with its JSON header re-written with sorted keys: safetensors writes the
    ``__metadata__`` map in hash order, so the same weights would give a different sha256 per save."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


def _one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (first line, shortened)."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# paths and info
# ----------------------------------------------------------------------------------------------
def model_dir(path: str | Path) -> Path:
    """The model directory for `path`: the directory itself, or the parent of config.json / model.safetensors."""
    path = Path(path)
    if path.name in (WEIGHTS, CONFIG) and not path.is_dir() and exists_current(path.parent, path.name):
        return path.parent  # (also when a first save was interrupted while publishing: only .pending/ has it)
    if not path.exists():
        raise ModelFileError(f"model path {path} does not exist")
    if path.is_dir():
        return path
    raise ModelFileError(f"{path} is not a gaia_gym model (expected a directory, {CONFIG} or {WEIGHTS})")


def read_model_info(path: str | Path) -> dict:
    """Validated contents of a model's config.json (`path`: the directory or either file)."""
    directory = model_dir(path)
    cfg_path = current_path(directory, CONFIG)
    try:
        info = json.loads(read_current(directory, CONFIG).decode())
    except FileNotFoundError:
        raise ModelFileError(f"{directory} is not a gaia_gym model (no {CONFIG})") from None
    except OSError as e:
        raise ModelFileError(f"cannot read model config {cfg_path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"corrupt model config {cfg_path}: {_one_line(e)}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        fmt = info.get("format") if isinstance(info, dict) else None
        raise ModelFileError(f"{cfg_path} is not a gaia_gym model config (format={fmt!r})")
    version = info.get("version")
    if not isinstance(version, int):
        raise ModelFileError(f"{cfg_path} has no valid format version (version={version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{cfg_path} has format version {version}, this gaia_gym reads <= {FORMAT_VERSION}")
    for key, typ in (("kind", str), ("config", dict), ("meta", dict), ("weights", dict)):
        if not isinstance(info.get(key), typ):
            raise ModelFileError(f"{cfg_path} is incomplete: {key!r} missing or not a {typ.__name__}")
    return info


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------
def save_model(directory: str | Path, model: nn.Module, kind: str, config: Any, meta: dict | None = None,
               extra: Callable[[dict], dict[str, Callable]] | None = None) -> dict:
    """Write `model`'s weights and its config/meta to DIR as one transaction; returns the config.json contents.

    `config` is the model's config dataclass (or a dict); `meta` any JSON-serialisable facts (training
    step, metrics, data used...). `extra(info)` (called with the config.json contents, so a file can
    record the weights' sha256) returns {file name: write_fn(fileobj)}: more files of the same
    checkpoint (a training state), complete or absent together with the model. See the module docstring.
    """
    import safetensors.torch as st

    if not kind or not isinstance(kind, str):
        raise ConfigError(f"model kind must be a non-empty string, got {kind!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_d = config_to_dict(config)
    try:
        meta_d = json.loads(json.dumps(meta or {}))
    except TypeError as e:
        raise TypeError(f"model meta is not JSON-serialisable: {e}") from None

    tensors, aliases = _state_tensors(model)
    data = _canonical(st.save(tensors, metadata={ALIASES_KEY: json.dumps(aliases, sort_keys=True), "kind": kind}))
    del tensors
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kind": kind,
        "config": config_d,
        "meta": meta_d,
        "weights": {"file": WEIGHTS, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    extra_files = dict(extra(info)) if extra is not None else {}
    for name in extra_files:
        if name in (WEIGHTS, CONFIG):
            raise ConfigError(f"save_model: extra file {name!r} would overwrite the model's own")
    config_bytes = json.dumps(info, indent=1).encode()
    atomic_write_files(directory, {WEIGHTS: lambda f: f.write(data), **extra_files,
                                   CONFIG: lambda f: f.write(config_bytes)})  # config.json published last
    return info


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def read_weights(path: str | Path, info: dict | None = None) -> dict[str, torch.Tensor]:
    """The checked state dict (CPU tensors, aliases restored) of a model directory or file."""
    import safetensors
    import safetensors.torch as st

    directory = model_dir(path)
    info = read_model_info(directory) if info is None else info
    w_path = current_path(directory, WEIGHTS)
    try:
        data = read_current(directory, WEIGHTS)
    except FileNotFoundError:
        raise ModelFileError(f"model {directory} has {CONFIG} but its weights {directory / WEIGHTS} "
                             f"are missing") from None
    except OSError as e:
        raise ModelFileError(f"cannot read weights {w_path}: {e.strerror or e}") from None
    rec = info["weights"]
    if "bytes" in rec and len(data) != rec["bytes"]:
        raise ModelFileError(f"weights {w_path} are {len(data)} bytes, {CONFIG} recorded {rec['bytes']} "
                             f"(truncated, or replaced by an interrupted save)")
    if "sha256" in rec and hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise ModelFileError(f"weights {w_path} do not match the sha256 recorded in {CONFIG} "
                             f"(corrupt, or replaced by an interrupted save)")
    try:
        state = st.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ModelFileError(f"corrupt weights file {w_path}: {_one_line(e)}") from None
    meta = _header_metadata(data, w_path)
    del data
    try:
        aliases = json.loads(meta.get(ALIASES_KEY, "{}"))
    except (json.JSONDecodeError, TypeError):
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ModelFileError(f"corrupt weights file {w_path}: bad alias table in header")
    state = {strip_wrapper_prefix(k): v for k, v in state.items()}
    for alias, target in aliases.items():
        if target not in state:
            raise ModelFileError(f"corrupt weights file {w_path}: alias {alias} -> missing tensor {target}")
        state[alias] = state[target]
    return state


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a config field's type (int, float, bool, str, tuples, optionals; other
    types, e.g. nested configs stored as objects, are left to the config class)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return True
    return True


def check_config(stored: dict, cls: type, where: str | Path) -> None:
    """ModelFileError naming `where` for a stored config with a key `cls` (a config dataclass) does not
    have or a value whose type does not fit its field ("256" for an int, 4.5 for an int)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(k for k in stored if k not in names)
    if unknown:
        raise ModelFileError(f"{where}: unknown config key {', '.join(map(repr, unknown))} for {cls.__name__}")
    for k, v in stored.items():
        if k in hints and not _fits(v, hints[k]):
            want = getattr(hints[k], "__name__", str(hints[k]))
            raise ModelFileError(f"{where}: config {k!r} is {v!r}, expected {want}")


def _fmt_keys(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights_into(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Copy a model file's weights into an existing `model` (wrappers allowed), checking names and shapes."""
    target = unwrap_model(model)
    where = model_dir(path) / WEIGHTS
    state = read_weights(path) if state is None else state
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"missing {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_fmt_keys(unexpected)}")
    if shapes:
        problems.append("shape mismatch " + _fmt_keys(
            [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in shapes], 4))
    if problems:
        raise ModelFileError(f"weights {where} do not fit the built model: {'; '.join(problems)}")
    target.load_state_dict(state, strict=True)


def load_model(
    path: str | Path,
    kind: str | None,
    build: Callable[[dict], nn.Module],
    device: str | torch.device = "cpu",
    config_class: type | None = None,
) -> tuple[nn.Module, dict, dict]:
    """Rebuild a model from DIR (or either of its files): returns (model in eval mode on `device`, config, meta).

    `kind` is the expected model kind (None accepts any); `build(config_dict)` constructs the module
    from the stored config (turn the dict back into the config dataclass there). `config_class` (the
    config dataclass) has the stored config checked first, key by key (else it is checked after `build`
    against the model's ``cfg``): a wrong type or an unknown key is a ModelFileError naming config.json.
    Weights that are not finite are one too. Nothing is unpickled.
    """
    directory = model_dir(path)
    info = read_model_info(directory)
    if kind is not None and info["kind"] != kind:
        raise ModelFileError(f"{directory} is a {info['kind']} file, expected a {kind}")
    try:
        state = read_weights(directory, info)
    except ModelFileError:
        again = read_model_info(directory)
        if again == info:
            raise
        info, state = again, read_weights(directory, again)  # a save published between the two reads
        if kind is not None and info["kind"] != kind:
            raise ModelFileError(f"{directory} is a {info['kind']} file, expected a {kind}") from None
    where = directory / CONFIG
    if config_class is not None and isinstance(info["config"], dict):
        check_config(info["config"], config_class, where)
    try:
        model = build(info["config"])
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:  # a config the model class cannot take
        raise ModelFileError(f"{where}: the config does not fit a {info['kind']} ({_one_line(e)})") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"build() must return an nn.Module, got {type(model).__name__}")
    cfg = getattr(model, "cfg", None)
    if is_dataclass(cfg) and isinstance(info["config"], dict):
        check_config(info["config"], type(cfg), where)
    load_weights_into(model, directory, state)
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # NaN/inf weights would surface later as a raw sampling error in torch
        raise ModelFileError(f"{directory / WEIGHTS}: non-finite values (NaN or inf) in {_fmt_keys(bad)}")
    model.to(device)
    model.eval()
    return model, info["config"], info["meta"]


__all__ = [
    "CONFIG",
    "FORMAT_NAME",
    "PENDING",
    "FORMAT_VERSION",
    "ModelFileError",
    "WEIGHTS",
    "config_to_dict",
    "load_model",
    "load_weights_into",
    "model_dir",
    "read_model_info",
    "read_weights",
    "save_model",
    "strip_wrapper_prefix",
    "unwrap_model",
]
