"""How XLA:CPU runs a dense layer's weight gradient, and what a custom VJP under vmap does.

    python benchmarks/weight_grad_layout.py [--rows 22176] [--k 128] [--n 256]

The low-level step's weight gradients (`X^T dY`, contracting every row) run through XLA's
own dot emitter, not YNNPACK. This prints, for the step's largest shape, the forward product,
the weight gradient as written (`x.T @ dy`) and the same contraction over two contracting
dimensions (rows split into chunks), each with GFLOP/s and whether XLA sent it to YNNPACK;
then whether a `custom_vjp` dense layer used under `vmap` keeps one contraction over all rows
or builds a per-row weight gradient and reduces it. One JSON document; compile excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402


def best_ms(f, *args, repeats: int = 10) -> float:
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def uses_ynn(f, *args) -> bool:
    return "__ynn_fusion" in jax.jit(f).lower(*args).compile().as_text()


def chunked(c: int):
    def f(x, dy):
        k, n = x.shape[-1], dy.shape[-1]
        return jnp.einsum("cmk,cmn->kn", x.reshape(c, -1, k), dy.reshape(c, -1, n))
    return f


def vmapped_custom_vjp_reduces_per_row(m: int, k: int, n: int) -> bool:
    @jax.custom_vjp
    def dot(x, w):
        return x @ w

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(res, g):
        x, w = res
        return g @ w.T, jnp.einsum("mk,mn->kn", x, g)

    dot.defvjp(fwd, bwd)
    x, w = jnp.ones((32, m // 32, k)), jnp.ones((k, n))
    loss = lambda w, x: jnp.sum(jax.vmap(lambda r: dot(r, w))(x) ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()
    # a batched dot with the per-row [K, N] gradients, reduced afterwards
    return f"f32[32,{k},{n}]" in hlo and "reduce(" in hlo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=22176)  # 32 windows x 63 rows x 11 entities
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    key = jax.random.key(0)
    x = jax.random.normal(key, (a.rows, a.k))
    dy = jax.random.normal(key, (a.rows, a.n))
    w = jax.random.normal(key, (a.k, a.n))
    gflop = 2 * a.rows * a.k * a.n / 1e9
    cases = {"forward x @ w": (lambda x, w: x @ w, (x, w)),
             "weight gradient x.T @ dy": (lambda x, dy: x.T @ dy, (x, dy))}
    for c in (2, 32):
        if a.rows % c == 0:
            cases[f"weight gradient, rows in {c} chunks"] = (chunked(c), (x, dy))
    rows = []
    for name, (f, args) in cases.items():
        ms = best_ms(f, *args)
        rows.append({"what": name, "ms": round(ms, 2), "gflop_per_s": round(gflop / ms * 1e3, 1),
                     "ynnpack": uses_ynn(f, *args)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "weight_grad_layout", "shape": [a.rows, a.k, a.n], "results": rows,
           "custom_vjp_under_vmap_builds_per_row_gradients":
               vmapped_custom_vjp_reduces_per_row(a.rows - a.rows % 32, a.k, a.n),
           "machine": machine_info()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
