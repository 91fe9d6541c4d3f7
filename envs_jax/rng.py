"""Cheap counter-based random numbers for inside environments.

Threefry (JAX's default PRNG) costs ~20 integer rounds per 64 bits; an environment reset
needs ~70 numbers per instance and, under `vmap` + auto-reset, is evaluated on every step,
so drawing them all with threefry dominated the whole step. Instead each call draws ONE
32-bit word with threefry and expands it with a strong 32-bit integer hash (Wellons'
"lowbias32") over a Weyl sequence. The statistical quality is ample for sampling initial
states and coin flips; keys are still split and consumed the JAX way outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def _mix32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key: jax.Array, n: int) -> jax.Array:
    """n pseudo-random uint32 words derived from `key` with a single threefry draw: [n]."""
    seed = jax.random.bits(key, (), jnp.uint32)
    counter = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(_GOLDEN)
    return _mix32(_mix32(seed) ^ counter)


def to_uniform(bits: jax.Array, dtype) -> jax.Array:
    """uint32 words to floats uniform on [0, 1) with 24-bit resolution (exact in float32)."""
    return (bits >> 8).astype(dtype) * (1.0 / (1 << 24))


def hash_uniforms(key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
    """n uniforms on [0, 1) from one threefry draw: [n]."""
    return to_uniform(hash_bits(key, n), dtype)
