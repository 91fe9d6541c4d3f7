"""What every alma-jax environment shares: the entity-scheme observation and the env interface.

An environment is an object with static sizes as Python ints and pure methods
`reset(key) -> (obs, state)` and `step(key, state, actions) -> (obs, state, reward, done, info)`
acting on ONE environment instance; batch them with `jax.vmap`. `step` auto-resets: when
`done` is true the returned `obs`/`state` start the next episode and `info["terminal_obs"]`
holds the observation the finished episode ended in (needed for time-limit bootstrapping).
Unused outputs cost nothing under `jit`: XLA removes what the caller never reads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Observation:
    """Entity-scheme observation of one environment; masks use 1/True = masked / absent.

    entities [E, F] float, avail_actions [A, n_actions] int32 (nonzero = available; the
    value may code a target subtask), obs_mask [E, E] bool (row observer, column observed),
    entity_mask [E] bool, entity2task_mask [E, T] bool, task_mask [T] bool.
    """

    entities: jax.Array
    avail_actions: jax.Array
    obs_mask: jax.Array
    entity_mask: jax.Array
    entity2task_mask: jax.Array
    task_mask: jax.Array


def positive(mask: jax.Array) -> jax.Array:
    """Turn a stored mask (1 = masked) into positive membership (True = present)."""
    return jnp.logical_not(mask)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leaf-wise `where(pred, a, b)` for pytrees of one environment (pred is a scalar)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class Environment:
    """Base class: subclasses implement `reset` and `step_env`; `step` adds auto-reset."""

    n_agents: int
    n_entities: int
    n_tasks: int
    n_actions: int
    entity_dim: int
    episode_limit: int
    # True when `step_env(key, state, actions, avail)` and `get_obs(state, avail)` accept
    # the state's coded availability instead of recomputing it (SaveTheCity); the batched
    # steps below then pass it on.
    takes_avail: bool = False

    def reset(self, key: jax.Array, **options) -> tuple[Observation, Any]:
        raise NotImplementedError

    def get_obs(self, state: Any) -> Observation:
        raise NotImplementedError

    def step_env(self, key, state, actions):
        """One transition without auto-reset: (obs, state, reward, done, info)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ batched interface
    # The trainer only ever calls these two. A pure-JAX env inherits the vmapped defaults; a
    # host-side env behind a callback (envs_jax.bridge) overrides them with one batched call.
    def reset_batch(self, keys: jax.Array) -> tuple[Observation, Any]:
        """Reset E environments: keys [E, 2] -> (obs [E, ...], state [E, ...])."""
        return jax.vmap(self.reset)(keys)

    def get_obs_batch(self, state: Any, avail: jax.Array | None = None) -> Observation:
        """The observations of E states [E, ...] (`avail`: see `takes_avail`)."""
        if avail is None or not self.takes_avail:
            return jax.vmap(self.get_obs)(state)
        return jax.vmap(self.get_obs)(state, avail)

    def step_batch(self, keys: jax.Array, state: Any, actions: jax.Array,
                   avail: jax.Array | None = None):
        """Step E environments without auto-reset: (obs, state, reward [E], done [E], info).

        Callers keep stepping an environment after its `done` (with arbitrary actions) and
        discard the results, so an implementation must tolerate that. `avail`, when given,
        is the `avail_actions` of the observation of `state` (what the caller acted on): an
        env may use it instead of recomputing availability (`takes_avail`); the outputs
        must not depend on whether it is given.
        """
        if avail is None or not self.takes_avail:
            return jax.vmap(self.step_env)(keys, state, actions)
        return jax.vmap(self.step_env)(keys, state, actions, avail)

    def step_autoreset_batch(self, keys: jax.Array, state: Any, actions: jax.Array,
                             max_resets: int | None = None, avail: jax.Array | None = None):
        """`jax.vmap(self.step)` (auto-reset) for E environments, resetting only the done ones.

        The same outputs, bit for bit, as the vmapped `step`, which draws a full reset for
        every environment on every step and keeps it for the ~1% that finished. Here the done
        environments' reset states are drawn in `max_resets` compacted slots (default E // 32,
        at least 1) and scattered into the stepped state; when more than that finish on one
        step (every episode timing out together) a `lax.cond` resets all of them instead.
        Only the small state goes through the scatter and the cond: the observation is then
        built once from the selected state, as `step` does (scattering observations costs
        more than building them).
        """
        if max_resets is not None and max_resets < 1:
            raise ValueError(f"max_resets must be >= 1, got {max_resets!r}")
        n = keys.shape[0]
        k = min(n, max(1, n // 32) if max_resets is None else int(max_resets))
        if k == n:  # no room to compact (a single env, or max_resets >= E)
            return jax.vmap(self.step)(keys, state, actions)
        split = jax.vmap(jax.random.split)(keys)  # the per-env split of `step`
        key_step, key_reset = split[:, 0], split[:, 1]
        obs_end, state_end, reward, done, info = self.step_batch(key_step, state, actions,
                                                                 avail)

        # An env that can build its observation from a given availability gets the stepped
        # one's, merged with the fresh episodes' like the state, instead of recomputing it.
        merge = self.takes_avail

        def ended():
            return (state_end, obs_end.avail_actions) if merge else state_end

        def started(obs_fresh, fresh):
            return (fresh, obs_fresh.avail_actions) if merge else fresh

        def some(_):
            idx = jnp.nonzero(done, size=k, fill_value=n)[0]  # n = "no slot": dropped below
            new = started(*self.reset_batch(key_reset[jnp.minimum(idx, n - 1)]))
            return jax.tree.map(lambda old, new: old.at[idx].set(new, mode="drop"),
                                ended(), new)

        def every(_):
            new = started(*self.reset_batch(key_reset))
            return jax.vmap(select_tree)(done, new, ended())

        out = jax.lax.cond(jnp.sum(done) <= k, some, every, None)
        obs = self.get_obs_batch(*out) if merge else self.get_obs_batch(out)
        state = out[0] if merge else out
        return obs, state, reward, done, dict(info, terminal_obs=obs_end)

    def step(self, key: jax.Array, state: Any, actions: jax.Array):
        """One transition; on `done` the returned obs/state belong to a fresh episode."""
        key_step, key_reset = jax.random.split(key)
        obs_end, state_end, reward, done, info = self.step_env(key_step, state, actions)
        _, state_new = self.reset(key_reset)
        state = select_tree(done, state_new, state_end)
        # Building the observation of the selected state (rather than selecting between two
        # observations) leaves one observation to build when nobody reads `terminal_obs`.
        obs = self.get_obs(state)
        info = dict(info, terminal_obs=obs_end)
        return obs, state, reward, done, info

    def env_info(self) -> dict[str, int]:
        """The static sizes a learner needs, under the names the original trainer used."""
        return {
            "n_agents": self.n_agents,
            "n_entities": self.n_entities,
            "n_tasks": self.n_tasks,
            "n_actions": self.n_actions,
            "entity_shape": self.entity_dim,
            "episode_limit": self.episode_limit,
        }
