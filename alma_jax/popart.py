"""Pop-Art output normalisation (spec 2.5, F2): EMA statistics and the output-preserving rescale.

Statistics are shared by every output of a head (all subtask columns of the mixer); the
affine `a`, `b` live in the parameter tree and are passed in and out explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

ALPHA = 0.01
SIGMA2_FLOOR = 1e-8


@struct.dataclass
class PopArtStats:
    """Scalar running mean and variance of raw targets; `initialised` False until first update."""

    mu: jax.Array
    sigma2: jax.Array
    initialised: jax.Array


def popart_init() -> PopArtStats:
    """Fresh, uninitialised statistics (denormalisation is the identity until the first update)."""
    return PopArtStats(jnp.float32(0.0), jnp.float32(1.0), jnp.bool_(False))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ(x·m) / (Σm + 1e-8) over all elements -> scalar."""
    m = mask.astype(x.dtype)
    # where, not x·m alone: garbage (inf/NaN) in masked-out targets must not leak in.
    return jnp.sum(jnp.where(m != 0, x * m, 0.0)) / (jnp.sum(m) + 1e-8)


def popart_update(
    stats: PopArtStats,
    a: jax.Array,
    b: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    alpha: float = ALPHA,
) -> tuple[PopArtStats, jax.Array, jax.Array, jax.Array]:
    """stats, a [K], b [K], Y [..., K], mask [..., K] -> (stats', a' [K], b' [K], Z [..., K]).

    Updates the statistics, rescales the affine so denormalised outputs are preserved (no
    rescale on the first call) and returns the normalised targets Z = (Y - μ') / σ'.
    An update whose mask is empty leaves uninitialised statistics uninitialised (the original
    would divide by zero there).
    """
    init = stats.initialised
    mu0 = jnp.where(init, stats.mu, masked_mean(targets, mask))
    delta = targets - mu0
    mu = mu0 + alpha * masked_mean(delta, mask)
    msq = masked_mean(delta**2, mask)
    sigma2 = (1.0 - alpha) * (jnp.where(init, stats.sigma2, msq) + alpha * msq)
    sigma2 = jnp.maximum(sigma2, SIGMA2_FLOOR)

    sigma = jnp.sqrt(sigma2)
    # Preserve outputs of an initialised head; the first call only sets the statistics.
    sigma_old = jnp.sqrt(stats.sigma2)
    new_a = jnp.where(init, a * sigma_old / sigma, a)
    new_b = jnp.where(init, (sigma_old * b + stats.mu - mu) / sigma, b)
    z = (targets - mu) / sigma

    # Skip the whole update if it would initialise from nothing.
    ok = init | (jnp.sum(mask) > 0)
    new_stats = PopArtStats(jnp.where(ok, mu, stats.mu), jnp.where(ok, sigma2, stats.sigma2), ok)
    return new_stats, new_a, new_b, jnp.where(ok, z, targets)


def denormalise(stats: PopArtStats, x: jax.Array) -> jax.Array:
    """σ·x + μ once initialised, x before: normalised outputs -> raw target scale (any shape)."""
    return jnp.where(stats.initialised, jnp.sqrt(stats.sigma2) * x + stats.mu, x)
