"""A world-model bundle: everything imagination needs, found from one model directory.

    MODEL_DIR/
      model.safetensors, config.json   # the world model (gaia_gym.checkpoint format)
      prompts.npz                      # the prompt bank: real context clips imagination starts from
      sources.json                     # what it was trained from (tokenizer path and sha256, data)
      tokenizer/                       # optional: the tokenizer, for a self-contained copy

The tokenizer is found, in order: MODEL_DIR/tokenizer; the path in sources.json; the shipped default
tokenizer. Whichever is used must be the one the world model was trained with (same weights sha256 when
sources.json records it). Every problem raises `ModelFileError` naming the path.

The prompt bank is GAIA-1's "video prompt": `n` clips of `context` real frames (as tokens) with the
actions driven between them; an imagined episode starts from one of them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaia_gym.checkpoint import read_model_info

from gaia_gym.errors import ModelFileError
from gaia_gym.fileio import atomic_write_bytes
from gaia_gym.models.layout import ActionCodec
from gaia_gym.models.tokenizer import Tokenizer
from gaia_gym.models.world_model import WorldModel

PROMPTS = "prompts.npz"


@dataclass
class PromptBank:
    """Real context clips: tokens (N, C, g, g) int64 and actions (N, C, A) float32 (model units), and
    optionally what really happened next (next_tokens (N, F, g, g), next_actions (N, F, A)) so a demo can
    show the real continuation beside the imagined ones."""

    tokens: torch.Tensor
    actions: torch.Tensor
    next_tokens: torch.Tensor | None = None
    next_actions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 4 or self.actions.dim() != 3 or self.tokens.shape[:2] != self.actions.shape[:2]:
            raise ValueError(f"prompt bank shapes do not fit: tokens {tuple(self.tokens.shape)}, "
                             f"actions {tuple(self.actions.shape)}")
        if (self.next_tokens is None) != (self.next_actions is None) or (
                self.next_tokens is not None and self.next_tokens.shape[:2] != self.next_actions.shape[:2]):
            raise ValueError("prompt bank continuation: next_tokens and next_actions must come together")

    @property
    def continuation(self) -> int:
        return 0 if self.next_tokens is None else self.next_tokens.shape[1]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def context(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        extra = {} if self.next_tokens is None else {"next_tokens": self.next_tokens.numpy().astype(np.uint16),
                                                      "next_actions": self.next_actions.numpy()}
        np.savez_compressed(buf, tokens=self.tokens.numpy().astype(np.uint16), actions=self.actions.numpy(), **extra)
        atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PromptBank":
        path = Path(path)
        try:
            with np.load(path) as z:
                nxt = {}
                if "next_tokens" in z:
                    nxt = {"next_tokens": torch.from_numpy(z["next_tokens"].astype(np.int64)),
                           "next_actions": torch.from_numpy(z["next_actions"].astype(np.float32))}
                return cls(torch.from_numpy(z["tokens"].astype(np.int64)), torch.from_numpy(z["actions"].astype(np.float32)),
                           **nxt)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no prompt bank (run training, or `gaia-gym pretrain`, to write one)") from None
        except Exception as e:  # zip / key / shape errors: the file is not a prompt bank
            raise ModelFileError(f"{path}: not a readable prompt bank ({type(e).__name__}: {e})") from None

    @classmethod
    def from_token_file(cls, path: str | Path, context: int, n: int = 64, seed: int = 0,
                        min_speed_action: float = -0.9, continuation: int = 16) -> "PromptBank":
        """`n` clips of `context` (+ `continuation`) steps from a tokenized split (`tokenize_split`'s
        file), spread over its episodes, preferring clips where the car is commanded to move (speed
        action > min_speed_action)."""
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
            raise ValueError(f"{path}: no episode has {length} steps")
        eps = rng.permutation(len(cands))[:n] if len(cands) >= n else rng.integers(0, len(cands), n)
        picks = np.array([rng.choice(cands[e]) for e in eps])
        idx = picks[:, None] + np.arange(length)
        t, a = torch.from_numpy(tokens[idx].astype(np.int64)), torch.from_numpy(actions[idx].astype(np.float32))
        if not continuation:
            return cls(t, a)
        return cls(t[:, :context], a[:, :context], t[:, context:], a[:, context:])


    @classmethod
    def standing_starts(cls, path: str | Path, context: int, still_action) -> "PromptBank":
        """One clip per episode of a tokenized split: its first frame held for `context` steps under the
        "stand still" action `still_action` (model units) -- the situation `RealCarRacingEnv.reset`
        starts a real episode in."""
        with np.load(path) as z:
            tokens, starts = z["tokens"], z["episode_starts"]
        first = torch.from_numpy(tokens[starts[:-1]].astype(np.int64))
        t = first[:, None].expand(-1, context, -1, -1).contiguous()
        a = torch.as_tensor(np.asarray(still_action, np.float32)).expand(len(first), context, -1).contiguous()
        return cls(t, a)

    def concat(self, other: "PromptBank") -> "PromptBank":
        """Both banks' clips (continuations are dropped unless both have the same length)."""
        if other.tokens.shape[1:] != self.tokens.shape[1:] or other.actions.shape[1:] != self.actions.shape[1:]:
            raise ValueError(f"prompt banks do not fit together: {tuple(self.tokens.shape)} and {tuple(other.tokens.shape)}")
        t, a = torch.cat([self.tokens, other.tokens]), torch.cat([self.actions, other.actions])
        if self.continuation and self.continuation == other.continuation:
            return PromptBank(t, a, torch.cat([self.next_tokens, other.next_tokens]),
                              torch.cat([self.next_actions, other.next_actions]))
        return PromptBank(t, a)


@dataclass
class WorldBundle:
    """A loaded world model with its tokenizer, prompt bank and action codec."""

    world_model: WorldModel
    tokenizer: Tokenizer
    prompts: PromptBank
    codec: ActionCodec
    path: Path
    step_seconds: float = 0.08  # driving time one imagined step stands for (CarRacing: 4 frames at 50 Hz)

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device


def _find_tokenizer(model_dir: Path, sources: dict) -> Path:
    from gaia_gym.stages.tokenizer import DEFAULT_TOKENIZER

    want = sources.get("tokenizer_sha256")
    cands = [model_dir / "tokenizer"]
    if sources.get("tokenizer"):
        t = Path(sources["tokenizer"])
        cands += [t] if t.is_absolute() else [model_dir / t, Path.cwd() / t]
    cands.append(DEFAULT_TOKENIZER)
    for c in cands:
        if (c / "config.json").exists():
            sha = read_model_info(c).get("weights", {}).get("sha256")
            if want is None or sha == want:
                return c
    raise ModelFileError(f"{model_dir}: its tokenizer (sha256 {str(want)[:12]}...) was not found "
                         f"(looked in {', '.join(str(c) for c in cands)})")


def load_bundle(model: str | Path | None = None, device: str | torch.device = "cpu") -> WorldBundle:
    """Load a world-model directory (default: the shipped model) with its tokenizer and prompt bank."""
    from gaia_gym.stages.tokenizer import load_tokenizer
    from gaia_gym.stages.world_model import DEFAULT_WORLD_MODEL, load_world_model, sources_of

    path = Path(model) if model is not None else DEFAULT_WORLD_MODEL
    if not path.exists():
        raise ModelFileError(f"{path}: no such world-model directory")
    wm = load_world_model(path, device=device)
    sources = sources_of(path)
    tok = load_tokenizer(_find_tokenizer(path, sources), device=device)
    if tok.cfg.grid != wm.cfg.grid or tok.cfg.vocab_size != wm.cfg.vocab:
        raise ModelFileError(f"{path}: the tokenizer ({tok.cfg.grid}x{tok.cfg.grid}, {tok.cfg.vocab_size} codes) "
                             f"does not fit the world model ({wm.cfg.grid}x{wm.cfg.grid}, {wm.cfg.vocab} codes)")
    prompts = PromptBank.load(path / PROMPTS)
    if prompts.tokens.shape[2:] != (wm.cfg.grid, wm.cfg.grid) or int(prompts.tokens.max()) >= wm.cfg.vocab:
        raise ModelFileError(f"{path / PROMPTS}: prompts do not fit the world model's tokens")
    codec = ActionCodec(**{k: v for k, v in sources.get("action_codec", {}).items() if k in ("max_speed_mps",)})
    return WorldBundle(wm, tok.eval(), prompts, codec, path, float(sources.get("step_seconds", 0.08)))


def save_bundle(bundle: WorldBundle, directory: str | Path, copy_tokenizer: bool = True, meta: dict | None = None) -> Path:
    """Write `bundle` as a model directory (world model, prompts, sources.json and, when asked, the
    tokenizer in DIR/tokenizer so the directory is self-contained)."""
    import json
    from dataclasses import asdict

    from gaia_gym.checkpoint import save_model
    from gaia_gym.fileio import atomic_write_json

    d = Path(directory)
    wm, tok = bundle.world_model, bundle.tokenizer
    save_model(d, wm, "world_model", wm.cfg, meta)
    if copy_tokenizer:
        tinfo = save_model(d / "tokenizer", tok, "tokenizer", tok.cfg)
    else:
        from gaia_gym.stages.tokenizer import DEFAULT_TOKENIZER
        tinfo = read_model_info(DEFAULT_TOKENIZER)
    bundle.prompts.save(d / PROMPTS)
    sources = {"tokenizer": "tokenizer" if copy_tokenizer else "default",
               "tokenizer_sha256": tinfo["weights"]["sha256"], "action_codec": asdict(bundle.codec),
               "step_seconds": bundle.step_seconds}
    atomic_write_json(d / "sources.json", json.loads(json.dumps(sources)))
    return d


def tiny_bundle(seed: int = 0, prompts: int = 8, device: str | torch.device = "cpu") -> WorldBundle:
    """An untrained, tiny bundle (4x4 tokens, 16 codes, 32-wide transformer) for tests and smoke runs:
    it exercises every code path in milliseconds; its imagination is noise."""
    from gaia_gym.models.tokenizer import TokenizerConfig, build_tokenizer
    from gaia_gym.models.world_model import WORLD_MODEL_PRESETS, WorldModelConfig, build_world_model

    torch.manual_seed(seed)
    tok = build_tokenizer(TokenizerConfig(enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8), fsq_levels=(4, 4)))
    wm = build_world_model(WorldModelConfig(**{**WORLD_MODEL_PRESETS["tiny"], "code_levels": (4, 4)}))
    g = torch.Generator().manual_seed(seed)
    C = wm.cfg.context
    bank = PromptBank(torch.randint(0, 16, (prompts, C, 4, 4), generator=g),
                      torch.rand(prompts, C, 2, generator=g) * 2 - 1,
                      torch.randint(0, 16, (prompts, 8, 4, 4), generator=g), torch.rand(prompts, 8, 2, generator=g) * 2 - 1)
    return WorldBundle(wm.to(device).eval(), tok.to(device).eval(), bank, ActionCodec(), Path("<tiny>"))
