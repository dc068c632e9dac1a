"""The model directory: default asset paths, component loaders, the sources record and tokenizer lookup.

    MODEL_DIR/
      model.safetensors, config.json   # the world model (gaia_gym.checkpoint format; config.json records its kind)
      prompts.npz                      # the prompt bank: real context clips imagination starts from
      sources.json                     # the `Sources` record: tokenizer (path + sha256), action codec, step seconds
      tokenizer/                       # the tokenizer it was trained with (training copies it in)
      text_encoder/                    # a conditioned model's default text encoder (optional)

A model directory is self-contained and movable. Its tokenizer is looked up, in order, in MODEL_DIR/tokenizer,
at the path recorded in sources.json resolved against MODEL_DIR (never against the working directory), and
("default") the shipped tokenizer; whichever is found must have the sha256 that sources.json records.
Every problem raises `ModelFileError` naming the path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gaia_gym.bundle.kinds import KINDS, TEXT_ENCODER_KIND, TOKENIZER_CONFIGS, TOKENIZER_KIND, TOKENIZER_KINDS, WORLD_MODEL_KIND
from gaia_gym.checkpoint import WEIGHTS, load_model, model_dir, read_model_info
from gaia_gym.errors import ModelFileError
from gaia_gym.fileio import atomic_replace_dir, atomic_write_json, current_path, exists_current, read_json, recover_dir
from gaia_gym.models.layout import ActionCodec

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_TOKENIZER = ASSETS / "tokenizer"
DEFAULT_WORLD_MODEL = ASSETS / "world_model"
DEFAULT_FLOW_WORLD_MODEL = ASSETS / "flow_world_model"
FAST_WORLD_MODEL = ASSETS / "world_model_fast"  # 4x4 patches, digit embedding, narrow decoder (docs/performance.md)
RIG_WORLD_MODEL = ASSETS / "world_model_rig"  # a 4-camera rig over the fast model's design (docs/multiview.md)
HIGHWAY_WORLD_MODEL = ASSETS / "world_model_highway"  # highway-env, conditioned on metadata, agent boxes and text (docs/highway.md)
PROMPTS = "prompts.npz"
TEXT_ENCODER_DIR = "text_encoder"  # a conditioned world model's default text encoder (MODEL_DIR/text_encoder)
SOURCES = "sources.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_STEP_SECONDS = 0.08  # CarRacing: 4 simulator frames at 50 Hz per imagined step


def load_tokenizer(path: str | Path | None = None, device: str | torch.device = "cpu", kind: str | None = TOKENIZER_KIND):
    """A trained tokenizer from its model directory (default: the shipped one). `kind`: "tokenizer"
    (discrete), "vae" (continuous), or None for whichever the directory holds."""
    path = DEFAULT_TOKENIZER if path is None else path
    if kind is None:
        kind = read_model_info(path)["kind"]
        if kind not in TOKENIZER_KINDS:
            raise ModelFileError(f"{path} holds a {kind} model, not a tokenizer (kinds: {', '.join(TOKENIZER_KINDS)})")
    model, _cfg, _meta = load_model(path, kind, TOKENIZER_KINDS[kind], device=device,
                                    config_class=TOKENIZER_CONFIGS.get(kind))
    return model.eval()


def load_world_model(path: str | Path | None = None, device: str | torch.device = "cpu", kind: str | None = WORLD_MODEL_KIND):
    """A trained world model (the transformer alone) from its model directory (default: the shipped one);
    `kind` None accepts either world-model kind."""
    path = DEFAULT_WORLD_MODEL if path is None else path
    if kind is None:
        kind = read_model_info(path)["kind"]
    if kind not in KINDS:
        raise ModelFileError(f"{path} holds a {kind} model, not a world model (kinds: {', '.join(KINDS)})")
    model, _cfg, _meta = load_model(path, kind, KINDS[kind].build, device=device, config_class=KINDS[kind].config)
    return model.eval()


def load_text_encoder(path: str | Path, device: str | torch.device = "cpu"):
    """The default text encoder (`gaia_gym.models.text.HashTextEncoder`) stored in `path`."""
    from gaia_gym.models.text import HashTextEncoder, TextEncoderConfig

    enc, _, _ = load_model(path, TEXT_ENCODER_KIND, lambda c: HashTextEncoder(TextEncoderConfig(**c)), device)
    return enc


def _recorded_sha256(model_path: str | Path) -> str | None:
    """The weights sha256 a model directory's config.json records (None where it records none)."""
    return read_model_info(model_path)["weights"].get("sha256")


def weights_sha256(model_path: str | Path) -> str:
    """The sha256 of a model directory's weights, as its config.json records it."""
    sha = _recorded_sha256(model_path)
    if not sha:
        raise ModelFileError(f"{model_path}: config.json records no weights sha256")
    return sha


# ----------------------------------------------------------------------------------------------
# the sources record
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sources:
    """What a world model was trained from and how to read its actions (MODEL_DIR/sources.json).

    `tokenizer`: "tokenizer" (MODEL_DIR/tokenizer), "default" (the shipped tokenizer), or a path that
    is resolved against MODEL_DIR when relative. `tokenizer_sha256`: the weights it must have."""

    tokenizer_sha256: str
    tokenizer: str = TOKENIZER_DIR
    action_codec: ActionCodec = field(default_factory=ActionCodec)
    step_seconds: float = DEFAULT_STEP_SECONDS
    data: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["action_codec"] = asdict(self.action_codec)
        return json.loads(json.dumps(d))

    def write(self, directory: str | Path) -> Path:
        """Atomically write this record as DIR/sources.json."""
        path = Path(directory) / SOURCES
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, directory: str | Path) -> "Sources":
        path = Path(directory) / SOURCES
        if not path.exists():
            raise ModelFileError(f"{path}: missing (a world-model directory records its tokenizer there)")
        try:
            d = read_json(path)
        except ValueError as e:
            raise ModelFileError(str(e)) from None
        if not isinstance(d, dict):
            raise ModelFileError(f"{path}: holds a JSON {type(d).__name__}, expected an object")
        sha, tok = d.get("tokenizer_sha256"), d.get("tokenizer", TOKENIZER_DIR)
        if not isinstance(sha, str) or not sha:
            raise ModelFileError(f"{path}: 'tokenizer_sha256' missing or not a string")
        if not isinstance(tok, str) or not tok:
            raise ModelFileError(f"{path}: 'tokenizer' is not a path string")
        codec = d.get("action_codec", {})
        step = d.get("step_seconds", DEFAULT_STEP_SECONDS)
        if not isinstance(codec, dict) or not isinstance(codec.get("max_speed_mps", 100.0), (int, float)):
            raise ModelFileError(f"{path}: 'action_codec' must be an object with a numeric max_speed_mps")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise ModelFileError(f"{path}: 'step_seconds' must be a positive number, got {step!r}")
        data = d.get("data")
        return cls(sha, tok, ActionCodec(**{k: v for k, v in codec.items() if k in ("max_speed_mps", "steering_unit")}), float(step),
                   data if isinstance(data, str) else None)


def resolve_tokenizer(directory: Path, sources: Sources, override: str | Path | None = None) -> Path:
    """The tokenizer directory of the world model in `directory` whose weights have the recorded sha256.

    `override` (e.g. `--tokenizer`) is tried alone; otherwise DIR/tokenizer, the recorded path (resolved
    against DIR, never the working directory) and the shipped default, in that order."""
    if override is not None:
        cands = [Path(override)]
    else:
        rec = sources.tokenizer
        recorded = DEFAULT_TOKENIZER if rec == "default" else (Path(rec) if Path(rec).is_absolute() else directory / rec)
        cands = list(dict.fromkeys([directory / TOKENIZER_DIR, recorded, DEFAULT_TOKENIZER]))
    seen = []
    for c in cands:
        recover_dir(c)  # a tokenizer copy interrupted between its two renames
        if not exists_current(c, "config.json"):
            seen.append(f"{c} (none)")
            continue
        sha = _recorded_sha256(c)
        if sha == sources.tokenizer_sha256:
            return c
        seen.append(f"{c} (sha256 {str(sha)[:12]}...)")
    raise ModelFileError(f"{directory}: its tokenizer (sha256 {sources.tokenizer_sha256[:12]}...) was not found: "
                         + "; ".join(seen))


def copy_model_dir(src: str | Path, dst: str | Path) -> Path:
    """Copy a model directory's config.json + weights to `dst`, swapped in whole (complete or absent)."""
    src = model_dir(src)
    read_model_info(src)

    def fill(tmp: Path) -> None:
        for name in ("config.json", WEIGHTS):  # the current version, also mid-publish of a checkpoint
            shutil.copy2(current_path(src, name), tmp / name)

    atomic_replace_dir(dst, fill)
    return Path(dst)


def record_training_sources(out: str | Path, tokenizer_dir: str | Path, codec: ActionCodec, step_seconds: float,
                            data: str | Path | None = None) -> Sources:
    """At the start of world-model training: copy the tokenizer into OUT/tokenizer (so OUT is
    self-contained wherever it is moved) and write OUT/sources.json. Idempotent on resume."""
    out, tokenizer_dir = Path(out), model_dir(tokenizer_dir)
    sha = weights_sha256(tokenizer_dir)
    inside = out / TOKENIZER_DIR
    recover_dir(inside)
    if not (exists_current(inside, "config.json") and _recorded_sha256(inside) == sha):
        copy_model_dir(tokenizer_dir, inside)
    src = Sources(sha, TOKENIZER_DIR, codec, float(step_seconds), None if data is None else str(Path(data).resolve()))
    src.write(out)
    return src

