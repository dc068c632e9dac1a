"""The model directory: one owner of default paths, loading, saving and the sources record.

    MODEL_DIR/
      model.safetensors, config.json   # the world model (gaia_gym.checkpoint format; config.json records its kind)
      prompts.npz                      # the prompt bank: real context clips imagination starts from
      sources.json                     # the `Sources` record: tokenizer (path + sha256), action codec, step seconds
      tokenizer/                       # the tokenizer it was trained with (training copies it in)

Two kinds of world model live in such a directory (config.json's "kind"): "world_model" (the discrete
GAIA-1 design: tokens from an image tokenizer) and "flow_world_model" (the continuous GAIA-2 design:
latents from a VAE; `gaia_gym.models.flow`). `KINDS` says, per kind, how to rebuild the world model,
which kind of tokenizer it reads ("tokenizer" or "vae"; both live in MODEL_DIR/tokenizer) and which
backend the engine talks to. A model directory is self-contained and movable. Its tokenizer is looked up, in order, in MODEL_DIR/tokenizer,
at the path recorded in sources.json resolved against MODEL_DIR (never against the working directory), and
("default") the shipped tokenizer; whichever is found must have the sha256 that sources.json records, on
every load path (`load_bundle` is the only one). Every problem raises `ModelFileError` naming the path.

The prompt bank is GAIA-1's "video prompt": `n` clips of `context` real frames (as latents) with the
actions driven between them; an imagined episode starts from one of them.

Nothing here imports training, evaluation or CLI code: those layers sit above this module.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from gaia_gym.backends import Backend
from gaia_gym.backends.flow import FlowBackend
from gaia_gym.backends.tokens import TokenBackend
from gaia_gym.checkpoint import WEIGHTS, load_model, model_dir, read_model_info, save_model
from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.sims.rig import Camera, cameras_from_names, split_names
from gaia_gym.fileio import (atomic_replace_dir, atomic_write_bytes, atomic_write_json, current_path, exists_current,
                             read_json, recover_dir)
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.flow import FlowWorldModel, build_flow_model
from gaia_gym.models.tokenizer import Tokenizer, build_tokenizer
from gaia_gym.models.vae import build_vae
from gaia_gym.models.world_model import WorldModel, build_world_model

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_TOKENIZER = ASSETS / "tokenizer"
DEFAULT_WORLD_MODEL = ASSETS / "world_model"
DEFAULT_FLOW_WORLD_MODEL = ASSETS / "flow_world_model"
FAST_WORLD_MODEL = ASSETS / "world_model_fast"  # 4x4 patches, digit embedding, narrow decoder (docs/performance.md)
RIG_WORLD_MODEL = ASSETS / "world_model_rig"  # a 4-camera rig over the fast model's design (docs/multiview.md)
HIGHWAY_WORLD_MODEL = ASSETS / "world_model_highway"  # highway-env, conditioned on metadata, agent boxes and text (docs/highway.md)
TOKENIZER_KIND = "tokenizer"
VAE_KIND = "vae"
WORLD_MODEL_KIND = "world_model"
FLOW_WORLD_MODEL_KIND = "flow_world_model"
PROMPTS = "prompts.npz"
TEXT_ENCODER_DIR = "text_encoder"  # a conditioned world model's default text encoder (MODEL_DIR/text_encoder)
TEXT_ENCODER_KIND = "text_encoder"
SOURCES = "sources.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_STEP_SECONDS = 0.08  # CarRacing: 4 simulator frames at 50 Hz per imagined step



@dataclass(frozen=True)
class Kind:
    """How a world-model kind is rebuilt and driven: its builder, its tokenizer's kind and builder, and
    the backend (the engine's seam) over the two."""

    build: Callable
    tokenizer_kind: str
    build_tokenizer: Callable
    backend: Callable[..., Backend]
    model_class: type


# model kind (config.json "kind") -> how it loads and how the engine talks to it (the backend seam)
KINDS: dict[str, Kind] = {
    WORLD_MODEL_KIND: Kind(build_world_model, TOKENIZER_KIND, build_tokenizer, TokenBackend, WorldModel),
    FLOW_WORLD_MODEL_KIND: Kind(build_flow_model, VAE_KIND, build_vae, FlowBackend, FlowWorldModel),
}
TOKENIZER_KINDS = {v.tokenizer_kind: v.build_tokenizer for v in KINDS.values()}


def kind_of(world_model) -> str:
    """The kind string of a world-model instance ("world_model" or "flow_world_model")."""
    for name, k in KINDS.items():
        if isinstance(world_model, k.model_class):
            return name
    raise ConfigError(f"{type(world_model).__name__} is not a gaia_gym world model")


def make_backend(world_model, tokenizer, **options) -> Backend:
    """The engine's backend over a world model and its tokenizer, whichever kind they are (`options`:
    the backend's own, e.g. ``steps=4`` for a flow model)."""
    return KINDS[kind_of(world_model)].backend(world_model, tokenizer, **options)


def load_tokenizer(path: str | Path | None = None, device: str | torch.device = "cpu", kind: str | None = TOKENIZER_KIND):
    """A trained tokenizer from its model directory (default: the shipped one). `kind`: "tokenizer"
    (discrete), "vae" (continuous), or None for whichever the directory holds."""
    path = DEFAULT_TOKENIZER if path is None else path
    if kind is None:
        kind = read_model_info(path)["kind"]
        if kind not in TOKENIZER_KINDS:
            raise ModelFileError(f"{path} holds a {kind} model, not a tokenizer (kinds: {', '.join(TOKENIZER_KINDS)})")
    model, _cfg, _meta = load_model(path, kind, TOKENIZER_KINDS[kind], device=device)
    return model.eval()


def load_world_model(path: str | Path | None = None, device: str | torch.device = "cpu", kind: str | None = WORLD_MODEL_KIND):
    """A trained world model (the transformer alone) from its model directory (default: the shipped one);
    `kind` None accepts either world-model kind."""
    path = DEFAULT_WORLD_MODEL if path is None else path
    if kind is None:
        kind = read_model_info(path)["kind"]
    if kind not in KINDS:
        raise ModelFileError(f"{path} holds a {kind} model, not a world model (kinds: {', '.join(KINDS)})")
    model, _cfg, _meta = load_model(path, kind, KINDS[kind].build, device=device)
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


def stored_latents(a: np.ndarray) -> torch.Tensor:
    """Stored latents -> a tensor: uint16 tokens as int64, float latents as float32."""
    return torch.from_numpy(a.astype(np.float32 if np.issubdtype(a.dtype, np.floating) else np.int64))


@dataclass
class PromptBank:
    """Real context clips: `tokens` (N, C, *L) -- each frame's latent: int64 tokens (g, g) for the
    discrete backend, float latents for a continuous one -- and actions (N, C, A) float32 (model units),
    and optionally what really happened next (next_tokens (N, F, *L), next_actions (N, F, A)) so a demo
    can show the real continuation beside the imagined ones."""

    tokens: torch.Tensor
    actions: torch.Tensor
    next_tokens: torch.Tensor | None = None
    next_actions: torch.Tensor | None = None
    metadata: torch.Tensor | None = None  # (N, F) int64: a conditioned model's scene metadata of each clip

    def __post_init__(self) -> None:
        if self.tokens.dim() < 3 or self.actions.dim() != 3 or self.tokens.shape[:2] != self.actions.shape[:2]:
            raise ConfigError(f"prompt bank shapes do not fit: tokens {tuple(self.tokens.shape)}, "
                             f"actions {tuple(self.actions.shape)}")
        if (self.next_tokens is None) != (self.next_actions is None) or (
                self.next_tokens is not None and self.next_tokens.shape[:2] != self.next_actions.shape[:2]):
            raise ConfigError("prompt bank continuation: next_tokens and next_actions must come together")

    @property
    def continuation(self) -> int:
        return 0 if self.next_tokens is None else self.next_tokens.shape[1]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def context(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write the bank as one .npz, atomically (integer tokens as uint16, float latents as float32)."""
        def store(t: torch.Tensor) -> np.ndarray:
            return t.numpy().astype(np.float32 if t.is_floating_point() else np.uint16)

        buf = io.BytesIO()
        extra = {} if self.next_tokens is None else {"next_tokens": store(self.next_tokens),
                                                      "next_actions": self.next_actions.numpy()}
        if self.metadata is not None:
            extra["metadata"] = self.metadata.numpy().astype(np.int64)
        np.savez_compressed(buf, tokens=store(self.tokens), actions=self.actions.numpy(), **extra)
        atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PromptBank":
        path = Path(path)
        try:
            with np.load(path) as z:
                nxt = {}
                if "next_tokens" in z:
                    nxt = {"next_tokens": stored_latents(z["next_tokens"]),
                           "next_actions": torch.from_numpy(z["next_actions"].astype(np.float32))}
                if "metadata" in z:
                    nxt["metadata"] = torch.from_numpy(z["metadata"].astype(np.int64))
                return cls(stored_latents(z["tokens"]), torch.from_numpy(z["actions"].astype(np.float32)), **nxt)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no prompt bank (run training, or `gaia-gym pretrain`, to write one)") from None
        except Exception as e:  # zip / key / shape errors: the file is not a prompt bank
            raise ModelFileError(f"{path}: not a readable prompt bank ({type(e).__name__}: {e})") from None

    @classmethod
    def from_token_file(cls, path: str | Path, context: int, n: int = 64, seed: int = 0,
                        min_speed_action: float = -0.9, continuation: int = 16,
                        metadata: np.ndarray | None = None) -> "PromptBank":
        """`n` clips of `context` (+ `continuation`) steps from a tokenized split (`tokenize_split`'s
        file), spread over its episodes, preferring clips where the car is commanded to move (speed
        action > min_speed_action). `metadata` (steps, F): per-step scene metadata ids to keep per clip."""
        with np.load(path) as z:
            tokens, actions, starts = z["tokens"], z["actions"], z["episode_starts"]
        # short episodes (smoke runs): a shorter continuation, down to none
        continuation = max(0, min(continuation, int(np.diff(starts).max(initial=0)) - context))
        length = context + continuation
        rng = np.random.default_rng(seed)
        cands = []
        for a, b in zip(starts[:-1], starts[1:]):
            if b - a < length:
                continue
            s = np.arange(a, b - length + 1)
            moving = s[actions[s + context - 1, 1] > min_speed_action]
            cands.append(moving if len(moving) else s)
        if not cands:
            raise ConfigError(f"{path}: no episode has {length} steps")
        eps = rng.permutation(len(cands))[:n] if len(cands) >= n else rng.integers(0, len(cands), n)
        picks = np.array([rng.choice(cands[e]) for e in eps])
        idx = picks[:, None] + np.arange(length)
        t, a = stored_latents(tokens[idx]), torch.from_numpy(actions[idx].astype(np.float32))
        meta = None if metadata is None else torch.from_numpy(np.asarray(metadata)[picks].astype(np.int64))
        if not continuation:
            return cls(t, a, metadata=meta)
        return cls(t[:, :context], a[:, :context], t[:, context:], a[:, context:], metadata=meta)


    @classmethod
    def standing_starts(cls, path: str | Path, context: int, still_action) -> "PromptBank":
        """One clip per episode of a tokenized split: its first frame held for `context` steps under the
        "stand still" action `still_action` (model units) -- the situation `RealCarRacingEnv.reset`
        starts a real episode in."""
        with np.load(path) as z:
            tokens, starts = z["tokens"], z["episode_starts"]
        first = stored_latents(tokens[starts[:-1]])
        t = first[:, None].expand(-1, context, *first.shape[1:]).contiguous()
        a = torch.as_tensor(np.asarray(still_action, np.float32)).expand(len(first), context, -1).contiguous()
        return cls(t, a)

    def concat(self, other: "PromptBank") -> "PromptBank":
        """Both banks' clips (continuations are dropped unless both have the same length)."""
        if other.tokens.shape[1:] != self.tokens.shape[1:] or other.actions.shape[1:] != self.actions.shape[1:]:
            raise ConfigError(f"prompt banks do not fit together: {tuple(self.tokens.shape)} and {tuple(other.tokens.shape)}")
        t, a = torch.cat([self.tokens, other.tokens]), torch.cat([self.actions, other.actions])
        if self.continuation and self.continuation == other.continuation:
            return PromptBank(t, a, torch.cat([self.next_tokens, other.next_tokens]),
                              torch.cat([self.next_actions, other.next_actions]))
        return PromptBank(t, a)


@dataclass
class WorldBundle:
    """A loaded model directory: the world model and the tokenizer (its two components), the prompt bank,
    the action codec and the sources record. `backend` is how the engine talks to them."""

    world_model: WorldModel
    tokenizer: Tokenizer
    prompts: PromptBank
    codec: ActionCodec
    path: Path
    step_seconds: float = DEFAULT_STEP_SECONDS
    kind: str = WORLD_MODEL_KIND
    text_encoder: torch.nn.Module | None = None  # a conditioned model's default text encoder (MODEL_DIR/text_encoder)

    def __post_init__(self) -> None:
        self._backend: Backend | None = None

    @property
    def conditions(self):
        """The world model's `ConditionSpec` (scene metadata, agent boxes, text), or None."""
        return getattr(getattr(self.world_model, "cfg", None), "condition_spec", None)

    def with_text_encoder(self, encoder) -> "WorldBundle":
        """This bundle with a user's text encoder (any callable mapping a list of strings to (N, E)
        embeddings, E the width this model was trained on: `gaia_gym.models.text.check_text_encoder`)."""
        from gaia_gym.models.text import check_text_encoder

        spec = self.conditions
        if spec is None or not spec.text_dim:
            raise ConfigError("this world model takes no text condition")
        check_text_encoder(encoder, spec.text_dim)
        return replace(self, text_encoder=encoder)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = KINDS[self.kind].backend(self.world_model, self.tokenizer)
        return self._backend

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    def with_backend(self, **options) -> "WorldBundle":
        """This bundle (components and prompts shared) with a backend built with the backend's own
        `options`, e.g. ``int8=True`` (int8 Linear layers, CPU) or ``steps=4`` (a flow model)."""
        b = replace(self)
        b._backend = KINDS[self.kind].backend(self.world_model, self.tokenizer, **options)
        return b

    def with_cameras(self, cameras) -> "WorldBundle":
        """A camera-rig bundle over a sub-rig of its cameras: names (a comma-separated string or a list, in
        any order, e.g. "front,rear"), or (name, yaw_deg, anchor_x, anchor_y) tuples / `sims.rig.Camera`s of
        the rig's cameras with other poses. The same weights (`WorldModel.for_cameras`); the prompt bank keeps
        those cameras' views. ConfigError for a model without a rig or a camera it does not have."""
        cfg = self.world_model.cfg
        if not cfg.cameras:
            raise ConfigError("this world model has no camera rig (it was trained on one camera)")
        have = {c[0]: c for c in cfg.cameras}
        rows = []
        for c in split_names(cameras):
            if isinstance(c, str):
                c = have.get(c, (c,))
            elif isinstance(c, Camera):
                c = c.row()
            if c[0] not in have:
                raise ConfigError(f"camera {c[0]!r} is not in this model's rig ({', '.join(have)})")
            rows.append(tuple(c))
        if not rows:
            raise ConfigError("with_cameras needs at least one camera")
        idx = [cfg.camera_names.index(r[0]) for r in rows]
        p = self.prompts
        bank = PromptBank(p.tokens[:, :, idx], p.actions, None if p.next_tokens is None else p.next_tokens[:, :, idx],
                          p.next_actions)
        return replace(self, world_model=self.world_model.for_cameras(tuple(rows)).eval(), prompts=bank)

    def with_decoder(self, tokenizer) -> "WorldBundle":
        """This bundle with another tokenizer that reads the same codes: its encoder and quantizer must be
        this one's (e.g. a narrower decoder from `gaia-gym train decoder`), so the world model, the
        prompt bank and every recorded token stay valid. ModelFileError otherwise."""
        mine, theirs = self.tokenizer, tokenizer
        parts = getattr(type(mine), "CODE_PARTS", ("encoder",))
        same = type(mine) is type(theirs) and all(
            _same_weights(getattr(mine, part, None), getattr(theirs, part, None)) for part in parts)
        if not same:
            raise ModelFileError("that tokenizer does not encode frames as this model's does (its encoder or "
                                 "quantizer differs); train it with `gaia-gym train decoder --tokenizer` from this "
                                 "model's tokenizer")
        return replace(self, tokenizer=tokenizer.to(self.device).eval())


def _same_weights(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
    if a is None or b is None:
        return a is b
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def load_bundle(model: str | Path | None = None, device: str | torch.device = "cpu",
                tokenizer: str | Path | None = None) -> WorldBundle:
    """Load a world-model directory (default: the shipped model) with its tokenizer and prompt bank.

    `model` may also name the directory's config.json or weights file. `tokenizer` overrides where the
    tokenizer is looked for (its sha256 must still be the recorded one)."""
    given = DEFAULT_WORLD_MODEL if model is None else Path(model)
    if not given.exists():
        raise ModelFileError(f"{given}: no such world-model directory")
    path = model_dir(given)
    kind = read_model_info(path)["kind"]
    if kind not in KINDS:
        raise ModelFileError(f"{path} holds a {kind} model, not a world model (kinds: {', '.join(KINDS)})")
    wm = load_world_model(path, device=device, kind=kind)
    sources = Sources.read(path)
    tok_dir = resolve_tokenizer(path, sources, tokenizer)
    tok_kind = read_model_info(tok_dir)["kind"]
    if tok_kind != KINDS[kind].tokenizer_kind:
        raise ModelFileError(f"{tok_dir} holds a {tok_kind}; a {kind} reads a {KINDS[kind].tokenizer_kind}")
    tok = load_tokenizer(tok_dir, device=device, kind=tok_kind)
    backend_cls = KINDS[kind].backend
    try:
        backend = backend_cls(wm, tok)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    prompts = PromptBank.load(path / PROMPTS)
    if prompts.tokens.shape[2:] != tuple(backend.latent_shape) or float(prompts.tokens.max()) > backend.latent_range[1] \
            or prompts.tokens.is_floating_point() != backend.latent_dtype.is_floating_point:
        raise ModelFileError(f"{path / PROMPTS}: prompts do not fit the world model's latents {backend.latent_shape}")
    text = None
    if exists_current(path / TEXT_ENCODER_DIR, "config.json"):
        text = load_text_encoder(path / TEXT_ENCODER_DIR, device=device)
    b = WorldBundle(wm, tok, prompts, sources.action_codec, path, sources.step_seconds, kind, text)
    b._backend = backend
    return b


def save_bundle(bundle: WorldBundle, directory: str | Path, copy_tokenizer: bool = True, meta: dict | None = None) -> Path:
    """Write `bundle` as a model directory: world model, prompts, sources.json and (default) the tokenizer
    in DIR/tokenizer, so the directory is self-contained. ``copy_tokenizer=False`` records the shipped
    default tokenizer instead (its weights must be the bundle's)."""
    d = Path(directory)
    wm, tok = bundle.world_model, bundle.tokenizer
    save_model(d, wm, bundle.kind, wm.cfg, meta)
    if copy_tokenizer:
        tinfo = save_model(d / TOKENIZER_DIR, tok, KINDS[bundle.kind].tokenizer_kind, tok.cfg)
        sha, where = tinfo["weights"]["sha256"], TOKENIZER_DIR
    else:
        sha, where = weights_sha256(DEFAULT_TOKENIZER), "default"
    bundle.prompts.save(d / PROMPTS)
    if isinstance(bundle.text_encoder, torch.nn.Module) and hasattr(bundle.text_encoder, "cfg"):
        save_model(d / TEXT_ENCODER_DIR, bundle.text_encoder, TEXT_ENCODER_KIND, bundle.text_encoder.cfg)
    Sources(sha, where, bundle.codec, bundle.step_seconds).write(d)
    return d


def tiny_bundle(seed: int = 0, prompts: int = 8, device: str | torch.device = "cpu", cameras: Sequence[str] = (),
                conditions: str | None = None) -> WorldBundle:
    """An untrained, tiny bundle (4x4 tokens, 16 codes, 32-wide transformer) for tests and smoke runs:
    it exercises every code path in milliseconds; its imagination is noise. `cameras`: names of
    `gaia_gym.sims.rig.CAMERAS` for a camera-rig model (frames (V, 64, 64, 3), tokens (V, 4, 4)).
    `conditions`: "cross" or "adaln" for a highway-style conditioned model (metadata, 8 agent boxes,
    16-wide text from a tiny untrained text encoder)."""
    from gaia_gym.models.tokenizer import TokenizerConfig
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModelConfig
    torch.manual_seed(seed)
    tok = build_tokenizer(TokenizerConfig(enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8), fsq_levels=(4, 4)))
    rig = tuple(c.row() for c in cameras_from_names(cameras))
    text = None
    cond = None
    if conditions:
        from gaia_gym.models.conditions import ConditionSpec
        from gaia_gym.models.text import HashTextEncoder, TextEncoderConfig
        from gaia_gym.sims.highway_scene import METADATA, agent_map_spec

        text = HashTextEncoder(TextEncoderConfig(buckets=256, width=16, dim=16)).eval()
        cond = ConditionSpec(metadata=tuple(METADATA.items()), agents=8, text_dim=16, mode=conditions,
                             **agent_map_spec())
    wm = build_world_model(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "code_levels": (4, 4), "cameras": rig,
                                               "conditions": cond}))
    g = torch.Generator().manual_seed(seed)
    C, L = wm.cfg.context, ((len(rig),) if rig else ()) + (4, 4)
    bank = PromptBank(torch.randint(0, 16, (prompts, C, *L), generator=g),
                      torch.rand(prompts, C, 2, generator=g) * 2 - 1,
                      torch.randint(0, 16, (prompts, 8, *L), generator=g), torch.rand(prompts, 8, 2, generator=g) * 2 - 1,
                      metadata=torch.randint(0, 3, (prompts, 3), generator=g) if conditions else None)
    return WorldBundle(wm.to(device).eval(), tok.to(device).eval(), bank, ActionCodec(), Path("<tiny>"),
                       text_encoder=text)


def tiny_flow_bundle(seed: int = 0, prompts: int = 8, device: str | torch.device = "cpu") -> WorldBundle:
    """An untrained, tiny flow bundle (4x4x4 latents, 32-wide transformer) for tests and smoke runs."""
    from gaia_gym.models.flow import FLOW_PRESETS, FlowConfig
    from gaia_gym.models.vae import VAE_PRESETS, VAEConfig

    torch.manual_seed(seed)
    vae = build_vae(VAEConfig(**VAE_PRESETS["tiny"]))
    wm = build_flow_model(FlowConfig(**FLOW_PRESETS["tiny"]))
    g = torch.Generator().manual_seed(seed)
    C, L = wm.cfg.context, wm.cfg.latent_shape
    bank = PromptBank(torch.randn(prompts, C, *L, generator=g), torch.rand(prompts, C, 2, generator=g) * 2 - 1,
                      torch.randn(prompts, 8, *L, generator=g), torch.rand(prompts, 8, 2, generator=g) * 2 - 1)
    return WorldBundle(wm.to(device).eval(), vae.to(device).eval(), bank, ActionCodec(), Path("<tiny-flow>"),
                       kind=FLOW_WORLD_MODEL_KIND)


__all__ = ["DEFAULT_FLOW_WORLD_MODEL", "DEFAULT_TOKENIZER", "DEFAULT_WORLD_MODEL", "FAST_WORLD_MODEL", "RIG_WORLD_MODEL", "FLOW_WORLD_MODEL_KIND",
           "KINDS", "Kind", "VAE_KIND", "kind_of", "make_backend", "stored_latents", "PROMPTS", "PromptBank", "SOURCES", "Sources",
           "WorldBundle", "copy_model_dir", "load_bundle", "load_tokenizer", "load_world_model",
           "record_training_sources", "resolve_tokenizer", "save_bundle", "tiny_bundle", "tiny_flow_bundle", "weights_sha256"]
