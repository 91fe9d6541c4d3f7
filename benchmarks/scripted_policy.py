"""Solved rate of the scripted greedy policy under the heuristic allocation (a reference point
for what the learned low level could reach with the same allocation), or of the uniform
random policy.

    python benchmarks/scripted_policy.py [--episodes 2000] [--seed 0] [--policy uniform] \
        [--game fire_burn_rate=0.0 ...]

`--game KEY=VALUE` changes SaveTheCity's game constants (`GameConfig`), e.g. the no-burn
variant used as a navigation sanity check in the README. Prints one JSON document: episode
means overall and per team size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from envs_jax import make  # noqa: E402
from envs_jax.savethecity.evaluation import run_episodes  # noqa: E402
from envs_jax.savethecity.policies import uniform_valid  # noqa: E402
from envs_jax.savethecity.scripted import heuristic_policy  # noqa: E402

POLICIES = {"scripted": heuristic_policy, "uniform": uniform_valid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", choices=sorted(POLICIES), default="scripted")
    ap.add_argument("--game", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    game = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.game)}
    env = make("savethecity", game=game) if game else make("savethecity")
    out = run_episodes(env, POLICIES[args.policy], jax.random.PRNGKey(args.seed),
                       args.episodes)
    by_size = {int(n): {"solved": float(np.mean(out["solved"][out["n_agents"] == n])),
                        "return": float(np.mean(out["return"][out["n_agents"] == n]))}
               for n in np.unique(out["n_agents"])}
    print(json.dumps({"benchmark": "scripted_policy", "policy": args.policy, "game": game,
                      "episodes": args.episodes,
                      "machine": machine_info(),
                      "mean": {k: float(np.mean(v)) for k, v in out.items()},
                      "by_n_agents": by_size}, indent=1))


if __name__ == "__main__":
    main()
