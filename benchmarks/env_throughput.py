"""Env steps/s (SaveTheCity, or starcraft_jax) with random valid actions, batched + scanned.

    python benchmarks/env_throughput.py [--num-envs 1 64 1024 4096 16384] [--steps N]
        [--modes autoreset_terminal autoreset trainer] [--steppers batch vmap]
        [--env savethecity|starcraft_jax|multiarmy_jax] [--scenario 2-5a_2-5b]
        [--map 5m_vs_6m] [--army-scenario 6-8sz_maxsize4_maxarmies3_symmetric]

Modes and steppers are those of `benchmarks/_env_loop.py`: `autoreset_terminal` consumes the
observation and the terminal observation of an auto-resetting step, `autoreset` the
observation only, `trainer` is the trainer's rollout (`step_batch`, no reset). `batch` steps
with `env.step_autoreset_batch` (only done envs are reset), `vmap` with `jax.vmap(env.step)`
(the previous path, kept as the baseline measured in the same run). Auto-reset loops are
timed in the steady state after an untimed warm-up. Compile time is measured separately and
excluded from steps/s. Prints one JSON document (one row per mode, stepper and size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env_loop import MODES, STEPPERS, make_loop, time_loop  # noqa: E402
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402


def measure(env, num_envs: int, num_steps: int, repeats: int, mode: str,
            stepper: str = "batch") -> dict:
    init, run = make_loop(env, num_envs, num_steps, mode, stepper)
    res = time_loop(init, run, num_envs, num_steps, repeats)
    return {"mode": mode, "stepper": "step_batch" if mode == "trainer" else stepper, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="savethecity",
                    choices=["savethecity", "starcraft_jax", "multiarmy_jax"])
    ap.add_argument("--scenario", default="2-5a_2-5b", help="savethecity's scenario")
    ap.add_argument("--map", default="5m_vs_6m", help="starcraft_jax's map_name")
    ap.add_argument("--army-scenario", default="6-8sz_maxsize4_maxarmies3_symmetric",
                    help="multiarmy_jax's scenario")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=None, help="scan length (default: by size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--steppers", nargs="+", choices=STEPPERS, default=list(STEPPERS),
                    help="for the auto-reset modes")
    args = ap.parse_args()
    if args.env == "savethecity":
        env, scenario = envs_jax.make("savethecity", scenario=args.scenario), args.scenario
    elif args.env == "starcraft_jax":
        env, scenario = envs_jax.make("starcraft_jax", map_name=args.map), args.map
    else:
        env = envs_jax.make("multiarmy_jax", scenario=args.army_scenario)
        scenario = args.army_scenario
    results = []
    for n in args.num_envs:
        steps = args.steps or max(64, min(4096, 2_000_000 // max(n, 1) // 8))
        for mode in args.modes:
            for stepper in (["batch"] if mode == "trainer" else args.steppers):
                res = measure(env, n, steps, args.repeats, mode, stepper)
                print(json.dumps(res), file=sys.stderr, flush=True)
                results.append(res)
    best = {}
    for r in results:
        k = f"{r['mode']}/{r['stepper']}"
        if k not in best or r["env_steps_per_s"] > best[k]["env_steps_per_s"]:
            best[k] = {"num_envs": r["num_envs"], "env_steps_per_s": r["env_steps_per_s"]}
    print(json.dumps({
        "benchmark": "env_throughput",
        "env": args.env,
        "scenario": scenario,
        "actions": "uniform over available, sampled in the jitted loop",
        "machine": machine_info(),
        "results": results,
        "best": best,
    }, indent=1))


if __name__ == "__main__":
    main()
