"""Where a training chunk's time goes, for 1 seed and for N vmapped seeds.

    python benchmarks/chunk_parts.py [--seeds 1 8] [--repeats 10] [key=value ...]

Times the four parts of one trainer iteration separately, each `jax.jit(jax.vmap(part))` over
the seeds, on the `benchmarks/seeds.py` configuration (its `DEFAULTS`, overrides after the
flags), from a state that has already trained two chunks: one rollout (`num_envs` episodes),
one `buffer_add` (standalone, so it copies the buffer; inside the chunk it is in place), one
window sample, one low-level gradient step. Mean milliseconds per call over `--repeats`
calls after a warm-up call, compile excluded, plus each part's cost at N seeds relative to
1 seed: about N means batching the seeds saves nothing on that part. Prints one JSON
document.
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
from seeds import DEFAULTS, seed_keys  # noqa: E402

from alma_jax import buffer as bf  # noqa: E402
from alma_jax import trainer  # noqa: E402
from alma_jax.config import load_config  # noqa: E402
from alma_jax.learners.qmix import QMixLearner  # noqa: E402
from alma_jax.rollout import make_rollout  # noqa: E402


def mean_ms(fn, *args, repeats: int) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="config key=value (after the defaults)")
    args = ap.parse_args()
    cfg = load_config([*DEFAULTS, *args.overrides, "num_seeds=1"])
    fns = trainer.make_train(cfg)
    env, learner = fns.env, fns.learner
    if not isinstance(learner, QMixLearner) or fns.high_learner is not None:
        raise SystemExit(f"alg={cfg.alg}: chunk_parts.py times a replay-based QMIX learner "
                         "without an allocation learner (e.g. alg=heuristic, aqmix, random)")
    act, init_carry = trainer._act_fns(learner)
    rollout = make_rollout(env, cfg.num_envs, act, trainer._static_allocation(cfg, env),
                           cfg.action_length, init_carry)
    B, T, eps = cfg.batch_size, cfg.max_traj_len, 0.1

    def roll(params, key):
        return rollout(params, None, key, eps)

    def sample(buf, key):
        return bf.sample_windows(buf, key, B, T)

    rows = []
    for n in args.seeds:
        chunk = jax.jit(jax.vmap(fns.chunk))
        state = jax.jit(jax.vmap(fns.init))(seed_keys(0, n))
        for _ in range(2):
            state, _ = chunk(state)
        keys = seed_keys(5, n)
        episodes = jax.jit(jax.vmap(roll))(state.low.params, keys)[0]
        windows = jax.jit(jax.vmap(sample))(state.buffer, keys)
        r = args.repeats
        rows.append({
            "num_seeds": n,
            "rollout_ms": mean_ms(jax.vmap(roll), state.low.params, keys, repeats=r),
            "buffer_add_ms": mean_ms(jax.vmap(lambda b, e: bf.buffer_add(b, e, 5)),
                                     state.buffer, episodes, repeats=r),
            "sample_ms": mean_ms(jax.vmap(sample), state.buffer, keys, repeats=r),
            "update_ms": mean_ms(jax.vmap(learner.update), state.low, windows, keys,
                                 repeats=r),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]
    for row in rows:
        row["x_first"] = {k[:-3]: round(row[k] / base[k], 2) for k in base if k.endswith("_ms")}
        for k in [k for k in row if k.endswith("_ms")]:
            row[k] = round(row[k], 2)
    print(json.dumps({
        "benchmark": "chunk_parts", "alg": cfg.alg, "overrides": [*DEFAULTS, *args.overrides],
        "num_envs": cfg.num_envs, "batch_size": B, "max_traj_len": T,
        "notes": "mean ms per call, compile excluded; x_first = cost relative to the first "
                 "--seeds entry; buffer_add standalone (copies the buffer)",
        "machine": machine_info(), "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
