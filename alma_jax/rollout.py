"""Acting: one episode per environment, `lax.scan` over rows, environments batched (spec 4.1).

Every method shares this loop. It decides allocations at decision rows (spec 3.7), writes the
held allocation into the agent rows of `entity2task_mask` for subtask-conditioned methods
(spec 1.3), asks the low-level `act_fn` for actions, steps the environments and records
`EpisodeBatch` rows. An environment that finishes records its final observation on the next
row and then idles (`filled=False`) until the longest episode of the rollout has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from alma_jax.buffer import ROW_FIELDS, EpisodeBatch, alloc_to_index, pad_value
from envs_jax.core import Environment, Observation

# act_fn(params, key, obs [E], last_action [E, NA] (-1 none), alloc [E, NA, NT], eps) -> [E, NA];
# a stateful learner (given `init_carry`) also takes (carry, decision [E] bool) and returns
# (actions, carry): GRU agents (LICA) keep a hidden state, COPA's coach redraws at decisions.
ActFn = Callable[[Any, jax.Array, Observation, jax.Array, jax.Array, jax.Array], jax.Array]
# alloc_fn(params, key, obs, prev_alloc [NA, NT]) -> [NA, NT] bool, for ONE environment
AllocFn = Callable[[Any, jax.Array, Observation, jax.Array], jax.Array]

RUNNING, FINAL_ROW, GONE = 0, 1, 2


@struct.dataclass
class EpisodeStats:
    """Per-environment results of the rollout's episodes: [E] arrays (+ env end info)."""

    episode_return: jax.Array
    episode_length: jax.Array
    info: dict[str, jax.Array]  # the environment's info on the episode's last step


def _select(mask: jax.Array, a: Any, b: Any) -> Any:
    """Per-environment `where(mask, a, b)` over pytrees with a leading [E] axis."""

    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)

    return jax.tree.map(pick, a, b)


def is_decision_row(t, timer, tasks_changed, action_length: int):
    """Spec 3.7: row 0, then after `action_length` steps or when a subtask finished."""
    return (t == 0) | (timer >= action_length) | tasks_changed


def with_allocation(obs: Observation, alloc: jax.Array) -> Observation:
    """Write an allocation [.., NA, NT] into the agent rows of entity2task_mask (spec 1.3)."""
    n_agents = alloc.shape[-2]
    e2t = obs.entity2task_mask.at[..., :n_agents, :].set(~alloc)
    return obs.replace(entity2task_mask=e2t)


def make_rollout(
    env: Environment,
    n_envs: int,
    act_fn: ActFn,
    alloc_fn: AllocFn | None,
    action_length: int,
    init_carry: Callable[[int], Any] | None = None,
) -> Callable[..., tuple[EpisodeBatch, EpisodeStats, jax.Array]]:
    """Build `rollout(params, alloc_params, key, eps) -> (episodes [E, L], stats, env_steps)`.

    `alloc_fn=None` is a flat method: no allocation is written, no decisions are taken.
    `init_carry(E)` (recurrent agents) gives the acting carry at every episode start.
    """
    L = env.episode_limit + 1
    NA, NT = env.n_agents, env.n_tasks
    step = env.step_batch
    reset = env.reset_batch
    decide = None if alloc_fn is None else jax.vmap(alloc_fn, in_axes=(None, 0, 0, 0))

    def rollout(params, alloc_params, key, eps):
        key, k_reset = jax.random.split(key)
        obs, state = reset(jax.random.split(k_reset, n_envs))
        E = n_envs
        carry = dict(
            obs=obs,
            state=state,
            status=jnp.zeros((E,), jnp.int32),
            timer=jnp.zeros((E,), jnp.int32),
            changed=jnp.zeros((E,), bool),
            held=jnp.zeros((E, NA, NT), bool),
            last_action=jnp.full((E, NA), -1, jnp.int32),
            ret=jnp.zeros((E,)),
            length=jnp.zeros((E,), jnp.int32),
            info=None,
            act=None if init_carry is None else init_carry(n_envs),
        )

        def row(carry, inp):
            t, key = inp
            k_alloc, k_act, k_env = jax.random.split(key, 3)
            running = carry["status"] == RUNNING
            filled = carry["status"] <= FINAL_ROW
            obs = carry["obs"]
            # Decision rows also pace stateful acting (COPA's coach) in flat methods.
            if decide is None and init_carry is None:
                decision = jnp.zeros((E,), bool)
            else:
                decision = running & is_decision_row(t, carry["timer"], carry["changed"],
                                                     action_length)
            if decide is None:
                alloc = carry["held"]
                obs_row = obs
            else:
                fresh = decide(alloc_params, jax.random.split(k_alloc, E), obs, carry["held"])
                alloc = _select(decision, fresh, carry["held"])
                obs_row = with_allocation(obs, alloc)
            if init_carry is None:
                actions, act_carry = act_fn(params, k_act, obs_row, carry["last_action"], alloc,
                                            eps), None
            else:
                actions, act_carry = act_fn(params, k_act, obs_row, carry["last_action"], alloc,
                                            eps, carry["act"], decision)
            actions = jnp.where(running[:, None], actions, 0).astype(jnp.int32)
            # the observation's availability is the state's: the env need not recompute it
            obs2, state2, reward, done, info = step(
                jax.random.split(k_env, E), carry["state"], actions, obs.avail_actions
            )
            done = done & running
            reward = jnp.where(running, reward, 0.0)
            timeout = info["episode_limit"]
            record = EpisodeBatch(
                entities=obs_row.entities,
                obs_mask=obs_row.obs_mask,
                entity_mask=obs_row.entity_mask,
                entity2task_mask=obs_row.entity2task_mask,
                task_mask=obs_row.task_mask,
                avail_actions=obs_row.avail_actions,
                actions=actions,
                reward=reward,
                task_rewards=jnp.where(running[:, None], info["task_rewards"], 0.0),
                terminated=done & ~timeout,
                reset=done,
                filled=filled,
                hier_decision=decision,
                tasks_terminated=info["tasks_terminated"] & running[:, None],
                last_action=carry["last_action"],
                prev_alloc=alloc_to_index(carry["held"]),
            )
            # rows that do not exist hold the buffer's padding (zeros, -1 for index fields)
            record = record.replace(**{
                name: jnp.where(
                    filled.reshape((E,) + (1,) * (getattr(record, name).ndim - 1)),
                    getattr(record, name), pad_value(name),
                ).astype(getattr(record, name).dtype)
                for name in ROW_FIELDS
            })
            end_info = info if carry["info"] is None else _select(done, info, carry["info"])
            new = dict(
                obs=_select(running, obs2, obs),
                state=_select(running, state2, carry["state"]),
                status=jnp.where(running & done, FINAL_ROW,
                                 jnp.where(carry["status"] == FINAL_ROW, GONE, carry["status"])),
                timer=jnp.where(decision, 1, carry["timer"] + 1),
                changed=info["tasks_changed"] & running,
                held=alloc,
                last_action=jnp.where(running[:, None], actions, carry["last_action"]),
                ret=carry["ret"] + reward,
                length=carry["length"] + running,
                info=end_info,
                act=act_carry,
            )
            return new, record

        # trace once with info=None to get the info structure, then carry it
        info0 = jax.eval_shape(lambda: step(jax.random.split(key, E), state,
                                            jnp.zeros((E, NA), jnp.int32)))[4]
        carry["info"] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), info0)
        keys = jax.random.split(key, L)
        carry, rows = jax.lax.scan(row, carry, (jnp.arange(L), keys))
        episodes = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rows)  # [E, L, ...]
        stats = EpisodeStats(episode_return=carry["ret"], episode_length=carry["length"],
                             info=carry["info"])
        return episodes, stats, jnp.sum(carry["length"])

    return rollout
