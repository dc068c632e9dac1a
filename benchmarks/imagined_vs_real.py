"""Model exploitation, measured from identical starts: a policy's imagined return vs its real return.

    python benchmarks/imagined_vs_real.py --policy runs/agent_ppo3/best.zip --policy random \\
        --episodes 10 --futures 4 --json results/agents.json

For each of the 20 test tracks, the real CarRacing-v3 episode is started (`RealCarRacingEnv`: after the
zoom-in, the car standing still; the world model's memory is that first real frame). From exactly that
memory the policy then drives `--horizon` steps twice:
  - in the real simulator: the real return of those steps, and what the reward head predicted along
    the same real steps (the reward head's error in closed loop);
  - in imagination, `--futures` sampled futures (temperature 1, as in training): the imagined return
    (end head respected: rewards stop once it fires).
imagined - real is how much the policy's imagined success exceeds what it achieves: the exploitation gap
(positive: the model flatters the policy). Writes `exploitation_same_start` into --json (other keys kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gaia_gym.errors import exit_with
from gaia_gym.fileio import merge_json
from gaia_gym.seeds import TEST_TRACKS


def _actor(policy: str, bundle):
    """(obs_mode, act(obs dict of batched arrays) -> (n, 2) env actions)."""
    if policy == "random":
        g = np.random.default_rng(0)
        return "tokens", lambda obs: g.uniform(-1, 1, (len(obs["tokens"]), 2)).astype(np.float32)
    from gaia_gym.envs.core import parse_obs_mode
    from gaia_gym.rl.agent import ActionRange, load_agent

    agent = load_agent(policy, world_model=bundle, device="cpu")
    rng = ActionRange.of_agent(agent)
    mode = "+".join(parse_obs_mode("+".join(agent.observation_space.spaces)))
    return mode, lambda obs: rng(agent.predict(obs, deterministic=True)[0])


@torch.no_grad()
def measure(policy: str, bundle, tracks, horizon: int, futures: int, seed: int = 0) -> dict:
    from gaia_gym.envs.real import RealCarRacingEnv
    from gaia_gym.imagination import Imagination

    mode, act = _actor(policy, bundle)
    keys = mode.split("+")
    env = RealCarRacingEnv(bundle=bundle, obs_mode=mode)
    dream = Imagination(bundle, n=futures, temperature=1.0, end_threshold=0.5, seed=seed)
    rows = []
    try:
        for t in tracks:
            obs, _ = env.reset(options={"track": int(t)})
            start = env.engine.state()
            real, model = 0.0, 0.0
            for _ in range(horizon):
                a = act({k: v[None] for k, v in (obs if isinstance(obs, dict) else {mode: obs}).items()})[0]
                obs, r, term, trunc, info = env.step(a)
                real, model = real + r, model + info["model_reward"]
                if term or trunc:
                    break
            dream.restore(start.branch(0, futures))
            total, alive = torch.zeros(futures), torch.ones(futures)
            for _ in range(horizon):
                o = {"tokens": dream.latents.cpu().numpy(), "features": dream.features.cpu().numpy()}
                out = dream.step(torch.from_numpy(act({k: o[k] for k in keys})))
                total += alive * out.reward.cpu()
                alive = alive * (~out.terminated.cpu()).float()
            rows.append({"track": int(t), "real": real, "model_along_real": model,
                         "imagined_mean": float(total.mean()), "imagined_std": float(total.std())})
    finally:
        env.close()
    f = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {"horizon": horizon, "futures": futures, "tracks": len(rows),
            "real_return_mean": f("real"), "imagined_return_mean": f("imagined_mean"),
            "reward_head_along_real_mean": f("model_along_real"),
            "gap_imagined_minus_real": f("imagined_mean") - f("real"),
            "reward_head_error_along_real": f("model_along_real") - f("real"), "per_track": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", action="append", required=True, help="agent zip, 'shipped' or 'random' (repeatable)")
    p.add_argument("--model", default=None, help="world-model directory (default: the shipped model)")
    p.add_argument("--horizon", type=int, default=40, help="steps driven from the start (default: %(default)s)")
    p.add_argument("--futures", type=int, default=8, help="imagined futures per track (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=20, help="test tracks (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="merge the result here")
    a = p.parse_args(argv)
    if a.horizon < 1 or a.futures < 2 or not 1 <= a.episodes <= 20:
        exit_with("imagined_vs_real: need --horizon >= 1, --futures >= 2 and 1 <= --episodes <= 20")
    from gaia_gym.bundle import load_bundle
    from gaia_gym.errors import GaiaGymError

    try:
        bundle = load_bundle(a.model)
        out = {pol: measure(pol, bundle, TEST_TRACKS[: a.episodes], a.horizon, a.futures) for pol in a.policy}
    except (GaiaGymError, FileNotFoundError, ValueError) as e:
        exit_with(f"imagined_vs_real: {e}")
    for pol, r in out.items():
        print(f"{pol}: first {a.horizon} steps from the real start: imagined {r['imagined_return_mean']:.1f}, real "
              f"{r['real_return_mean']:.1f} (gap {r['gap_imagined_minus_real']:+.1f}); reward head along the real "
              f"steps {r['reward_head_along_real_mean']:.1f}")
    if len(out) >= 3:
        from gaia_gym.metrics import rank_correlation

        rho = rank_correlation([r["imagined_return_mean"] for r in out.values()], [r["real_return_mean"] for r in out.values()])
        print(f"rank correlation imagined vs real over {len(out)} policies: {rho:+.2f}")
    if a.json:
        # one record per policy, each with its command: measuring another policy keeps the others
        command = "python benchmarks/imagined_vs_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
        merge_json(a.json, "exploitation_same_start.policies", {pol: {**r, "command": command} for pol, r in out.items()},
                   update=True)
        print(f"wrote {a.json} [exploitation_same_start.policies]")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
