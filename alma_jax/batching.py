"""Batch splitting for CPU core parallelism.

XLA:CPU runs each dense product on one thread and runs independent products side by side. A
window batch evaluated as `n` independent pieces gives the runtime `n` chains of products to
overlap, forward and backward. The mathematics is the same; only the summation order of the
weight gradients (a sum over the pieces) changes. Measured gain is small: four pieces took
0.95 of the one-piece step on a 2-core AVX2 CPU, at 2.5x the compile time
(benchmarks/update_splits.py), because both cores were already busy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split_map(f: Callable[..., Any], n_splits: int) -> Callable[..., Any]:
    """`f` mapped over the leading axis of its arguments in `n_splits` contiguous pieces.

    `f` takes and returns pytrees of arrays that share a leading batch axis (None leaves are
    passed through); the pieces' outputs are concatenated, so the result equals `f(*args)`.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    if n_splits == 1:
        return f

    def mapped(*args):
        b = jax.tree.leaves(args)[0].shape[0]
        n = min(n_splits, b)
        bounds = [b * i // n for i in range(n + 1)]
        outs = [f(*jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], args))
                for lo, hi in zip(bounds[:-1], bounds[1:])]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)

    return mapped
