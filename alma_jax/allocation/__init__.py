"""How allocations of agents to subtasks are chosen: one interface for every method.

An allocation policy is a pure function of ONE environment's observation
`decide(params, key, obs, prev_alloc) -> alloc [NA, NT] bool` (one-hot rows for active agents,
all-False rows for padded agents). The rollout calls it at decision rows only and holds its
answer in between (spec alma.md 3.7). Learned policies (ALMA's AQL, COPA) plug in here too.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from envs_jax.core import Observation


class AllocationPolicy(Protocol):
    def __call__(self, params: Any, key: jax.Array, obs: Observation, prev: jax.Array
                 ) -> jax.Array: ...


def active_agents(obs: Observation) -> jax.Array:
    """[NA] bool: agent slots that hold a real agent."""
    n_agents = obs.avail_actions.shape[0]
    return ~obs.entity_mask[:n_agents]


def no_allocation(params, key, obs: Observation, prev: jax.Array) -> jax.Array:
    """Flat methods: nobody is allocated (all-False [NA, NT])."""
    return jnp.zeros_like(prev, dtype=bool)


def random_allocation(params, key, obs: Observation, prev: jax.Array) -> jax.Array:
    """Every active agent takes a uniformly random active subtask (spec 5.2)."""
    n_tasks = obs.task_mask.shape[0]
    logits = jnp.where(obs.task_mask, -1e9, 0.0)
    n_agents = prev.shape[0]
    pick = jax.random.categorical(key, jnp.broadcast_to(logits, (n_agents, n_tasks)))
    onehot = jnp.arange(n_tasks)[None, :] == pick[:, None]
    return onehot & active_agents(obs)[:, None] & jnp.any(~obs.task_mask)


def env_heuristic_allocation(heuristic):
    """Wrap an environment's heuristic `fn(obs) -> [NA, NT]` as an allocation policy."""

    def decide(params, key, obs: Observation, prev: jax.Array) -> jax.Array:
        return heuristic(obs).astype(bool) & active_agents(obs)[:, None]

    return decide


def spread_terms(alloc: jax.Array, task_mask: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """How spread an allocation is, per row: alloc [..., NA, NT], task_mask [..., NT] ->
    (agents on staffed subtasks, staffed subtasks, share of open subtasks without agents),
    each [...]. Pool rows as sum(agents) / sum(staffed) for "agents per staffed subtask"."""
    n_k = jnp.sum(alloc, -2).astype(jnp.float32)
    used = n_k > 0
    open_task = ~task_mask.astype(bool)
    empty = jnp.sum(open_task & ~used, -1) / jnp.maximum(jnp.sum(open_task, -1), 1)
    return jnp.sum(n_k * used, -1), jnp.sum(used, -1).astype(jnp.float32), empty
