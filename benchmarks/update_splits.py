"""The low-level gradient step with its window batch in 1, 2, 4... independent pieces.

    python benchmarks/update_splits.py [--learners heuristic aqmix] [--splits 1 2 4]
        [--rounds 8] [--out FILE] [key=value ...]

`update_splits=n` (alma_jax/batching.py) evaluates the step's networks on n pieces of the
window batch, so that XLA:CPU, which runs each dense product on one thread, can run the
pieces' products on separate cores. This script compiles the step once per n on the same
window batch and state (`update_cost.step_and_args`, the paper's sizes), then times the
variants round-robin, one call each per round, so that this machine's drift in speed hits
every variant alike. It reports each variant's median step time and the median over rounds
of its time relative to n=1 within the same round, and the compile time per variant.

With several devices visible (for example `XLA_FLAGS=--xla_force_host_platform_device_count=2`
on a CPU), one more variant, `devices=N`, runs the unsplit step with the window batch sharded
over the N devices (state replicated, gradients all-reduced by XLA's partitioner), the other
way to give each core its own share of the batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from update_cost import step_and_args  # noqa: E402

from alma_jax.learners.qmix import QMixLearner  # noqa: E402


def timed(fn, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def measure(name: str, splits: list[int], rounds: int, overrides: list[str]) -> dict:
    fn, args, cfg = step_and_args(name, overrides)
    base = fn.__self__.cfg
    compiled, compile_s = {}, {}
    for n in splits:
        learner = QMixLearner(dataclasses.replace(base, update_splits=n))
        t0 = time.perf_counter()
        compiled[n] = jax.jit(learner.update).lower(*args).compile()
        compile_s[n] = round(time.perf_counter() - t0, 1)
    call_args = {n: args for n in splits}
    if len(jax.devices()) > 1:
        n = f"devices={len(jax.devices())}"
        mesh = Mesh(np.asarray(jax.devices()), ("batch",))
        rep = NamedSharding(mesh, PartitionSpec())
        shard = NamedSharding(mesh, PartitionSpec("batch"))
        state, w, key = args
        in_sh = (jax.tree.map(lambda _: rep, state), jax.tree.map(lambda _: shard, w), rep)
        call_args[n] = (jax.device_put(state, rep), jax.device_put(w, shard),
                        jax.device_put(key, rep))
        t0 = time.perf_counter()
        compiled[n] = jax.jit(fn, in_shardings=in_sh).lower(*call_args[n]).compile()
        compile_s[n] = round(time.perf_counter() - t0, 1)
    for n in compiled:
        timed(compiled[n], call_args[n])  # the first call of an executable pays one-off costs
    times = {n: [] for n in compiled}
    for _ in range(rounds):
        for n in compiled:
            times[n].append(timed(compiled[n], call_args[n]))
    ref = splits[0]
    return {
        "learner": name, "alg": cfg.alg, "rounds": rounds,
        "batch": "x".join(map(str, args[1].entities.shape[:2])),
        "step_s_median": {n: round(statistics.median(t), 4) for n, t in times.items()},
        "step_s_min": {n: round(min(t), 4) for n, t in times.items()},
        f"time_relative_to_{ref}_median": {
            n: round(statistics.median(a / b for a, b in zip(t, times[ref])), 3)
            for n, t in times.items()},
        "compile_s": compile_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", nargs="+", default=["heuristic"],
                    choices=["heuristic", "aqmix"])
    ap.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("overrides", nargs="*", help="config key=value (after the paper's)")
    args = ap.parse_args()
    doc = {
        "benchmark": "update_splits", "overrides": args.overrides, "machine": machine_info(),
        "results": [],
    }
    for name in args.learners:
        row = measure(name, args.splits, args.rounds, args.overrides)
        print(json.dumps(row), flush=True)
        doc["results"].append(row)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
