"""Where SaveTheCity's step time goes: ablated variants of the throughput loop, plus the top
XLA fusions from a profiler trace.

    python benchmarks/env_profile.py [--num-envs 4096] [--steps 64] [--top 15]

Variants (each compiled once, best of 4 interleaved runs, compile excluded):
  full          step with auto-reset, random valid actions, obs + terminal obs consumed
  no_terminal   as full, terminal observation unused (XLA drops it)
  no_reset      step_env (no auto-reset), obs consumed
  fixed_actions as no_terminal with all agents staying (no action sampling)
  no_obs        as no_terminal, only the state and reward consumed
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
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from env_throughput import obs_checksum  # noqa: E402

import envs_jax  # noqa: E402
from envs_jax.savethecity.policies import uniform_valid  # noqa: E402

VARIANTS = ("full", "no_terminal", "no_reset", "fixed_actions", "no_obs")


def make_run(env, kind: str, n: int, steps: int):
    step = jax.vmap(env.step_env if kind == "no_reset" else env.step)

    def run(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, n))

        def body(c, _):
            key, obs, state, acc = c
            key, ka, ks = jax.random.split(key, 3)
            if kind == "fixed_actions":
                actions = jnp.zeros((n, env.n_agents), jnp.int32)
            else:
                actions = uniform_valid(ka, obs)
            obs, state, reward, done, info = step(jax.random.split(ks, n), state, actions)
            acc = acc + jnp.sum(reward) + jnp.sum(state.health)
            if kind != "no_obs":
                acc = acc + obs_checksum(obs)
            if kind == "full":
                acc = acc + obs_checksum(info["terminal_obs"])
            return (key, obs, state, acc), None

        init = (key, obs, state, jnp.zeros((), jnp.float32))
        (_, _, _, acc), _ = jax.lax.scan(body, init, None, length=steps)
        return acc

    return jax.jit(run).lower(jax.random.key(0)).compile()


def top_fusions(compiled, top: int) -> list[dict]:
    """Per-kernel time of one run from a profiler trace, with the ops each fusion contains."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        compiled(jax.random.key(99)).block_until_ready()
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
    for r in range(4):
        for k, c in compiled.items():
            t0 = time.perf_counter()
            c(jax.random.key(r)).block_until_ready()
            best[k] = min(best[k], time.perf_counter() - t0)
    per_step = {k: best[k] / (args.num_envs * args.steps) * 1e9 for k in VARIANTS}
    print(json.dumps({
        "benchmark": "env_profile", "num_envs": args.num_envs, "steps": args.steps,
        "machine": machine_info(),
        "ns_per_env_step": {k: round(v) for k, v in per_step.items()},
        "env_steps_per_s": {k: round(1e9 / v) for k, v in per_step.items()},
        "estimated_ns": {
            "terminal_obs": round(per_step["full"] - per_step["no_terminal"]),
            "auto_reset": round(per_step["no_terminal"] - per_step["no_reset"]),
            "action_sampling": round(per_step["no_terminal"] - per_step["fixed_actions"]),
            "observation": round(per_step["no_terminal"] - per_step["no_obs"]),
        },
        "top_kernels_full": top_fusions(compiled["full"], args.top),
    }, indent=1))


if __name__ == "__main__":
    main()
