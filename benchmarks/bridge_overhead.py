"""Per-batched-step time of SaveTheCity through the host-callback bridge vs in pure JAX.

    python benchmarks/bridge_overhead.py [--num-envs 32] [--workers 1 4 8] [--steps 50]

Both envs run the same jitted loop: reset_batch, then `steps` rows of (policy U on the last
observation, step_batch) in a `lax.scan`, every observation feeding a checksum. The reset is
timed on its own and subtracted, so `ms_per_step` is the time of one batched step of
`num_envs` environments. For the bridge the loop makes one ordered io_callback per row and
the host envs run in `workers` spawned processes. Two host envs go through the bridge:
the numpy SaveTheCity (`bridge_by_workers`) and `NullHost` (`null_by_workers`), which returns
zero arrays of SaveTheCity's shapes without doing any work, so its time is the bridge's own
cost (callback, pickling, pipes, worker bookkeeping). `host_ms_per_step` is the numpy
SaveTheCity stepped sequentially in this process without any bridge. `steps` should stay
below typical episode lengths (about 80 under policy U) so that few envs idle. Prints one
JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402
from envs_jax.bridge import BridgeEnv  # noqa: E402
from envs_jax.bridge.host import entity_host  # noqa: E402
from envs_jax.bridge.host_savethecity import HostSaveTheCity  # noqa: E402
from envs_jax.savethecity.policies import uniform_valid  # noqa: E402


def make_fns(env, num_envs: int, num_steps: int):
    """Jitted (reset only, reset + steps) functions returning a checksum."""

    def reset(key):
        obs, state = env.reset_batch(jax.random.split(key, num_envs))
        return jnp.sum(obs.entities) + jnp.sum(state.t if hasattr(state, "t") else 0)

    def run(key):
        k0, k1 = jax.random.split(key)
        obs, state = env.reset_batch(jax.random.split(k0, num_envs))

        def body(carry, k):
            obs, state, acc = carry
            ka, ks = jax.random.split(k)
            actions = uniform_valid(ka, obs)
            obs, state, reward, done, _ = env.step_batch(jax.random.split(ks, num_envs), state,
                                                         actions)
            acc = acc + jnp.sum(obs.entities) + jnp.sum(reward) + jnp.sum(done)
            return (obs, state, acc), None

        (_, _, acc), _ = jax.lax.scan(body, (obs, state, jnp.float32(0)),
                                      jax.random.split(k1, num_steps))
        return acc

    return jax.jit(reset), jax.jit(run)


def time_env(env, num_envs: int, num_steps: int, repeats: int) -> dict:
    reset, run = make_fns(env, num_envs, num_steps)
    t0 = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(0)))  # compile (and, for the bridge, spawn)
    jax.block_until_ready(reset(jax.random.key(0)))
    warmup = time.perf_counter() - t0
    runs, resets = [], []
    for r in range(repeats):
        key = jax.random.key(r + 1)
        t0 = time.perf_counter()
        jax.block_until_ready(reset(key))
        resets.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(run(key))
        runs.append(time.perf_counter() - t0)
    run_s, reset_s = float(np.median(runs)), float(np.median(resets))
    return {"ms_per_step": 1e3 * max(run_s - reset_s, 0.0) / num_steps,
            "reset_ms": 1e3 * reset_s, "warmup_s": warmup}


def host_in_process(num_envs: int, num_steps: int, repeats: int) -> float:
    """ms per batched step of the numpy env alone (env.step calls only, policy U actions)."""
    hosts = [entity_host(HostSaveTheCity) for _ in range(num_envs)]
    rng = np.random.default_rng(0)
    times = []
    for r in range(repeats):
        obs = [h.reset(r * num_envs + i) for i, h in enumerate(hosts)]
        spent = 0.0
        for _ in range(num_steps):
            for i, h in enumerate(hosts):
                acts = np.array([rng.choice(np.flatnonzero(a)) for a in obs[i]["avail_actions"]])
                t0 = time.perf_counter()
                obs[i], _, done, _ = h.step(acts)
                spent += time.perf_counter() - t0
                if done:
                    obs[i] = h.reset(int(rng.integers(1 << 30)))
        times.append(spent)
    return 1e3 * float(np.median(times)) / num_steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scenario", default="2-5a_2-5b")
    args = p.parse_args(argv)

    pure = time_env(envs_jax.make("savethecity", scenario=args.scenario), args.num_envs,
                    args.steps, args.repeats)
    host_ms = host_in_process(args.num_envs, args.steps, args.repeats)
    cores = os.cpu_count() or 1
    bridge, null = {}, {}
    for w in args.workers:
        env = envs_jax.make("host_savethecity", scenario=args.scenario, n_workers=w)
        try:
            res = time_env(env, args.num_envs, args.steps, args.repeats)
        finally:
            env.close()
        res["slowdown_vs_pure_jax"] = res["ms_per_step"] / max(pure["ms_per_step"], 1e-9)
        res["host_work_share"] = host_ms / min(w, cores) / res["ms_per_step"]
        bridge[str(w)] = res
        sizes = {k: getattr(env, k) for k in ("n_agents", "n_entities", "n_tasks", "n_actions",
                                              "entity_dim", "episode_limit")}
        with BridgeEnv("envs_jax.bridge.host:NullHost", sizes, n_workers=w) as env:
            null[str(w)] = time_env(env, args.num_envs, args.steps, args.repeats)
    print(json.dumps({
        "benchmark": "bridge_overhead",
        "env": f"savethecity {args.scenario}",
        "num_envs": args.num_envs,
        "steps": args.steps,
        "repeats": args.repeats,
        "pure_jax": pure,
        "host_ms_per_step": host_ms,
        "bridge_by_workers": bridge,
        "null_by_workers": null,
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    main()
