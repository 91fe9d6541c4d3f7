"""Reference random policies of SaveTheCity (spec section 12), jittable.

Both take `(key, obs)` where `obs` is an `Observation` (or anything with `avail_actions`
[..., A, n_actions] and, optionally, `entity_mask` [..., E]) and return int32 actions
[..., A]. They accept any leading batch dimensions directly (one key for the whole batch is
cheaper than a key per environment) and also work under `jax.vmap`. Padded agent slots
(entity_mask True) always get action 0.

* `uniform_valid` (policy U): uniform over the available actions.
* `interaction_first` (policy I): if any of the interaction actions 9..11 (extinguish,
  build, freeze) is available, uniform among those; else uniform over all available ones.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from envs_jax.rng import hash_uniforms
from envs_jax.savethecity.env import EXTINGUISH, N_ACTIONS


def _padded(obs, allowed: jax.Array) -> jax.Array:
    """[..., A] bool: padded agent slots (any leading batch dims)."""
    mask = getattr(obs, "entity_mask", None)
    if mask is None:
        return jnp.zeros(allowed.shape[:-1], bool)
    return jnp.asarray(mask[..., : allowed.shape[-2]], bool)


def _uniform_among(key: jax.Array, allowed: jax.Array) -> jax.Array:
    """Index of a uniformly chosen True entry per row, from ONE uniform per row.

    Picks the k-th allowed entry with k = floor(u * count): one random number per agent
    instead of one per action, drawn with the cheap hash generator of `envs_jax.rng`, keeps
    random-number generation off the critical path of vmapped rollouts. The k-th allowed
    entry's index is the number of entries whose inclusive running count is <= k (a sum,
    not an argmax: reductions to an index are slow on XLA:CPU). Rows without any True entry
    give 0 (never happens for real agents: "stay" is always available).
    """
    ok = allowed.astype(jnp.float32)
    n = allowed.shape[-1]
    upto = ok @ jnp.triu(jnp.ones((n, n), jnp.float32))  # allowed entries up to each
    count = upto[..., -1]
    u = hash_uniforms(key, math.prod(allowed.shape[:-1])).reshape(allowed.shape[:-1])
    k = jnp.floor(u * count)
    index = jnp.sum(upto <= k[..., None], -1, dtype=jnp.int32)
    return jnp.where(count > 0, index, 0)


def _avail(obs) -> jax.Array:
    avail = obs.avail_actions if hasattr(obs, "avail_actions") else obs
    return jnp.asarray(avail) != 0


def uniform_valid(key: jax.Array, obs) -> jax.Array:
    """Policy U: uniform over available actions; padded slots 0. Returns int32 [A]."""
    allowed = _avail(obs)
    actions = _uniform_among(key, allowed)
    return jnp.where(_padded(obs, allowed), 0, actions).astype(jnp.int32)


def interaction_first(key: jax.Array, obs) -> jax.Array:
    """Policy I: uniform among available actions 9..11 if any, else uniform over all."""
    allowed = _avail(obs)
    is_interaction = jnp.arange(N_ACTIONS) >= EXTINGUISH
    inter = allowed & is_interaction[None]
    has_inter = jnp.any(inter, -1, keepdims=True)
    actions = _uniform_among(key, jnp.where(has_inter, inter, allowed))
    return jnp.where(_padded(obs, allowed), 0, actions).astype(jnp.int32)


POLICIES = {"uniform": uniform_valid, "interaction_first": interaction_first}

__all__ = ["POLICIES", "interaction_first", "uniform_valid"]
