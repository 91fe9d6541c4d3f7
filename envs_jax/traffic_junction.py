"""The 1-step traffic junction of the LICA paper (lica.md 14.2) in the entity API.

Two agents meet at a junction; each either waits (0) or passes (1). The only step ends the
episode (a true termination) with team reward 1 iff exactly one agent passes. Observation and
state are constant, so the learner must break the agents' symmetry through the agent id the
GRU controller appends (or, for id-free attention agents, `agent_ids=True` entity features).
Both agents belong to the single subtask 0, so subtask-conditioned code paths have valid shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment, Observation

WAIT, PASS = 0, 1


@struct.dataclass
class TJState:
    """Steps taken in the current episode (0 before the step, 1 after)."""

    t: jax.Array


class TrafficJunction(Environment):
    """2 agents, 2 actions, episode_limit 1; payoff (pass,wait) = (wait,pass) = 1, else 0."""

    def __init__(self, agent_ids: bool = False):
        self.agent_ids = agent_ids
        self.n_agents = 2
        self.n_entities = 2
        self.n_tasks = 1
        self.n_actions = 2
        # Feature [1.0] per agent (lica.md 14.2: obs = state = constant); optional id one-hot.
        self.entity_dim = 1 + (self.n_agents if agent_ids else 0)
        self.episode_limit = 1

    def _entities(self) -> jax.Array:
        ones = jnp.ones((self.n_entities, 1), jnp.float32)
        if not self.agent_ids:
            return ones
        return jnp.concatenate([ones, jnp.eye(self.n_agents, dtype=jnp.float32)], axis=-1)

    def get_obs(self, state: TJState) -> Observation:
        """Constant observation: everything visible and available, both agents in subtask 0."""
        done = state.t >= self.episode_limit
        return Observation(
            entities=self._entities(),
            avail_actions=jnp.ones((self.n_agents, self.n_actions), jnp.int32),
            obs_mask=jnp.zeros((self.n_entities, self.n_entities), bool),
            entity_mask=jnp.zeros((self.n_entities,), bool),
            entity2task_mask=jnp.zeros((self.n_entities, self.n_tasks), bool),
            task_mask=jnp.broadcast_to(done, (self.n_tasks,)),
        )

    def reset(self, key: jax.Array, **options: Any) -> tuple[Observation, TJState]:
        """A fresh episode (deterministic: the game has no randomness)."""
        state = TJState(t=jnp.zeros((), jnp.int32))
        return self.get_obs(state), state

    def step_env(self, key: jax.Array, state: TJState, actions: jax.Array):
        """actions [2] int -> (obs, state, reward, done, info); always terminates."""
        passes = jnp.sum(actions == PASS)
        reward = (passes == 1).astype(jnp.float32)
        state = TJState(t=state.t + 1)
        done = jnp.bool_(True)
        info = {
            "task_rewards": reward[None],
            "tasks_terminated": jnp.ones((self.n_tasks,), bool),
            "tasks_changed": jnp.bool_(True),
            "episode_limit": jnp.bool_(False),  # a true termination, never a time-out
            "solved": reward,
        }
        return self.get_obs(state), state, reward, done, info

    def __repr__(self) -> str:
        return f"TrafficJunction(agent_ids={self.agent_ids})"
