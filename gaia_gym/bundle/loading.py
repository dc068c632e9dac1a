"""A loaded world model: `WorldBundle` (components, prompt bank, codec, backend options) and the one
function that builds a ready one, `load_bundle`, with every option applied in one place."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gaia_gym.backends import Backend
from gaia_gym.bundle.directory import (DEFAULT_STEP_SECONDS, DEFAULT_TOKENIZER, DEFAULT_WORLD_MODEL, PROMPTS, SOURCES,
                                       TEXT_ENCODER_DIR, TOKENIZER_DIR, Sources, load_text_encoder, load_tokenizer,
                                       load_world_model, resolve_tokenizer, weights_sha256)
from gaia_gym.bundle.kinds import KINDS, TEXT_ENCODER_KIND, WORLD_MODEL_KIND
from gaia_gym.bundle.prompts import PromptBank
from gaia_gym.checkpoint import model_dir, read_model_info, save_model
from gaia_gym.errors import ConfigError, ModelFileError
from gaia_gym.fileio import exists_current
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.tokenizer import Tokenizer
from gaia_gym.models.world_model import WorldModel
from gaia_gym.sims.rig import Camera, split_names


@dataclass
class WorldBundle:
    """A loaded model directory: the world model and the tokenizer (its two components), the prompt bank,
    the action codec and the sources record. `backend` is how the engine talks to them, built from the
    components with `backend_options` (e.g. ``{"int8": True, "steps": 4}``).

    The options are a field, so every `with_*` (each a `dataclasses.replace`) keeps them and the backend
    is rebuilt over the new components with them: the `with_*` methods compose in any order."""

    world_model: WorldModel
    tokenizer: Tokenizer
    prompts: PromptBank
    codec: ActionCodec
    path: Path
    step_seconds: float = DEFAULT_STEP_SECONDS
    kind: str = WORLD_MODEL_KIND
    text_encoder: torch.nn.Module | None = None  # a conditioned model's default text encoder (MODEL_DIR/text_encoder)
    backend_options: dict[str, Any] = field(default_factory=dict)
    _backend: Backend | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.backend_options = dict(self.backend_options)  # never shared with the bundle it was replaced from
        self._backend = None  # built lazily from the (possibly new) components and the options

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
            try:
                self._backend = KINDS[self.kind].backend(self.world_model, self.tokenizer, **self.backend_options)
            except TypeError as e:  # an option this kind's backend does not take (e.g. steps= for a token model)
                raise ConfigError(f"{self.kind}: backend options {self.backend_options} do not apply ({e})") from None
        return self._backend

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    def with_backend(self, **options) -> "WorldBundle":
        """This bundle (components and prompts shared) with its backend options updated by `options`, e.g.
        ``int8=True`` (int8 Linear layers, CPU) or ``steps=4`` (a flow model); earlier options are kept."""
        return replace(self, backend_options={**self.backend_options, **options})

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
        if not isinstance(cameras, (str, list, tuple)):
            raise ConfigError(f"cameras must be names (\"front,rear\" or a list) or (name, yaw_deg, anchor_x, "
                              f"anchor_y) poses, got {cameras!r}")
        for c in split_names(cameras):
            rows.append(_camera_row(c, have))
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


def _camera_row(c, have: dict) -> tuple:
    """One camera of `with_cameras` -> its (name, yaw_deg, anchor_x, anchor_y) row; ConfigError for a camera
    the rig lacks or a pose that is not four finite numbers after the name."""
    if isinstance(c, str):
        c = have.get(c, (c,))
    elif isinstance(c, Camera):
        c = c.row()
    if not isinstance(c, (list, tuple)) or not c or not isinstance(c[0], str):
        raise ConfigError(f"camera {c!r}: give a name or a (name, yaw_deg, anchor_x, anchor_y) pose")
    if c[0] not in have:
        raise ConfigError(f"camera {c[0]!r} is not in this model's rig ({', '.join(have)})")
    pose = c[1:]
    if len(pose) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
                             for v in pose):
        raise ConfigError(f"camera {c[0]!r}: its pose (yaw_deg, anchor_x, anchor_y) must be three finite numbers, "
                          f"got {tuple(pose)!r}")
    return (c[0], *(float(v) for v in pose))


def _same_weights(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
    if a is None or b is None:
        return a is b
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def load_bundle(model: "str | Path | WorldBundle | None" = None, device: str | torch.device = "cpu",
                tokenizer: str | Path | None = None, *, cameras=None, decoder=None, text_encoder=None,
                int8: bool = False, steps: int | None = None, **backend_options) -> WorldBundle:
    """A ready world model: load a model directory (default: the shipped model) with its tokenizer and
    prompt bank -- or take an already loaded `WorldBundle` -- and apply every option, in one place.

    `model` may also name the directory's config.json or weights file. `tokenizer` overrides where the
    tokenizer is looked for (its sha256 must still be the recorded one). Options, applied in this order:
    `cameras` (a camera-rig model's sub-rig or poses: `WorldBundle.with_cameras`), `decoder` (a tokenizer
    or its directory that reads the same codes: `with_decoder`), `text_encoder` (`with_text_encoder`), then
    the backend options (``int8=True``; ``steps=`` for a flow model; any other the backend takes), which
    every later `with_*` keeps. A bundle's own backend options are kept unless given again."""
    if isinstance(model, WorldBundle):
        if tokenizer is not None:
            raise ConfigError("tokenizer= applies to loading a model directory, not to a loaded bundle (use decoder=)")
        b = model
    else:
        b = _load_dir(model, device, tokenizer)
    if cameras is not None:
        b = b.with_cameras(cameras)
    if decoder is not None:
        b = b.with_decoder(decoder if isinstance(decoder, torch.nn.Module) else load_tokenizer(decoder, b.device, None))
    if text_encoder is not None:
        b = b.with_text_encoder(text_encoder)
    if not isinstance(int8, bool):
        raise ConfigError(f"int8 must be True or False, got {int8!r}")
    options = dict(backend_options)
    if int8:
        options["int8"] = True
    if steps is not None:
        options["steps"] = steps
    if options:
        b = b.with_backend(**options)
        b.backend  # build it now: a bad option fails here, not at the first step
    return b


def _load_dir(model: str | Path | None, device: str | torch.device, tokenizer: str | Path | None) -> WorldBundle:
    """The model directory `model` as a bundle (no options applied)."""
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
    try:
        backend = KINDS[kind].backend(wm, tok)
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
    b._backend = backend  # already built (no options): reuse it
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

