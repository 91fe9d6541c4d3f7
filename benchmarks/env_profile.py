"""Where SaveTheCity's step time goes: ablated variants of the throughput loop, plus the top
XLA fusions from a profiler trace.

    python benchmarks/env_profile.py [--num-envs 4096] [--steps 64] [--top 15]

Variants (the loops of `benchmarks/_env_loop.py`, each compiled once, best of 4 interleaved
runs, compile excluded; auto-reset loops in the steady state after a warm-up):
  full          auto-resetting `step_autoreset_batch`, obs + terminal obs consumed
  no_terminal   as full, terminal observation unused (XLA drops it)
  trainer       `step_batch` (no auto-reset), obs consumed: the trainer's rollout
  fixed_actions as trainer with all agents staying (no action sampling)
  no_obs        as trainer, only the state and reward consumed
The differences estimate the cost of each part. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env_loop import make_loop  # noqa: E402
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402

VARIANTS = ("full", "no_terminal", "trainer", "fixed_actions", "no_obs")
LOOPS = {
    "full": {"mode": "autoreset_terminal"},
    "no_terminal": {"mode": "autoreset"},
    "trainer": {"mode": "trainer"},
    "fixed_actions": {"mode": "trainer", "fixed_actions": True},
    "no_obs": {"mode": "trainer", "consume_obs": False},
}


def make_run(env, kind: str, n: int, steps: int):
    """(compiled run, its warmed-up carry) of one variant."""
    init, run = make_loop(env, n, steps, **LOOPS[kind])
    carry = jax.block_until_ready(init(jax.random.key(0)))
    return run.lower(carry).compile(), carry


def top_fusions(compiled, carry, top: int) -> list[dict]:
    """Per-kernel time of one run from a profiler trace, with the ops each fusion contains."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        compiled(carry).block_until_ready()
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(glob.glob(f"{d}/plugins/profile/*/*.trace.json.gz")[0]))
    total = collections.Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and "ThunkExecutor" not in e["name"] and "$" not in e["name"]:
            total[e["name"]] += e.get("dur", 0)
    hlo = compiled.as_text()
    out = []
    all_us = sum(total.values())
    for name, us in total.most_common(top):
        m = re.search(r"^\s*%" + re.escape(name) + r" = (\S+) .*?calls=%([\w.\-]+)", hlo, re.M)
        ops = ""
        if m:
            body = re.search(r"^%" + re.escape(m.group(2)) + r" .*?^}", hlo, re.M | re.S)
            names = re.findall(r'op_name="[^"]*/([^"/]+)"', body.group(0)) if body else []
            ops = ", ".join(f"{k}:{v}" for k, v in collections.Counter(names).most_common(5))
        out.append({"kernel": name, "share": round(us / all_us, 3),
                    "shape": m.group(1) if m else "", "ops": ops})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-envs", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    env = envs_jax.make("savethecity")
    compiled = {k: make_run(env, k, args.num_envs, args.steps) for k in VARIANTS}
    best = {k: float("inf") for k in VARIANTS}
    for c, carry in compiled.values():
        c(carry).block_until_ready()  # one-off costs of the first call
    for _ in range(4):
        for k, (c, carry) in compiled.items():
            t0 = time.perf_counter()
            c(carry).block_until_ready()
            best[k] = min(best[k], time.perf_counter() - t0)
    per_step = {k: best[k] / (args.num_envs * args.steps) * 1e9 for k in VARIANTS}
    print(json.dumps({
        "benchmark": "env_profile", "num_envs": args.num_envs, "steps": args.steps,
        "machine": machine_info(),
        "ns_per_env_step": {k: round(v) for k, v in per_step.items()},
        "env_steps_per_s": {k: round(1e9 / v) for k, v in per_step.items()},
        "estimated_ns": {
            "terminal_obs": round(per_step["full"] - per_step["no_terminal"]),
            "auto_reset": round(per_step["no_terminal"] - per_step["trainer"]),
            "action_sampling": round(per_step["trainer"] - per_step["fixed_actions"]),
            "observation": round(per_step["trainer"] - per_step["no_obs"]),
        },
        "top_kernels_full": top_fusions(*compiled["full"], args.top),
        "top_kernels_trainer": top_fusions(*compiled["trainer"], args.top),
    }, indent=1))


if __name__ == "__main__":
    main()
