"""Small scripted SaveTheCity policies for demos and rendering (not part of the env contract).

(The uniform random policy is `envs_jax.savethecity.policies.uniform_valid`.)
* `greedy_actions(key, obs, allocation)`: walk to the allocated building, then work on it
  (firefighters/builders extinguish a burning building, generalists freeze it; everybody
  builds a building that is not burning).
* `heuristic_policy(key, obs)`: `greedy_actions` under the spec-section-10 heuristic
  allocation (`envs_jax.savethecity.heuristic_allocation`).

All functions act on ONE environment's observation, are jittable and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs_jax.core import Observation
from envs_jax.savethecity import scenarios as sc
from envs_jax.savethecity.env import (
    BUILD,
    EXTINGUISH,
    FREEZE,
    MOVE_DELTA,
    STAY,
    decode_entities,
    heuristic_allocation,
)


def allocation_index(allocation: jax.Array) -> jax.Array:
    """[A, T] one-hot (bool/int/float) or [A] int -> [A] int subtask index, -1 = none."""
    allocation = jnp.asarray(allocation)
    if allocation.ndim == 1:
        return allocation.astype(jnp.int32)
    has = jnp.any(allocation > 0, -1)
    return jnp.where(has, jnp.argmax(allocation, -1), -1).astype(jnp.int32)


def greedy_actions(key: jax.Array, obs: Observation, allocation: jax.Array) -> jax.Array:
    """Move toward the allocated building and work on it once adjacent: [A] int32.

    Moves greedily reduce the Manhattan distance to the target building (random
    tie-breaking, so agents get round obstacles most of the time); agents without a target
    stay. At the target: extinguish (firefighter, builder) or freeze (generalist) if it
    burns, build otherwise.
    """
    A = obs.avail_actions.shape[0]
    avail = obs.avail_actions
    etype, pos = decode_entities(obs.entities)
    a_type, a_pos, b_pos = etype[:A], pos[:A], pos[A:]
    target = allocation_index(allocation)
    has_target = target >= 0
    tgt_pos = b_pos[jnp.maximum(target, 0)]  # [A, 2]
    code = 2 + target  # avail value of an interaction with the target building

    ext_ok = avail[:, EXTINGUISH] == code
    frz_ok = avail[:, FREEZE] == code
    bld_ok = avail[:, BUILD] == code
    work = jnp.where(
        (a_type == sc.GENERALIST) & frz_ok,
        FREEZE,
        jnp.where(ext_ok, EXTINGUISH, jnp.where(bld_ok, BUILD, -1)),
    )

    dest = a_pos[:, None, :] + jnp.asarray(MOVE_DELTA)[None, :EXTINGUISH]  # [A, 9, 2] incl. stay
    dist = jnp.sum(jnp.abs(dest - tgt_pos[:, None, :]), -1).astype(jnp.float32)
    noise = jax.random.uniform(key, dist.shape, maxval=0.5)
    cost = jnp.where(avail[:, :EXTINGUISH] != 0, dist + noise, jnp.inf)
    cost = cost.at[:, STAY].add(0.25)  # prefer moving over standing on ties
    move = jnp.argmin(cost, -1)

    act = jnp.where(work >= 0, work, move)
    return jnp.where(has_target, act, STAY).astype(jnp.int32)


def heuristic_policy(key: jax.Array, obs: Observation) -> jax.Array:
    """Greedy actions under the heuristic allocation of the current observation."""
    return greedy_actions(key, obs, heuristic_allocation(obs))


__all__ = [
    "allocation_index",
    "greedy_actions",
    "heuristic_policy",
]
