"""How well a conditioned highway-env world model does what it is told (`gaia-gym eval highway`).

Read-outs from frames (model-free where possible):

- **vehicles**: in highway-env's top view other vehicles are solid blue rectangles (crashed ones red)
  and the ego yellow; `detect_vehicles` finds them as connected components and places them in metres
  relative to the ego (the frame is world-aligned at `PX_PER_M`);
- **scene metadata** (scenario, lanes, density): a small CNN, the *scene probe*, trained on real frames
  of the dataset's train split and scored on its validation split (that accuracy is the read-out's
  ceiling; chance is the majority class of the validation split).

Measurements, all on scenes generated from held-out (validation) conditions:

- ``agent_placement``: vehicles placed by the agent condition (the real boxes of a validation frame,
  those inside the view) are detected within `MATCH_M` of where they were asked: detection rate and
  position error; beside the same boxes looked for in frames generated without the agent condition
  (how often a vehicle is there anyway) and, as the ceiling, in the real frames themselves and in the
  tokenizer's reconstructions of them; removal: one box left out of the list, is its vehicle still
  detected where it was;
- ``metadata_adherence``: scenes generated from metadata alone (random values), read back by the probe:
  accuracy per field against chance;
- ``text_adherence``: the same with a text prompt saying one fact (no metadata);
- ``negative_prompt_effect``: a prompt with and without a negative prompt (text guidance): how the
  read-outs move away from what the negative prompt says;
- ``fidelity``: open-loop PSNR by horizon under the real actions on validation clips against copy-last
  and the tokenizer's ceiling; collision (termination) AUC of the end head over validation windows.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gaia_gym.data.format import load_episode
from gaia_gym.data.loader import EpisodeIndex
from gaia_gym.imagination import Imagination, SceneRows
from gaia_gym.evaluation.common import roc_auc
from gaia_gym.metrics import psnr_uint8
from gaia_gym.sims.highway_scene import METADATA, VIEW_M, agent_boxes, episode_metadata

PX_PER_M = 64 / VIEW_M  # 64-px frames over VIEW_M metres (1.6 px/m)
MATCH_M = 3.0  # a detection within this distance of an asked position counts as the vehicle
MIN_AREA = 3  # px: smaller blobs are anti-aliasing noise


# ----------------------------------------------------------------------------------------------
# model-free read-outs
# ----------------------------------------------------------------------------------------------
def _masks(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = frame.astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    vehicle = ((b > 150) & (b - r > 40)) | ((r > 170) & (r - g > 50) & (r - b > 50))  # blue others, red crashed
    ego = (r > 130) & (g > 130) & (b < 90) & (np.abs(r - g) < 40)
    return vehicle, ego


def find_ego(frame: np.ndarray) -> tuple[float, float] | None:
    """(x, y) pixel centroid of the ego's yellow box, or None."""
    _, ego = _masks(frame)
    ys, xs = np.nonzero(ego)
    if len(xs) < MIN_AREA:
        return None
    return float(xs.mean()), float(ys.mean())


def detect_vehicles(frame: np.ndarray, ego_px: tuple[float, float]) -> np.ndarray:
    """(K, 2) positions (x, y) in metres relative to the ego of the other vehicles seen in `frame`."""
    vehicle, _ = _masks(frame)
    n, _, stats, cent = cv2.connectedComponentsWithStats(vehicle.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_AREA]
    if not keep:
        return np.zeros((0, 2))
    c = cent[keep]
    return np.stack([(c[:, 0] - ego_px[0]) / PX_PER_M, (c[:, 1] - ego_px[1]) / PX_PER_M], 1)


def in_view(boxes: np.ndarray, ego_px: tuple[float, float], size: int = 64, margin_m: float = 3.0) -> np.ndarray:
    """(N,) bool: present boxes whose centre lies inside the frame (with a margin)."""
    x = ego_px[0] + boxes[:, 1] * PX_PER_M
    y = ego_px[1] + boxes[:, 2] * PX_PER_M
    m = margin_m * PX_PER_M
    return (boxes[:, 0] > 0.5) & (x > m) & (x < size - m) & (y > m) & (y < size - m)


# ----------------------------------------------------------------------------------------------
# the scene probe
# ----------------------------------------------------------------------------------------------
class SceneProbe(nn.Module):
    """Frame -> logits of each metadata field (scenario, lanes, density)."""

    def __init__(self, fields: dict[str, tuple[str, ...]] = METADATA) -> None:
        super().__init__()
        self.fields = dict(fields)
        c = 32
        self.net = nn.Sequential(nn.Conv2d(3, c, 4, 2, 1), nn.GELU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GELU(),
                                 nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleList([nn.Linear(8 * c, len(v)) for v in self.fields.values()])

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        h = self.net(x)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def read(self, frames: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """{field: (N,) value index} of uint8 frames (N, H, W, 3)."""
        self.eval()
        out = self.forward(torch.as_tensor(np.asarray(frames)))
        return {k: o.argmax(-1).numpy() for k, o in zip(self.fields, out)}


def split_frames(data: Path, split: str, every: int = 4, limit: int | None = None):
    """Frames (every `every`-th step) of a split with their episode's metadata value ids and boxes."""
    idx = EpisodeIndex(data, split=split)
    frames, labels, boxes, nxt_boxes, metas = [], [], [], [], []
    for path in idx.paths[:limit]:
        ep = load_episode(path, fields=["frames", "others"])
        meta = episode_metadata(ep["meta"], ep["others"])
        ids = [METADATA[k].index(meta[k]) for k in METADATA]
        for t in range(0, len(ep["frames"]) - 1, every):
            frames.append(ep["frames"][t])
            labels.append(ids)
            boxes.append(agent_boxes(ep["others"][t]))
            nxt_boxes.append((ep["frames"][t + 1], agent_boxes(ep["others"][t + 1])))
            metas.append(meta)
    return np.stack(frames), np.asarray(labels), boxes, nxt_boxes, metas


def train_scene_probe(data: Path, steps: int = 600, batch: int = 64, seed: int = 0, progress: bool = True):
    """The scene probe trained on the train split's frames; returns (probe, validation report)."""
    torch.manual_seed(seed)
    fx, fy, *_ = split_frames(data, "train", every=3)
    vx, vy, *_ = split_frames(data, "val", every=3)
    probe = SceneProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    X, Y = torch.from_numpy(fx), torch.from_numpy(fy)
    for _ in tqdm(range(steps), desc="train scene probe", disable=not progress):
        i = torch.from_numpy(rng.integers(len(X), size=batch))
        out = probe(X[i])
        loss = sum(nn.functional.cross_entropy(o, Y[i, j]) for j, o in enumerate(out))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = probe.read(vx)
    report = {}
    for j, k in enumerate(METADATA):
        counts = np.bincount(vy[:, j], minlength=len(METADATA[k]))
        report[k] = {"val_accuracy": round(float((pred[k] == vy[:, j]).mean()), 4),
                     "chance_majority": round(float(counts.max() / counts.sum()), 4),
                     "val_frames": int(len(vy))}
    return probe, report


# ----------------------------------------------------------------------------------------------
# generation under conditions
# ----------------------------------------------------------------------------------------------
def _scene(bundle, n: int, metadata=None, text=None, negative=None, vehicles=None, agent_steps: int = 1) -> SceneRows:
    spec, dev = bundle.conditions, bundle.device
    rows = SceneRows.empty(spec, n, dev)
    if metadata is not None:
        rows.metadata[:] = torch.as_tensor(np.asarray(metadata), device=dev)
    enc = bundle.text_encoder
    with torch.no_grad():
        if text is not None:
            rows.text[:] = enc(list(text)).float()
        if negative is not None:
            rows.negative[:] = enc(list(negative)).float()
    if vehicles is not None:
        rows.agents[:] = torch.as_tensor(np.asarray(vehicles, np.float32), device=dev)
        rows.agents_left[:] = agent_steps
    return rows


@torch.no_grad()
def generate(bundle, n: int, steps: int = 1, guidance: float = 1.0, guide=("action",), seed: int = 0,
             speed_mps: float = 25.0, context=None, **scene) -> np.ndarray:
    """Frames (n, steps, H, W, 3) generated under `scene` conditions: from scratch (no `context`), or
    after a real `context` = (latents (n, C, g, g), actions (n, C, 2)). Greedy-free top-k sampling."""
    eng = Imagination(bundle, n=n, seed=seed, guidance=guidance, guide=guide, step_seconds=bundle.step_seconds)
    rows = _scene(bundle, n, **scene)
    if context is None:
        C = bundle.prompts.context
        lat = torch.zeros(n, C, *bundle.backend.latent_shape, dtype=torch.long)
        act = torch.as_tensor(bundle.codec.encode(0.0, speed_mps)).expand(n, C, 2)
        eng.reset(context=(lat, act), scene=rows, scratch=True)
    else:
        eng.reset(context=context, scene=rows)
    a = torch.as_tensor(bundle.codec.encode(0.0, speed_mps)).expand(n, 2).contiguous()
    out = []
    for _ in range(steps):
        o = eng.step(a)
        out.append(eng.frames(o.latents).cpu().numpy())
    return np.stack(out, 1)


def _ego_of(frame: np.ndarray, fallback: tuple[float, float]) -> tuple[float, float]:
    e = find_ego(frame)
    return e if e is not None else fallback


def placement_scores(frames: np.ndarray, asked: list[np.ndarray], fallback_ego) -> dict:
    """Detection rate and position error of asked positions (list of (k, 2) metres) in frames (N, H, W, 3)."""
    hit, err, total = 0, [], 0
    for f, pos in zip(frames, asked):
        if not len(pos):
            continue
        det = detect_vehicles(f, _ego_of(f, fallback_ego))
        total += len(pos)
        if not len(det):
            continue
        d = np.linalg.norm(pos[:, None] - det[None], axis=-1).min(1)
        hit += int((d < MATCH_M).sum())
        err.extend(d[d < MATCH_M].tolist())
    return {"asked": total, "detection_rate": round(hit / max(total, 1), 4),
            "position_error_m": round(float(np.mean(err)), 3) if err else None}


@torch.no_grad()
def evaluate_agent_placement(bundle, val, n: int = 64, guidance: float = 3.0, seed: int = 0) -> dict:
    """Boxes of validation frames placed by the agent condition (from scratch, with the frame's metadata)."""
    _, labels, _, nxt, metas = val
    rng = np.random.default_rng(seed)
    spec = bundle.conditions
    order = [i for i in rng.permutation(len(nxt)) if len(_visible(nxt[i][1], nxt[i][0]))][:n]
    meta = np.stack([spec.metadata_ids(metas[i]) for i in order])
    boxes = np.stack([_pad(nxt[i][1][_visible(nxt[i][1], nxt[i][0])], spec.agents) for i in order])
    asked = [b[b[:, 0] > 0.5][:, 1:3] for b in boxes]
    ego0 = (0.3 * 64, 32.0)
    out = {"n_scenes": len(order), "match_m": MATCH_M, "guidance": guidance}
    # the ceiling: the same boxes looked for in the real frames, and in the tokenizer's reconstructions
    # of them (what any generated frame passes through)
    real = np.stack([nxt[i][0] for i in order])
    recon = bundle.backend.decode(bundle.backend.encode(torch.from_numpy(real))).cpu().numpy()
    out["real_frames"] = placement_scores(real, asked, ego0)
    out["tokenizer_reconstructions"] = placement_scores(recon, asked, ego0)
    for name, kw in (("conditioned", dict(vehicles=boxes)),
                     ("conditioned_guided", dict(vehicles=boxes, guidance=guidance, guide=("agents",))),
                     ("without_agent_condition", dict())):
        f = generate(bundle, len(order), metadata=meta, seed=seed, **kw)[:, 0]
        out[name] = placement_scores(f, asked, ego0)
    # removal: the first asked vehicle left out of the list
    kept = boxes.copy()
    removed = [b[:1, 1:3] for b in asked]
    for b in kept:
        b[0] = 0.0
    f_all = generate(bundle, len(order), metadata=meta, vehicles=boxes, seed=seed)[:, 0]
    f_rm = generate(bundle, len(order), metadata=meta, vehicles=kept, seed=seed)[:, 0]
    out["removal"] = {"listed": placement_scores(f_all, removed, ego0)["detection_rate"],
                      "removed": placement_scores(f_rm, removed, ego0)["detection_rate"],
                      "definition": "detection rate at one vehicle's asked position when it is in the list vs left out"}
    return out


def _visible(boxes: np.ndarray, frame: np.ndarray) -> np.ndarray:
    ego = _ego_of(frame, (0.3 * 64, 32.0))
    return in_view(boxes, ego)


def _pad(b: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, b.shape[1]), np.float32)
    out[: len(b)] = b[:n]
    return out


@torch.no_grad()
def evaluate_metadata_adherence(bundle, probe, val, n: int = 96, guidance: float = 3.0, steps: int = 3,
                                seed: int = 0) -> dict:
    """Scenes generated from the metadata of validation episodes (real combinations: a roundabout has its
    own lane count), read back by the probe on the last generated frame: accuracy per field, with and
    without guidance, beside frames generated without metadata read against the same asked values
    (what matching by chance gives) and the majority-class rate. Lanes are scored on highway scenes only
    (the other scenarios have one lane count each)."""
    rng = np.random.default_rng(seed)
    _, labels, _, _, metas = val
    pick = rng.permutation(len(metas))[:n]
    spec = bundle.conditions
    fields = list(spec.fields)
    ids = np.stack([spec.metadata_ids(metas[i]) for i in pick])
    hw = ids[:, fields.index("scenario")] == METADATA["scenario"].index("highway")
    out = {"n_scenes": int(len(pick)), "highway_scenes": int(hw.sum()), "steps": steps, "guidance": guidance}

    def score(frames):
        read = probe.read(frames)
        res = {}
        for j, k in enumerate(fields):
            ok = (read[k] == ids[:, j])[hw] if k == "lanes" else read[k] == ids[:, j]
            res[k] = round(float(ok.mean()), 4) if len(ok) else None
        return res

    for name, g in (("unguided", 1.0), ("guided", guidance)):
        f = generate(bundle, len(pick), steps=steps, metadata=ids, guidance=g, guide=("metadata",), seed=seed)[:, -1]
        out[name] = score(f)
    out["without_metadata"] = score(generate(bundle, len(pick), steps=steps, seed=seed)[:, -1])
    out["majority_rate"] = {}
    for j, k in enumerate(fields):
        v = ids[hw, j] if k == "lanes" else ids[:, j]
        out["majority_rate"][k] = round(float(np.bincount(v).max() / len(v)), 4) if len(v) else None
    return out


TEXT_PROMPTS = {  # (field, value) -> prompt, in the default encoder's training phrasings
    ("scenario", "highway"): "a highway", ("scenario", "merge"): "a merge", ("scenario", "roundabout"): "a roundabout",
    ("scenario", "intersection"): "an intersection",
    ("lanes", "2"): "a highway with two lanes", ("lanes", "3"): "a highway with three lanes",
    ("lanes", "4"): "a highway with four lanes",
    ("density", "low"): "a highway with light traffic", ("density", "medium"): "a highway with moderate traffic",
    ("density", "high"): "a highway with dense traffic",
}


@torch.no_grad()
def evaluate_text_adherence(bundle, probe, per_prompt: int = 24, guidance: float = 3.0, steps: int = 3, seed: int = 0) -> dict:
    """Scenes generated from one-fact prompts (no metadata), read back by the probe."""
    out = {"per_prompt": per_prompt, "steps": steps, "guidance": guidance, "prompts": {}}
    acc = {"unguided": {}, "guided": {}, "without_text": {}}
    for (field, value), prompt in TEXT_PROMPTS.items():
        j = METADATA[field].index(value)
        res = {}
        for name, kw in (("unguided", dict(text=[prompt] * per_prompt)),
                         ("guided", dict(text=[prompt] * per_prompt, guidance=guidance, guide=("text",))),
                         ("without_text", dict())):
            f = generate(bundle, per_prompt, steps=steps, seed=seed, **kw)[:, -1]
            r = probe.read(f)[field]
            res[name] = round(float((r == j).mean()), 4)
            acc[name].setdefault(field, []).append(res[name])
        out["prompts"][prompt] = {"field": field, "value": value, **res}
    out["mean_accuracy"] = {name: {k: round(float(np.mean(v)), 4) for k, v in d.items()} for name, d in acc.items()}
    out["chance_uniform"] = {k: round(1 / len(METADATA[k]), 4) for k in ("scenario", "lanes", "density")}
    return out


@torch.no_grad()
def evaluate_negative_prompts(bundle, probe, n: int = 48, guidance: float = 3.0, steps: int = 3, seed: int = 0) -> dict:
    """A prompt alone vs the same prompt with a negative prompt (text guidance contrasting them)."""
    cases = [("a highway", "dense traffic", "density", "high"),
             ("a highway", "four lanes", "lanes", "4"),
             ("a highway with moderate traffic", "a roundabout", "scenario", "roundabout")]
    out = {"n_scenes": n, "guidance": guidance, "cases": []}
    for pos, neg, field, value in cases:
        j = METADATA[field].index(value)
        res = {"prompt": pos, "negative": neg, "read": field, "negative_value": value}
        for name, kw in (("prompt_only", dict(text=[pos] * n)),
                         ("prompt_guided", dict(text=[pos] * n, guidance=guidance, guide=("text",))),
                         ("with_negative", dict(text=[pos] * n, negative=[neg] * n, guidance=guidance, guide=("text",)))):
            f = generate(bundle, n, steps=steps, seed=seed, **kw)[:, -1]
            r = probe.read(f)[field]
            ego0 = (0.3 * 64, 32.0)
            res[name] = {f"share_read_as_{value}": round(float((r == j).mean()), 4),
                         "mean_vehicles_seen": round(float(np.mean([len(detect_vehicles(x, _ego_of(x, ego0))) for x in f])), 3)}
        out["cases"].append(res)
    return out


@torch.no_grad()
def evaluate_fidelity(bundle, data: Path, context: int = 4, horizons=(1, 2, 4, 8), max_clips: int = 96,
                      batch: int = 16, seed: int = 0) -> dict:
    """Open-loop PSNR under the real actions on validation clips (with their metadata) vs copy-last and the
    tokenizer ceiling, and the termination AUC of the end head over validation windows."""
    idx = EpisodeIndex(data, split="val")
    spec = bundle.conditions
    H = max(horizons)
    clips = []
    for path in idx.paths:
        ep = load_episode(path, fields=["frames", "steering", "target_speed_mps", "terminated", "others"])
        meta = episode_metadata(ep["meta"], ep["others"])
        T = len(ep["frames"])
        if T >= context + H:
            clips.append((ep["frames"][: context + H], bundle.codec.encode(ep["steering"], ep["target_speed_mps"])[: context + H],
                          spec.metadata_ids(meta)))
    clips = clips[:max_clips]
    psnr = {h: [] for h in horizons}
    copy = {h: [] for h in horizons}
    ceil = []
    for i in range(0, len(clips), batch):
        part = clips[i : i + batch]
        frames = torch.from_numpy(np.stack([c[0] for c in part]))
        acts = torch.from_numpy(np.stack([c[1] for c in part]))
        eng = Imagination(bundle, n=len(part), seed=seed, temperature=0.0)
        tok = eng.encode(frames)
        rows = _scene(bundle, len(part), metadata=np.stack([c[2] for c in part]))
        eng.reset(context=(tok[:, :context], acts[:, :context]), scene=rows)
        preds = []
        for s in range(H):
            preds.append(eng.step(acts[:, context - 1 + s]).latents)
        for h in horizons:
            real = frames[:, context - 1 + h]
            psnr[h].append(psnr_uint8(eng.frames(preds[h - 1]).cpu(), real).mean())
            copy[h].append(psnr_uint8(frames[:, context - 1], real).mean())
        ceil.append(psnr_uint8(eng.frames(tok[:, context:]).cpu().flatten(0, 1), frames[:, context:].flatten(0, 1)).mean())
    m = lambda xs: round(float(torch.stack(xs).mean()), 3) if xs else None  # noqa: E731
    out = {"clips": len(clips), "context": context, "psnr_by_horizon": {str(h): m(psnr[h]) for h in horizons},
           "copy_last_psnr_by_horizon": {str(h): m(copy[h]) for h in horizons}, "tokenizer_ceiling_psnr": m(ceil)}
    out.update(collision_auc(bundle, data))
    return out


@torch.no_grad()
def collision_auc(bundle, data: Path, window: int = 8, max_windows: int = 400) -> dict:
    """AUC of the end head's logit for "the episode ends (a crash) after this step", teacher-forced over
    validation windows ending at every step of crashed episodes and at random steps of the others."""
    idx = EpisodeIndex(data, split="val")
    wm, spec = bundle.world_model, bundle.conditions
    scores, labels = [], []
    rng = np.random.default_rng(0)
    for path in idx.paths:
        ep = load_episode(path, fields=["frames", "steering", "target_speed_mps", "terminated", "others"])
        T = len(ep["frames"])
        if T < window:
            continue
        ends = [T - window] if ep["terminated"].any() else [int(rng.integers(0, T - window + 1))]
        meta = torch.from_numpy(spec.metadata_ids(episode_metadata(ep["meta"], ep["others"])))[None]
        for s in ends:
            f = torch.from_numpy(ep["frames"][s : s + window])
            tok = bundle.backend.encode(f)[None]
            a = torch.from_numpy(bundle.codec.encode(ep["steering"], ep["target_speed_mps"])[s : s + window])[None]
            from gaia_gym.models.conditions import Conditions

            out = wm(tok, a, cond=Conditions(metadata=meta))
            scores.append(out.end_logit[0].float().numpy())
            labels.append(ep["terminated"][s : s + window])
        if len(scores) >= max_windows:
            break
    s, lab = np.concatenate(scores), np.concatenate(labels)
    return {"collision_auc": roc_auc(s, lab), "collision_positives": int(lab.sum()), "collision_steps": int(len(lab))}


def evaluate_highway(bundle, data: Path, seed: int = 0, progress: bool = True, quick: bool = False) -> dict:
    """Every measurement of this module (see the module docstring) as one JSON-ready dict."""
    t0 = time.time()
    steps = 150 if quick else 600
    probe, probe_report = train_scene_probe(data, steps=steps, seed=seed, progress=progress)
    val = split_frames(data, "val", every=4)
    with torch.no_grad():  # the probe on the tokenizer's reconstructions of the same real frames
        frames = torch.from_numpy(val[0])
        recon = torch.cat([bundle.backend.decode(bundle.backend.encode(frames[i : i + 256]))
                           for i in range(0, len(frames), 256)]).cpu().numpy()
    read = probe.read(recon)
    for j, k in enumerate(METADATA):
        probe_report[k]["val_accuracy_on_reconstructions"] = round(float((read[k] == val[1][:, j]).mean()), 4)
    k = 8 if quick else 1
    out = {"scene_probe": probe_report}
    out["agent_placement"] = evaluate_agent_placement(bundle, val, n=64 // k, seed=seed)
    out["metadata_adherence"] = evaluate_metadata_adherence(bundle, probe, val, n=96 // k, seed=seed)
    out["text_adherence"] = evaluate_text_adherence(bundle, probe, per_prompt=24 // min(k, 4), seed=seed) \
        if bundle.conditions.text_dim else None
    out["negative_prompt_effect"] = evaluate_negative_prompts(bundle, probe, n=48 // k, seed=seed) \
        if bundle.conditions.text_dim else None
    out["fidelity"] = evaluate_fidelity(bundle, data, max_clips=96 // k, seed=seed)
    out["minutes"] = round((time.time() - t0) / 60, 2)
    return out


PICTURE_ROWS = (  # (label, scene options): one held-out context, several conditions
    ("real clip", None),
    ("metadata lanes=2", {"metadata": {"scenario": "highway", "lanes": "2", "density": "medium"}}),
    ("metadata lanes=4", {"metadata": {"scenario": "highway", "lanes": "4", "density": "medium"}}),
    ("meta roundabout", {"metadata": {"scenario": "roundabout"}}),
    ("text: dense traffic", {"text": "a highway with dense traffic"}),
    ("text: empty road", {"text": "a highway with an empty road"}),
    ("agents: 2 ahead", {"metadata": {"scenario": "highway", "lanes": "3"},
                         "vehicles": [[10.0, 0.0, -2.0, 0.0], [16.0, 4.0, 0.0, 0.0]], "agent_steps": 3}),
    ("agents: 1 behind", {"metadata": {"scenario": "highway", "lanes": "3"},
                          "vehicles": [[-8.0, 0.0, 3.0, 0.0]], "agent_steps": 3}),
)


@torch.no_grad()
def highway_picture(bundle, data: Path, out: str | Path, clip: int = 0, steps: int = 6, seed: int = 0,
                    guidance: float = 2.0, scale: int = 3) -> list[str]:
    """One held-out context under several metadata / text / agent conditions, generated from the conditions
    alone (the first row: the real clip and the model's continuation of it): a PNG grid at `out`."""
    import imageio.v3 as iio

    from gaia_gym.imagination import scene_rows
    from gaia_gym.media import grid_image

    idx = EpisodeIndex(data, split="val")
    ep = load_episode(idx.paths[clip % len(idx.paths)], fields=["frames", "steering", "target_speed_mps"])
    C = bundle.prompts.context
    frames = torch.from_numpy(ep["frames"][: C + steps])
    acts = torch.from_numpy(bundle.codec.encode(ep["steering"], ep["target_speed_mps"])[: C + steps])
    rows, labels = [], []
    for label, scene in PICTURE_ROWS:
        asked = [c for c, opt in (("metadata", "metadata"), ("text", "text"), ("agents", "vehicles"))
                 if scene and opt in scene]  # guidance contrasts exactly what the row asks for
        eng = Imagination(bundle, n=1, seed=seed, guidance=guidance if asked else 1.0, guide=asked or ("action",),
                          step_seconds=bundle.step_seconds)
        tok = eng.encode(frames[None])
        sc = scene_rows(bundle, 1, None, scene)
        eng.reset(context=(tok[:, :C], acts[None, :C]), scene=sc, scratch=scene is not None)
        out_frames = []
        for s in range(steps):
            out_frames.append(eng.frames(eng.step(acts[None, C - 1 + s]).latents)[0].cpu().numpy())
        if scene is None:
            rows.append([ep["frames"][C - 1]] + [ep["frames"][C + s] for s in range(steps)])
            labels.append("real")
        rows.append([np.full_like(ep["frames"][0], 255) if scene else ep["frames"][C - 1]] + out_frames)
        labels.append(label if scene else "imagined")
    grid = grid_image(rows, labels, ["context"] + [f"+{s + 1}" for s in range(steps)], scale, label_w=150)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, grid)
    return [str(out)]
