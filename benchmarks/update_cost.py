"""What one gradient step costs, against what this machine's matmul units can do.

    python benchmarks/update_cost.py [--learners heuristic aqmix alma_alloc lica]
        [--precision fp32 bf16] [--repeats 5] [--top 12] [--out FILE] [key=value ...]

For each learner at the paper's sizes (`configs/`, overrides after the flags): the XLA-counted
FLOPs of one step (`compiled.cost_analysis()`), its wall time (compile excluded, best of
`--repeats` calls after a warm-up), the achieved GFLOP/s, and the fraction of this machine's
measured matmul peak (a 2048² `dot` through XLA, fp32 and bf16 with fp32 accumulation). The
step's time is also given in *units*: the time the fp32 peak needs for 62.86 GFLOP (issue 20's
yardstick; the heuristic step of 2026-12-04 was 4.14 units). Then a profile of a few calls: the
XLA ops that took the most time, with their share of the step, and a timeline (`timeline()`)
of how many worker threads run a traced op at once, which also exposes the dots XLA runs
outside the trace (the dense layers' weight gradients).

Learners: `heuristic` and `aqmix` (the QMIX low level, per-subtask and flat mixers),
`alma_alloc` (ALMA's allocator step: critic, proposal network, Pop-Art), `lica` (LICA's
actor-critic step on one rollout of 32 episodes). Windows come from one rollout of the
untrained policy (epsilon 1), so episode lengths and masks are those of real data.
Prints one JSON document (and writes it to `--out`).
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

from alma_jax import buffer as bf  # noqa: E402
from alma_jax.config import alloc_settings, load_config  # noqa: E402
from alma_jax.trainer import make_train  # noqa: E402

UNIT_GFLOP = 62.86  # issue 20's yardstick: the paper-sized heuristic step's FLOPs
LEARNERS = {
    # name: (alg, which update)
    "heuristic": ("heuristic", "low"),
    "aqmix": ("aqmix", "low"),
    "alma_alloc": ("alma", "high"),
    "lica": ("lica", "low"),
}


def best_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # the first call of an executable pays one-off costs
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peaks(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of an n×n·n×n `dot` through XLA: fp32, and bf16 inputs with fp32 accumulation."""
    out = {}
    for name, dt in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        f = f.lower(a, a).compile()
        out[name] = round(2 * n**3 / best_seconds(f, (a, a), repeats) / 1e9, 1)
    return out


def instruction_kinds(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> a short description (opcode and, for fusions, the kind)."""
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        kind = re.search(r"kind=(\w+)", line)
        kinds[name] = f"{op}{'/' + kind.group(1) if kind else ''} {shape[:60]}"
    return kinds


def op_category(name: str, what: str) -> str:
    """Coarse class of an XLA op for the profile's breakdown."""
    if name.startswith("ynn_"):
        return "dense matmul (YNNPACK)"
    op = what.split(" ", 1)[0]
    if op.startswith("dot") or op.startswith("fusion/kOutput"):
        return "other dot (XLA, e.g. attention's batched contractions)"
    if op.startswith("fusion/kLoop") or op.startswith("fusion/kInput"):
        return "elementwise / reduce fusions"
    return op.split("/")[0] or "other"


def op_kind(name: str, kinds: dict[str, str]) -> str:
    """The HLO kind and shape of a traced op ("" if none): thunk names carry the instruction's
    name, sometimes behind a `wrapped_` prefix."""
    return kinds.get(name, kinds.get(name.removeprefix("wrapped_"), ""))


def is_xla_op(event: dict, kinds: dict[str, str]) -> bool:
    """A completed trace event that is one of the executable's ops (YNNPACK fusions included)."""
    name = event.get("name", "")
    return event.get("ph") == "X" and (bool(op_kind(name, kinds)) or name.startswith("ynn_"))


def profile(compiled, args, calls: int, top: int) -> dict:
    """The XLA ops that took the most time over `calls` profiled calls (ms per call)."""
    kinds = instruction_kinds(compiled.as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        path = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)[0]
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        if is_xla_op(e, kinds):
            total[e["name"]] += e.get("dur", 0.0) / 1e3 / calls
    busy = sum(total.values())

    by_cat = collections.Counter()
    for n, ms in total.items():
        by_cat[op_category(n, op_kind(n, kinds))] += ms
    return {
        "timeline": timeline(events, kinds, calls),
        "op_ms_per_step": round(busy, 1),
        "by_category": {c: {"ms_per_step": round(ms, 1), "share": round(ms / busy, 3)}
                        for c, ms in by_cat.most_common()},
        "top_ops": [{"op": n, "what": op_kind(n, kinds), "ms_per_step": round(ms, 2),
                     "share": round(ms / busy, 3)} for n, ms in total.most_common(top)],
    }


WORKER_PREFIX = "tf_XLAEigen"  # XLA:CPU's intra-op pool, where the thunks run


def timeline(events: list[dict], kinds: dict[str, str], calls: int) -> dict:
    """How the step's wall time splits by how many worker threads run a traced op (ms per call).

    The op table above sums each op's own duration, so it neither adds up to the wall time nor
    shows waiting. Here the ops' intervals on XLA's worker threads are merged: `both`/`one`/
    `none` is the time with 2+/1/0 traced ops running. `none` is not idle time: a `dot` that
    XLA runs with its own emitter (the dense layers' weight gradients, `X^T dY` over every row)
    shows up as a sub-millisecond launch while its Eigen contraction runs untraced, so `none`
    is mostly those contractions; `async_dots` counts the short dot launches behind it. The
    span runs from the first op of the first call to the end of the last, so the host's gaps
    between calls (milliseconds) count as `none` too.
    """
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    workers = {k for k, n in names.items() if n.startswith(WORKER_PREFIX)}
    ops = [e for e in events if is_xla_op(e, kinds) and (e["pid"], e["tid"]) in workers]
    if not ops:
        return {}
    edges = sorted([(e["ts"], 1) for e in ops] + [(e["ts"] + e["dur"], -1) for e in ops])
    spent = collections.Counter()
    running, last = 0, edges[0][0]
    for t, d in edges:
        spent[min(running, 2)] += t - last
        running, last = running + d, t
    span = edges[-1][0] - edges[0][0]
    per_thread = collections.Counter()
    for e in ops:
        per_thread[(e["pid"], e["tid"])] += e["dur"]
    async_dots = [e for e in ops if op_kind(e["name"], kinds).startswith("dot")
                  and e["dur"] < 1e3]
    return {
        "span_ms": round(span / 1e3 / calls, 1),
        "threads": len(per_thread),
        "thread_busy_fraction": sorted(round(b / span, 3) for b in per_thread.values()),
        "both_ms": round(spent[2] / 1e3 / calls, 1),
        "one_ms": round(spent[1] / 1e3 / calls, 1),
        "none_ms": round(spent[0] / 1e3 / calls, 1),
        "async_dots": len(async_dots) // calls,
    }


def step_and_args(name: str, overrides: list[str]):
    """(update function, its arguments) for one learner at the configured sizes."""
    alg, which = LEARNERS[name]
    n_envs = 32
    cfg = load_config([f"alg={alg}", f"num_envs={n_envs}", "progress=false", *overrides])
    fns = make_train(cfg)
    state = jax.jit(fns.init)(jax.random.key(0))
    env = fns.env
    from alma_jax.rollout import make_rollout
    from alma_jax.trainer import _act_fns, _static_allocation

    act, init_carry = _act_fns(fns.learner)
    alloc_fn = fns.high_learner.decide if fns.high_learner is not None else \
        _static_allocation(cfg, env)
    rollout = make_rollout(env, n_envs, act, alloc_fn, cfg.action_length, init_carry)
    a_params = None if fns.high_learner is None else fns.high_learner.alloc_params(
        state.high, jnp.float32(1.0), jnp.float32(1.0))
    episodes, _, steps = jax.jit(rollout)(state.low.params, a_params, jax.random.key(1), 1.0)
    key = jax.random.key(2)
    if which == "high":
        buf = bf.buffer_add(bf.buffer_init(fns.example_episode, max(cfg.buffer_size, n_envs)),
                            episodes, 0)
        a = alloc_settings(cfg)
        eligible = bf.recent_episodes(buf, steps, cfg.aql.get("decay_old", 150_000))
        w = bf.sample_windows(buf, key, a["batch_size"], cfg.max_traj_len, eligible)
        return fns.high_learner.update, (state.high, w, key, steps), cfg
    if getattr(fns.learner, "on_policy", False):
        return fns.learner.update, (state.low, bf.episodes_as_window(episodes, 0), key), cfg
    buf = bf.buffer_add(bf.buffer_init(fns.example_episode, max(cfg.buffer_size, n_envs)),
                        episodes, 0)
    w = bf.sample_windows(buf, key, cfg.batch_size, cfg.max_traj_len)
    return fns.learner.update, (state.low, w, key), cfg


def measure(name: str, precision: str, overrides: list[str], peaks: dict, repeats: int,
            top: int) -> dict:
    extra = [] if precision == "fp32" else [f"precision={precision}"]
    fn, args, cfg = step_and_args(name, [*overrides, *extra])
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    sec = best_seconds(compiled, args, repeats)
    unit_s = UNIT_GFLOP / peaks["fp32"]
    return {
        "learner": name, "alg": cfg.alg, "precision": precision,
        "batch": "x".join(map(str, args[1].entities.shape[:2])),  # windows x rows
        "gflop": round(flops / 1e9, 2), "step_s": round(sec, 4),
        "gflop_per_s": round(flops / sec / 1e9, 1),
        "fraction_of_fp32_peak": round(flops / sec / 1e9 / peaks["fp32"], 3),
        "fraction_of_bf16_peak": round(flops / sec / 1e9 / peaks["bf16"], 3),
        "units": round(sec / unit_s, 2), "compile_s": round(compile_s, 1),
        "profile": profile(compiled, args, min(repeats, 3), top) if top else {},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=list(LEARNERS))
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="ops listed from the profile (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("overrides", nargs="*", help="config key=value (after the paper's)")
    args = ap.parse_args()
    peaks = matmul_peaks()
    print(json.dumps({"matmul_peak_gflop_per_s": peaks}), file=sys.stderr, flush=True)
    rows = []
    for name in args.learners:
        for p in args.precision:
            rows.append(measure(name, p, args.overrides, peaks, args.repeats, args.top))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}),
                  file=sys.stderr, flush=True)
    doc = {"benchmark": "update_cost", "overrides": args.overrides,
           "matmul_peak_gflop_per_s": peaks,
           "unit": f"time of {UNIT_GFLOP} GFLOP at the fp32 peak = "
                   f"{round(UNIT_GFLOP / peaks['fp32'], 4)} s",
           "machine": machine_info(), "results": rows}
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
