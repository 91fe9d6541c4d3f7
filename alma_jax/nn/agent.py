"""Entity attention agent (spec 2.2) and the subtask embedder TaskEmbed (spec 3.2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn.attention import MaskedMHA, group_block
from alma_jax.nn.init import dense

SUBTASK_CONDS = (None, "mask", "full_obs")


def entity_inputs(entities: jax.Array, last_action: jax.Array) -> jax.Array:
    """entities [NE, ED], last_action [NA, NACT] one-hot -> [NE, ED + NACT] (zeros off agents)."""
    n_entities, n_agents = entities.shape[0], last_action.shape[0]
    pad = jnp.zeros((n_entities - n_agents, last_action.shape[1]), entities.dtype)
    la = jnp.concatenate([last_action.astype(entities.dtype), pad], axis=0)
    return jnp.concatenate([entities, la], axis=-1)


def agent_key_mask(
    obs_mask: jax.Array,
    entity_mask: jax.Array,
    n_agents: int,
    member: jax.Array | None = None,
) -> jax.Array:
    """obs_mask [NE, NE], entity_mask [NE], member [NE, NT] or None -> blocked [NA, NE] bool.

    `member` given = the 'mask' mode (spec 1.4): keys outside the agent's subtask are blocked.
    Inactive keys are always blocked (F1): the env should already do it, this guards env bugs.
    """
    blocked = obs_mask[:n_agents].astype(bool) | entity_mask.astype(bool)[None, :]
    if member is not None:
        blocked = blocked | group_block(member)[:n_agents]
    return blocked


class TaskEmbed(nn.Module):
    """Learned embedding per subtask index; rows sum the embeddings of their subtasks (spec 3.2).

    `perm` relabels subtask indices (input column j reads subtask perm[j]) so that, when the
    caller redraws it per forward call, embeddings only say who shares a subtask.
    """

    embed_dim: int
    n_extra_tasks: int = 0

    @nn.compact
    def __call__(self, member: jax.Array, perm: jax.Array | None = None) -> jax.Array:
        """member [N, NT] bool, perm [NT + n_extra_tasks] int or None -> [N, embed_dim]."""
        x = member.astype(jnp.float32)
        if self.n_extra_tasks:
            x = jnp.concatenate([x, jnp.zeros((x.shape[0], self.n_extra_tasks), x.dtype)], -1)
        if perm is not None:
            x = x[:, perm]
        # No bias, so an entity without any subtask gets a zero embedding.
        return dense(self.embed_dim, use_bias=False, name="fc")(x)


class EntityAttentionAgent(nn.Module):
    """Per-agent utilities from entity attention; parameters shared by all agents (spec 2.2)."""

    n_agents: int
    n_actions: int
    embed_dim: int = 128  # D
    n_heads: int = 4  # H
    hidden_dim: int = 64  # DA
    subtask_cond: str | None = None  # None | 'mask' | 'full_obs'
    n_extra_tasks: int = 0

    def setup(self) -> None:
        assert self.subtask_cond in SUBTASK_CONDS, f"unknown subtask_cond {self.subtask_cond!r}"
        self.fc1 = dense(self.embed_dim)
        self.attn = MaskedMHA(self.embed_dim, self.embed_dim, self.n_heads)
        self.fc2 = dense(self.hidden_dim)
        self.fc_out = dense(self.n_actions)
        if self.subtask_cond == "full_obs":
            self.task_embed = TaskEmbed(self.embed_dim, self.n_extra_tasks)

    def __call__(
        self,
        x: jax.Array,
        obs_mask: jax.Array,
        entity_mask: jax.Array,
        member: jax.Array | None = None,
        task_perm: jax.Array | None = None,
        z: jax.Array | None = None,
        subtask_mask: bool = True,
    ) -> jax.Array:
        """x [NE, ED+NACT] (`entity_inputs`), obs_mask [NE, NE], entity_mask [NE],
        member [NE, NT] (subtask modes), task_perm [NT+extra], z [NA, DA] -> Q [NA, NACT].

        `obs_mask` is any key mask in stored polarity (only rows < NA are read), so REFIL can
        pass its imagined views; `subtask_mask=False` skips the 'mask'-mode restriction (F4).
        """
        na = self.n_agents
        if self.subtask_cond is not None:
            assert member is not None, f"subtask_cond={self.subtask_cond!r} needs `member`"
        use_group = self.subtask_cond == "mask" and subtask_mask
        blocked = agent_key_mask(obs_mask, entity_mask, na, member if use_group else None)
        active = ~entity_mask.astype(bool)
        h = self.fc1(x)
        if self.subtask_cond == "full_obs":
            h = h + self.task_embed(member, task_perm)
        h = self.attn(nn.relu(h), blocked, active[:na])
        h = nn.relu(self.fc2(nn.relu(h)))
        if z is not None:
            h = h + z
        q = self.fc_out(h)
        return jnp.where(active[:na, None], q, 0.0)
