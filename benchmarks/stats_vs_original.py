"""SaveTheCity episode statistics under random policies vs the original (spec section 12).

    python benchmarks/stats_vs_original.py [--episodes 6000] [--policy uniform interaction_first]
                                           [--seed 0] [--batch-size 6000]

Each episode is played exactly once in its own environment (`evaluation.run_episodes`), and
every metric is compared with the reference mean ± s.e. of the original by a z-score with
the same tolerance rule as `tests/test_savethecity_stats.py` (|z| <= 4; reference s.e.
inflated by 2.5 for policy I, see `evaluation.py`). Policy I also gets the per-team-size
comparison (reference: 12000 episodes). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402
from envs_jax.savethecity import evaluation as ev  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6000)
    parser.add_argument(
        "--policy", nargs="+", default=list(ev.REFERENCE), choices=list(ev.REFERENCE)
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=6000, help="envs per jitted chunk")
    parser.add_argument("--scenario", default="2-5a_2-5b")
    args = parser.parse_args()

    env = envs_jax.make("savethecity", scenario=args.scenario)
    out = {
        "episodes": args.episodes,
        "seed": args.seed,
        "scenario": args.scenario,
        "z_tol": ev.Z_TOL,
        "ref_se_inflation": ev.REF_SE_INFLATION,
        "machine": machine_info(),
        "policies": {},
    }
    key = jax.random.PRNGKey(args.seed)
    for i, policy in enumerate(args.policy):
        t0 = time.perf_counter()
        run = ev.run_episodes(
            env, policy, jax.random.fold_in(key, i), args.episodes, batch_size=args.batch_size
        )
        seconds = time.perf_counter() - t0
        entry = {"seconds_incl_compile": round(seconds, 2), "metrics": ev.compare(run, policy)}
        if policy == "interaction_first":
            entry["by_team_size"] = ev.compare_by_size(run)
        entry["all_ok"] = all(
            r["ok"] for part in ("metrics", "by_team_size") for r in entry.get(part, {}).values()
        )
        out["policies"][policy] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
