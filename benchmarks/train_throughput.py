"""Training throughput: env steps/s of real runs (collect + store + update) at the paper's ratio.

    python benchmarks/train_throughput.py [--alg heuristic alma ...] [--num-envs 8 64 256]
        [--precision fp32 bf16] [--rollouts 2] [--update-splits 1 4]

For each `num_envs` the run keeps the paper's update ratio (one gradient step on 32 windows of
64 rows per collected episode: `updates_per_rollout = num_envs`) and the paper's network sizes.
The jitted chunk (`rollouts` rollouts) is compiled ahead of time; compile time is reported
separately and excluded from steps/s. On-policy methods (`lica`, `alma_lica`) make one
low-level step per rollout whatever `updates_per_rollout` says (their allocation learner, if
any, keeps the ratio). `--update-splits` times the low-level step's batch in that many
independent pieces (`update_splits`, alma_jax/batching.py). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from alma_jax.config import load_config  # noqa: E402
from alma_jax.trainer import make_train  # noqa: E402


def measure(alg: str, num_envs: int, rollouts: int, buffer_size: int,
            precision: str = "fp32", update_splits: int = 1) -> dict:
    cfg = load_config([
        f"alg={alg}", f"num_envs={num_envs}", f"updates_per_rollout={num_envs}",
        f"rollouts_per_chunk={rollouts}", f"buffer_size={buffer_size}", "progress=false",
        # fp32 adds nothing, so the script also measures commits from before the key
        *([] if precision == "fp32" else [f"precision={precision}"]),
        *([] if update_splits == 1 else [f"update_splits={update_splits}"]),
    ])
    fns = make_train(cfg)
    state = jax.jit(fns.init)(jax.random.PRNGKey(0))
    # fill the buffer past batch_size first, so the timed chunk includes the updates
    warm = make_train(dataclasses.replace(cfg, rollouts_per_chunk=1))
    while int(state.buffer.size) < cfg.batch_size:
        state, _ = jax.jit(warm.chunk)(state)
    # The state is donated as in `alma_jax.train`: without it every call copies the whole
    # replay buffer (2.2 GB at the paper's 5000 episodes) into freshly allocated memory.
    chunk = jax.jit(fns.chunk, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = chunk.lower(state).compile()
    compile_s = time.perf_counter() - t0
    t_env0 = int(state.t_env)
    t0 = time.perf_counter()
    state, metrics = compiled(state)
    jax.block_until_ready(state)
    run_s = time.perf_counter() - t0
    steps = int(state.t_env) - t_env0
    return {
        "alg": alg, "precision": precision, "num_envs": num_envs,
        "update_splits": update_splits,
        "updates_per_rollout": num_envs,
        "rollouts": rollouts, "env_steps": steps,
        "learner_updates": int(np.sum(metrics["learner_updates"])),
        "compile_s": round(compile_s, 2), "run_s": round(run_s, 2),
        "env_steps_per_s": round(steps / run_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alg", nargs="+", default=["heuristic"])
    ap.add_argument("--num-envs", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--rollouts", type=int, default=2, help="timed rollouts per size")
    ap.add_argument("--buffer-size", type=int, default=5000)
    ap.add_argument("--update-splits", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    results = []
    for alg in args.alg:
        for n in args.num_envs:
            for p in args.precision:
                for k in args.update_splits:
                    res = measure(alg, n, args.rollouts, max(args.buffer_size, 2 * n), p, k)
                    print(json.dumps(res), file=sys.stderr, flush=True)
                    results.append(res)
    print(json.dumps({"benchmark": "train_throughput", "env": "savethecity",
                      "scenario": "2-5a_2-5b", "machine": machine_info(), "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
