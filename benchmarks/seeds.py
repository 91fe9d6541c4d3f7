"""Wall time of N seeds vmapped in one program vs N separate single-seed runs, N in {1,2,4,8}.

    python benchmarks/seeds.py [--seeds 1 2 4 8] [--chunks 3] [--plot seeds.png] [key=value ...]

Both sides run the trainer's jitted chunk (`rollouts_per_chunk` x collect + store + update)
`--chunks` times from a fresh state, with the same config (small networks by default, see
`DEFAULTS`; any `key=value` override, e.g. the paper's sizes, goes after the flags).

- vmapped: `jax.jit(jax.vmap(chunk))` over N seeds, compiled once for N. When several
  devices are visible and divide N, the trainer's "seeds" plan instead (`alma_jax.sharding`:
  shard_map of the vmapped chunk, whole seeds per device). On a CPU,
  `XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/seeds.py` makes
  each core a device, so N seeds use both cores while a single run uses one device.
- separate: N single-seed runs one after another. Each run's compile is counted, as N
  separate processes would each compile (without a persistent compilation cache); the
  single-seed program is compiled once here and its compile time counted N times.

Compile time (init + chunk, ahead of time) is reported separately; `*_excl_compile` columns
leave it out. Every run also records its CPU seconds (all threads): `cores_busy` says how
much of the machine a run used, `cpu_per_seed_vs_one_seed` how much CPU work per seed the
vmapped program saves over a single-seed run, and `all_cores_floor_over_one_seed` the least
`vmapped_over_one_seed` (N vmapped seeds over one seed, the scale issue's yardstick) that this
much CPU work allows with every core busy. Prints one JSON document; `--plot` also writes a
PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from alma_jax.config import load_config  # noqa: E402
from alma_jax.sharding import Plan, make_mesh  # noqa: E402
from alma_jax.trainer import make_train  # noqa: E402

# Small enough for a few minutes on a 2-core CPU; updates start with the first rollout
# (batch_size <= num_envs), so every timed chunk collects, stores and trains.
DEFAULTS = [
    "alg=heuristic", "num_envs=8", "buffer_size=64", "batch_size=8", "max_traj_len=32",
    "updates_per_rollout=4", "rollouts_per_chunk=2", "embed_dim=32", "hyper_dim=32",
    "hidden_dim=16", "mix_dim=16", "progress=false",
]


def seed_keys(first: int, n: int) -> jax.Array:
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(first, first + n))


def seed_plan(n: int):
    """The trainer's "seeds" plan when several devices are visible and divide N, else None.

    On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=K` exposes K host devices
    that run their shards on separate threads: the way N seeds use more than one core.
    """
    devices = jax.devices()
    if len(devices) < 2 or n % len(devices):
        return None
    return Plan(make_mesh(devices), "seeds")


def compile_for(fns, n: int) -> tuple[object, object, float]:
    """(init, compiled chunk, compile seconds) of the N-seed vmapped program."""
    plan = seed_plan(n)
    t0 = time.perf_counter()
    if plan is None:
        init = jax.jit(jax.vmap(fns.init)).lower(seed_keys(0, n)).compile()
        state = jax.eval_shape(jax.vmap(fns.init), seed_keys(0, n))
        chunk = jax.jit(jax.vmap(fns.chunk), donate_argnums=0).lower(state).compile()
        return init, chunk, time.perf_counter() - t0
    init, chunk, _ = plan.jitted(fns)
    init_c = init.lower(plan.put(seed_keys(0, n))).compile()
    chunk = chunk.lower(plan.abstract(jax.eval_shape(jax.vmap(fns.init),
                                                     seed_keys(0, n)))).compile()
    return (lambda k: init_c(plan.put(k))), chunk, time.perf_counter() - t0


class Run(NamedTuple):
    wall_s: float
    cpu_s: float  # process user + system seconds over all threads
    env_steps: int  # summed over seeds


def timed_run(init, chunk, first_seed: int, n: int, chunks: int) -> Run:
    """Wall and CPU seconds and env steps of `chunks` chunks from a fresh state.

    CPU seconds are the process's user + system time over all threads: divided by the wall
    time they say how many cores the run kept busy (XLA's CPU backend splits large ops across
    its thread pool, so even one seed uses more than one core).
    One untimed chunk on a throwaway state first: the first call of an executable pays
    one-off costs, which later runs of a program compiled once would not.
    """
    jax.block_until_ready(chunk(init(seed_keys(first_seed + 10_000, n))))
    state = init(seed_keys(first_seed, n))
    jax.block_until_ready(state)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(chunks):
        state, _ = chunk(state)
    jax.block_until_ready(state)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Run(wall, cpu, int(jnp.sum(state.t_env)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--chunks", type=int, default=3, help="timed chunks per run")
    ap.add_argument("--plot", default=None, help="write a PNG here")
    ap.add_argument("overrides", nargs="*", help="config key=value (after the defaults)")
    args = ap.parse_args()
    cfg = load_config([*DEFAULTS, *args.overrides, "num_seeds=1"])
    fns = make_train(cfg)  # num_seeds only matters to the host loop: one fns for every N

    with jax.default_device(jax.devices()[0]):
        init1, chunk1, compile1 = compile_for(fns, 1)
    separate: list[Run] = []  # single-seed runs with seeds 0, 1, ...
    for s in range(max(args.seeds)):
        separate.append(timed_run(init1, chunk1, s, 1, args.chunks))
        print(json.dumps({"separate_seed": s, "run_s": round(separate[-1].wall_s, 3)}),
              file=sys.stderr, flush=True)
    machine = machine_info()
    one = separate[0]
    results = []
    for n in args.seeds:
        if n == 1:
            compile_n, (run_n, cpu_n, steps_n) = compile1, one
        else:
            init, chunk, compile_n = compile_for(fns, n)
            run_n, cpu_n, steps_n = timed_run(init, chunk, 0, n, args.chunks)
        sep_run = sum(r.wall_s for r in separate[:n])
        sep_cpu = sum(r.cpu_s for r in separate[:n])
        sep_steps = sum(r.env_steps for r in separate[:n])
        res = {
            "num_seeds": n,
            "vmapped": {"compile_s": round(compile_n, 2), "run_s": round(run_n, 3),
                        "total_s": round(compile_n + run_n, 2), "env_steps": steps_n,
                        "env_steps_per_s_excl_compile": round(steps_n / run_n, 1),
                        "cpu_s": round(cpu_n, 3), "cores_busy": round(cpu_n / run_n, 2)},
            "separate": {"compile_s": round(n * compile1, 2), "run_s": round(sep_run, 3),
                         "total_s": round(n * compile1 + sep_run, 2), "env_steps": sep_steps,
                         "env_steps_per_s_excl_compile": round(sep_steps / sep_run, 1),
                         "cpu_s": round(sep_cpu, 3), "cores_busy": round(sep_cpu / sep_run, 2)},
            "speedup_incl_compile": round((n * compile1 + sep_run) / (compile_n + run_n), 2),
            "speedup_excl_compile": round(sep_run / run_n, 2),
            # the yardstick: N vmapped seeds against ONE seed's run, compile excluded
            "vmapped_over_one_seed": round(run_n / one.wall_s, 2),
            # CPU work per seed of the vmapped program relative to a single-seed run: what
            # batching the seeds saves (1.0 = nothing; compute-bound work stays near 1)
            "cpu_per_seed_vs_one_seed": round(cpu_n / n / one.cpu_s, 2),
            # the best vmapped_over_one_seed this CPU work allows with every core busy
            "all_cores_floor_over_one_seed": round(cpu_n / machine["cores"] / one.wall_s, 2),
        }
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
    doc = {
        "benchmark": "seeds", "env": cfg.env, "scenario": cfg.env_args.get("scenario"),
        "alg": cfg.alg, "overrides": [*DEFAULTS, *args.overrides], "chunks": args.chunks,
        "rollouts_per_chunk": cfg.rollouts_per_chunk, "num_envs": cfg.num_envs,
        "updates_per_rollout": cfg.updates_per_rollout,
        "notes": "separate = N single-seed runs in sequence, compile counted N times (as N "
                 "processes without a compilation cache); compile = init + chunk, ahead of "
                 "time; env steps summed over seeds; cpu_s = process user+system seconds "
                 "over all threads",
        "machine": machine, "results": results,
        "vmapped_devices": len(jax.devices()),
    }
    print(json.dumps(doc, indent=1))
    if args.plot:
        plot(results, args.plot, doc)


def plot(results: list[dict], path: str, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["num_seeds"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, title in ((axes[0], "total_s", "compile included"),
                           (axes[1], "run_s", "compile excluded")):
        for side, style in (("vmapped", "o-"), ("separate", "s--")):
            ax.plot(n, [r[side][col] for r in results], style, label=side)
        ax.set(xlabel="seeds N", ylabel="wall time (s)", title=f"{title}, "
               f"{doc['chunks']} chunks x {doc['rollouts_per_chunk']} rollouts per seed")
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(v) for v in n])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{doc['alg']}: N vmapped seeds vs N separate runs "
                 f"({doc['machine']['backend']}, {doc['machine']['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
