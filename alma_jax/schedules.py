"""Exploration schedules and hard target-network updates (spec 4.5, 4.8), all jittable."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "EPSILON_ANNEAL_TIME",
    "ExplorationSchedules",
    "LinearSchedule",
    "make_schedules",
    "maybe_update_target",
]

# Action-epsilon anneal time per environment family (spec 4.8).
EPSILON_ANNEAL_TIME = {"savethecity": 2_000_000, "starcraft": 500_000, "sc2": 500_000}


class LinearSchedule(struct.PyTreeNode):
    """Linear interpolation start -> finish over [0, anneal_time] env steps, flat afterwards.

    Fields are static so a schedule can be closed over or passed through `jit` as a constant.
    """

    start: float = struct.field(pytree_node=False)
    finish: float = struct.field(pytree_node=False)
    anneal_time: float = struct.field(pytree_node=False)

    def __call__(self, t_env: jax.Array | int) -> jax.Array:
        """Value at t_env (scalar or any shape) as float32."""
        t = jnp.asarray(t_env, jnp.float32)
        if self.anneal_time <= 0:  # degenerate horizon: already annealed
            return jnp.full(t.shape, self.finish, jnp.float32)
        frac = jnp.clip(t / jnp.float32(self.anneal_time), 0.0, 1.0)
        return jnp.float32(self.start) + frac * jnp.float32(self.finish - self.start)


class ExplorationSchedules(struct.PyTreeNode):
    """The three annealed quantities: action epsilon, alloc_eps and prop_alloc_eps."""

    epsilon: LinearSchedule
    alloc_eps: LinearSchedule
    prop_alloc_eps: LinearSchedule

    def __call__(self, t_env: jax.Array | int) -> dict[str, jax.Array]:
        """Scalar values at t_env under their logged names (`annealing/...`, spec 4.7)."""
        return {
            "annealing/epsilon": self.epsilon(t_env),
            "annealing/alloc_eps": self.alloc_eps(t_env),
            "annealing/prop_alloc_eps": self.prop_alloc_eps(t_env),
        }


def make_schedules(
    t_max: float,
    epsilon_anneal_time: float = EPSILON_ANNEAL_TIME["savethecity"],
    epsilon_start: float = 1.0,
    epsilon_finish: float = 0.05,
    alloc_eps_start: float = 1.0,
    alloc_eps_finish: float = 0.0,
    alloc_eps_anneal_frac: float = 0.05,
    prop_alloc_eps_start: float = 1.0,
    prop_alloc_eps_finish: float = 0.05,
    prop_alloc_eps_anneal_frac: float = 0.2,
) -> ExplorationSchedules:
    """Default schedules of spec 4.8; the allocation ones anneal over fractions of t_max."""
    return ExplorationSchedules(
        epsilon=LinearSchedule(epsilon_start, epsilon_finish, float(epsilon_anneal_time)),
        alloc_eps=LinearSchedule(
            alloc_eps_start, alloc_eps_finish, alloc_eps_anneal_frac * float(t_max)
        ),
        prop_alloc_eps=LinearSchedule(
            prop_alloc_eps_start, prop_alloc_eps_finish, prop_alloc_eps_anneal_frac * float(t_max)
        ),
    )


def maybe_update_target(
    params: Any,
    target: Any,
    episode: jax.Array | int,
    last_update_episode: jax.Array | int,
    interval: jax.Array | int,
) -> tuple[Any, jax.Array, jax.Array]:
    """Hard copy params -> target when episode - last_update_episode >= interval.

    Returns (target', last_update_episode', updated). As in the original, the counter restarts
    at the current episode (not last + interval), so with rollouts of E episodes an interval that
    is a multiple of E fires exactly every `interval` episodes.
    """
    episode = jnp.asarray(episode, jnp.int32)
    last = jnp.asarray(last_update_episode, jnp.int32)
    fire = episode - last >= jnp.asarray(interval, jnp.int32)
    new_target = jax.lax.cond(fire, lambda: params, lambda: target)
    return new_target, jnp.where(fire, episode, last), fire
