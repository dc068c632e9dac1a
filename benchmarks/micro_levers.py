"""The small measurements behind docs/performance.md's "measured and not shipped" list, and the rollout
hash behind its "same seed, same rollout" check.

    python benchmarks/micro_levers.py decoder [TOKENIZER_DIR ...]   # eager vs torch.compile vs channels_last
    python benchmarks/micro_levers.py attention                     # SDPA vs two matmuls + softmax
    python benchmarks/micro_levers.py hash [MODEL_DIR ...]          # sha256 of a seeded, sampled rollout

`hash` prints one line per model; run it with the code before a change (a git worktree on PYTHONPATH)
and after: equal hashes mean the same latents, rewards, features and decoded frames, bit for bit.
Timings are milliseconds per call at batch 64, after 3 warm-up calls; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
import torch.nn.functional as F


def _ms(f, n: int = 20) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


@torch.no_grad()
def decoder(paths) -> None:
    from gaia_gym.bundle import load_tokenizer

    for path in paths or [None]:
        tok = load_tokenizer(path)
        ids = torch.randint(0, tok.cfg.vocab_size, (64, tok.cfg.grid, tok.cfg.grid), generator=torch.Generator().manual_seed(0))
        zq = tok.quant.embed(ids)
        dec = tok.decoder
        eager = _ms(lambda: dec(zq))
        t0 = time.time()
        comp = torch.compile(dec)
        comp(zq)
        compile_s = time.time() - t0
        compiled = _ms(lambda: comp(zq))
        err = float((comp(zq) - dec(zq)).abs().max())
        cl = dec.to(memory_format=torch.channels_last)
        zc = zq.contiguous(memory_format=torch.channels_last)
        chl = _ms(lambda: cl(zc))
        print(f"{path or 'shipped tokenizer'}: decoder eager {eager:.1f} ms, compiled {compiled:.1f} ms (compile "
              f"{compile_s:.0f} s, max |diff| {err:.1e}), channels_last {chl:.1f} ms per 64 frames", flush=True)


def attention() -> None:
    g = torch.Generator().manual_seed(0)
    for B, nq, nk in ((64, 6, 96), (64, 18, 270), (256, 6, 96)):  # fast model b64, shipped b64, fast b256
        q = torch.randn(B, 4, nq, 64, generator=g)
        k, v = torch.randn(B, 4, nk, 64, generator=g), torch.randn(B, 4, nk, 64, generator=g)

        def manual():
            return torch.matmul((torch.matmul(q, k.transpose(-1, -2)) / 8.0).softmax(-1), v)

        sdpa = _ms(lambda: F.scaled_dot_product_attention(q, k, v), 200)
        mm = _ms(manual, 200)
        err = float((F.scaled_dot_product_attention(q, k, v) - manual()).abs().max())
        print(f"batch {B}, {nq} queries over {nk} keys, 4 heads: SDPA {sdpa:.2f} ms, matmuls {mm:.2f} ms per layer "
              f"(max |diff| {err:.1e})", flush=True)


@torch.no_grad()
def rollout_hash(paths, n: int = 8, steps: int = 30) -> None:
    import gaia_gym
    from gaia_gym.bundle import load_bundle
    from gaia_gym.imagination import Imagination

    print(f"code: {gaia_gym.__file__}")
    for path in paths or [None]:
        eng = Imagination(load_bundle(path), n=n, seed=0)
        eng.reset()
        g, h = torch.Generator().manual_seed(0), hashlib.sha256()
        for _ in range(steps):
            out = eng.step(torch.rand(n, 2, generator=g) * 2 - 1)
            for t in (out.latents, out.reward, out.features):
                h.update(t.numpy().tobytes())
        h.update(eng.frames().numpy().tobytes())
        print(f"{path or 'shipped model'}: {h.hexdigest()[:16]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["decoder", "attention", "hash"])
    p.add_argument("paths", nargs="*", help="tokenizer directories (decoder) or model directories (hash)")
    a = p.parse_args()
    if a.what == "decoder":
        decoder(a.paths)
    elif a.what == "attention":
        attention()
    else:
        rollout_hash(a.paths)


if __name__ == "__main__":
    main()
