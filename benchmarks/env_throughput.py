"""SaveTheCity env steps/s with random valid actions and full observations, vmapped + scanned.

    python benchmarks/env_throughput.py [--num-envs 1 64 1024 4096 16384] [--steps 256]

Actions are sampled inside the jitted loop from the previous observation's available actions;
every returned observation (and the terminal observation in `info`) feeds a checksum, so XLA
cannot skip building them. Compile time is measured separately (ahead-of-time compile) and
excluded from steps/s. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, time_env_runner  # noqa: E402

import envs_jax  # noqa: E402
from envs_jax.savethecity.policies import uniform_valid  # noqa: E402


def obs_checksum(obs) -> jax.Array:
    return (
        jnp.sum(obs.entities)
        + jnp.sum(obs.avail_actions)
        + jnp.sum(obs.obs_mask)
        + jnp.sum(obs.entity_mask)
        + jnp.sum(obs.entity2task_mask)
        + jnp.sum(obs.task_mask)
    )


def make_runner(env, num_envs: int, num_steps: int, terminal_obs: bool):
    step = jax.vmap(env.step)

    def run(key):
        key, k0 = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k0, num_envs))

        def body(carry, _):
            key, obs, state, acc = carry
            key, ka, ks = jax.random.split(key, 3)
            actions = uniform_valid(ka, obs)  # batched: one key for all environments
            obs, state, reward, done, info = step(jax.random.split(ks, num_envs), state, actions)
            acc = acc + obs_checksum(obs) + jnp.sum(reward) + jnp.sum(done)
            if terminal_obs:
                acc = acc + obs_checksum(info["terminal_obs"])
            return (key, obs, state, acc), None

        init = (key, obs, state, jnp.zeros((), jnp.float32))
        (_, _, _, acc), _ = jax.lax.scan(body, init, None, length=num_steps)
        return acc

    return jax.jit(run)


def measure(env, num_envs: int, num_steps: int, repeats: int, terminal_obs: bool) -> dict:
    run = make_runner(env, num_envs, num_steps, terminal_obs)
    return time_env_runner(run, num_envs, num_steps, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="2-5a_2-5b")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=None, help="scan length (default: by size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-terminal-obs", action="store_true",
                    help="do not consume info['terminal_obs'] (lets XLA skip building it)")
    args = ap.parse_args()
    env = envs_jax.make("savethecity", scenario=args.scenario)
    results = []
    for n in args.num_envs:
        steps = args.steps or max(64, min(4096, 2_000_000 // max(n, 1) // 8))
        res = measure(env, n, steps, args.repeats, not args.no_terminal_obs)
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
    best = max(results, key=lambda r: r["env_steps_per_s"])
    print(json.dumps({
        "benchmark": "env_throughput",
        "env": "savethecity",
        "scenario": args.scenario,
        "actions": "uniform over available, sampled in the jitted loop",
        "observations": "full obs + terminal obs consumed" if not args.no_terminal_obs
        else "full obs consumed",
        "machine": machine_info(),
        "results": results,
        "best": {"num_envs": best["num_envs"], "env_steps_per_s": best["env_steps_per_s"]},
    }, indent=1))


if __name__ == "__main__":
    main()
