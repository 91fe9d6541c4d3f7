"""Shared helpers of the network tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fast_init(module, *args, seed: int = 0):
    """Parameters drawn by numpy in PyTorch-like ranges (U(±1/sqrt(rows)) for matrices).

    jax's RNG-based `init` costs seconds of CPU compile per module; shapes are all we need.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(s):
        bound = 1 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.3
        return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

    return jax.tree.map(draw, shapes)
