"""Exploration schedules and hard target-network updates (spec 4.5, 4.8), all jittable."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "ALLOC_EPS_ANNEAL_TIME",
    "EPSILON_ANNEAL_TIME",
    "PROP_ALLOC_EPS_ANNEAL_TIME",
    "ExplorationSchedules",
    "LinearSchedule",
    "make_schedules",
    "schedules_from_config",
    "maybe_update_target",
]

# Action-epsilon anneal time per environment family (spec 4.8).
EPSILON_ANNEAL_TIME = {"savethecity": 2_000_000, "starcraft": 500_000, "sc2": 500_000}
# Allocation exploration horizons (errata E1): the original's fractions 0.05 and 0.2 of its
# t_max (15M SaveTheCity, 10M StarCraft), as absolute env steps.
ALLOC_EPS_ANNEAL_TIME = {"savethecity": 750_000, "starcraft": 500_000, "sc2": 500_000}
PROP_ALLOC_EPS_ANNEAL_TIME = {"savethecity": 3_000_000, "starcraft": 2_000_000,
                              "sc2": 2_000_000}


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
    epsilon_anneal_time: float = EPSILON_ANNEAL_TIME["savethecity"],
    epsilon_start: float = 1.0,
    epsilon_finish: float = 0.05,
    alloc_eps_anneal_time: float = ALLOC_EPS_ANNEAL_TIME["savethecity"],
    prop_alloc_eps_anneal_time: float = PROP_ALLOC_EPS_ANNEAL_TIME["savethecity"],
    prop_alloc_eps_finish: float = 0.05,
) -> ExplorationSchedules:
    """The schedules of spec 4.8 with errata E1: every horizon is in absolute env steps, so a
    run's own length never changes how long it explores. alloc_eps anneals 1 -> 0 and
    prop_alloc_eps 1 -> prop_alloc_eps_finish."""
    return ExplorationSchedules(
        epsilon=LinearSchedule(epsilon_start, epsilon_finish, float(epsilon_anneal_time)),
        alloc_eps=LinearSchedule(1.0, 0.0, float(alloc_eps_anneal_time)),
        prop_alloc_eps=LinearSchedule(1.0, prop_alloc_eps_finish,
                                      float(prop_alloc_eps_anneal_time)),
    )


def schedules_from_config(cfg: Any) -> ExplorationSchedules:
    """The run's schedules from its `alma_jax.config.Config`."""
    return make_schedules(
        epsilon_anneal_time=cfg.epsilon_anneal_time, epsilon_start=cfg.epsilon_start,
        epsilon_finish=cfg.epsilon_finish, alloc_eps_anneal_time=cfg.alloc_eps_anneal_time,
        prop_alloc_eps_anneal_time=cfg.prop_alloc_eps_anneal_time,
        prop_alloc_eps_finish=cfg.prop_alloc_eps_finish)


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
