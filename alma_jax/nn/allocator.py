"""High-level allocation networks of ALMA's AQL controller (spec 3.2-3.5).

`AllocPolicy` proposes allocations with an autoregressive pointer decoder over agent slots;
`AllocCritic` scores an allocation Q(s, alloc). Both are written for ONE decision row; vmap
over proposals and rows. The decoder is a pure `lax.scan` (`decode`) around the policy's
per-step methods, and the same scan body serves sampling (argmax of log-probabilities plus
pre-drawn Gumbel noise) and teacher-forced scoring, so both give bit-identical log-probs.
Masks keep the stored polarity: True = blocked / padded / finished / not a member.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from alma_jax.nn.agent import TaskEmbed
from alma_jax.nn.attention import (
    NEG_INF,
    MaskedMHA,
    both_active_block,
    group_block,
    membership,
)
from alma_jax.nn.init import dense

COUNT_NORM = 0.2  # c, the original's COUNT_NORM_FACTOR

__all__ = [
    "COUNT_NORM",
    "AllocCritic",
    "AllocPolicy",
    "CountEmbed",
    "Decoded",
    "Encoding",
    "decode",
    "encode",
    "score",
    "sample",
]


class CountEmbed(nn.Module):
    """Per-subtask member counts embedded and summed over each entity's subtasks (spec 3.2)."""

    embed_dim: int
    n_agents: int
    count_norm: float = COUNT_NORM

    @nn.compact
    def __call__(self, member: jax.Array) -> jax.Array:
        """member [NE, NT] bool -> [NE, D]; counts ignore entity_mask (dead members count)."""
        m = member.astype(jnp.float32)
        na = self.n_agents
        counts = jnp.stack([m[:na].sum(0), m[na:].sum(0)], axis=-1)  # [NT, 2]
        per_task = self.count_norm * dense(self.embed_dim, name="fc")(counts)  # [NT, D]
        return m @ per_task


class Encoding(struct.PyTreeNode):
    """Encoder output of one row: agents A [NA, D], subtasks U [NT, D], counts cN [NT]."""

    agents: jax.Array
    subtasks: jax.Array
    counts: jax.Array


class Decoded(struct.PyTreeNode):
    """One decoded allocation and its statistics (spec 3.3).

    alloc [NA, NT] bool, log_prob / entropy / best_prob scalars, step_log_prob [NA] and
    step_entropy [NA] (the per-agent factors; 0 for agents that take no decision).
    """

    alloc: jax.Array
    log_prob: jax.Array
    entropy: jax.Array
    best_prob: jax.Array
    step_log_prob: jax.Array
    step_entropy: jax.Array


class AllocPolicy(nn.Module):
    """Proposal network: pointer-network encoder and autoregressive decoder steps (spec 3.3).

    Only the pointer form is implemented (`pi_pointer_net=True`); flags follow spec 3.4.
    Use through `encode` / `decode` / `sample` / `score`; `__call__` exists for `init`.
    """

    n_agents: int
    embed_dim: int = 128  # D
    n_heads: int = 4
    n_extra_tasks: int = 0
    count_norm: float = COUNT_NORM
    pi_autoreg: bool = True
    sel_task_upd: bool = True
    subtask_mask: bool = True
    pi_ag_attn: bool = False

    def setup(self) -> None:
        d = self.embed_dim
        self.fc_in = dense(d)
        self.task_embed = TaskEmbed(d, self.n_extra_tasks)
        # One attention for non-agents and (pi_ag_attn) agents: the original shares it.
        self.attn = MaskedMHA(d, d, self.n_heads)
        self.count_embed = dense(d)
        if self.pi_autoreg:
            self.fc_upd = dense(d)

    def encode(
        self,
        entities: jax.Array,
        entity_mask: jax.Array,
        entity2task_mask: jax.Array,
        last_alloc: jax.Array,
        perm: jax.Array | None,
    ) -> Encoding:
        """entities [NE, ED], entity_mask [NE], entity2task_mask [NE, NT], last_alloc [NA, NT],
        perm [NT + extra] -> Encoding (A [NA, D], U [NT, D], cN [NT])."""
        na = self.n_agents
        entity_mask = entity_mask.astype(bool)
        active = ~entity_mask
        member = membership(entity2task_mask, last_alloc)
        x1 = self.fc_in(entities) + self.task_embed(member, perm)
        member_nn = member[na:]
        if self.subtask_mask:
            blocked = group_block(member_nn)
        else:
            blocked = both_active_block(entity_mask[na:], member_nn.shape[0])
        n2 = self.attn(nn.relu(x1[na:]), blocked, active[na:])
        m = member_nn.astype(jnp.float32)
        subtasks = m.T @ n2  # dead members add zero vectors (their outputs are zeroed)
        counts = self.count_norm * m.sum(0)
        agents = x1[:na]
        if self.pi_ag_attn:
            # Agent i may look only at active agents decided after it (j > i).
            idx = jnp.arange(na)
            allowed = (idx[None, :] > idx[:, None]) & active[None, :na]
            agents = agents + self.attn(nn.relu(agents), ~allowed, active[:na])
        return Encoding(agents, subtasks, counts)

    def step_logp(
        self,
        subtasks: jax.Array,
        agent_counts: jax.Array,
        counts: jax.Array,
        agent: jax.Array,
        task_mask: jax.Array,
    ) -> jax.Array:
        """U [NT, D], cA [NT], cN [NT], A_i [D], task_mask [NT] -> log-probs [NT]."""
        if self.pi_autoreg:
            count_in = jnp.stack([counts, agent_counts], axis=-1)
        else:
            count_in = counts[:, None]
        keys = subtasks + self.count_embed(count_in)
        # Scaled by the full width D, not the head width, as in the original.
        logits = keys @ agent / jnp.sqrt(jnp.float32(self.embed_dim))
        logits = jnp.where(task_mask.astype(bool), NEG_INF, logits)
        return jax.nn.log_softmax(logits)

    def step_update(self, subtasks: jax.Array, agent: jax.Array, choice: jax.Array,
                    joins: jax.Array | None = None) -> jax.Array:
        """U [NT, D], A_i [D], chosen subtask index -> U' [NT, D] after agent i joins it.

        `joins` [NT] = one-hot of `choice` if agent i takes a decision, zeros if not (then U
        is returned unchanged); None = it does. As a masked sum rather than a scatter and a
        select, the decoder's gradient keeps no full-size [NT, D] selection mask per step.
        """
        if joins is None:
            joins = jnp.arange(subtasks.shape[0]) == choice
        joins = joins.astype(subtasks.dtype)[:, None]
        chosen = subtasks[choice]
        if self.sel_task_upd:
            delta = self.fc_upd(nn.relu(jnp.concatenate([chosen, agent])))
            return subtasks + joins * delta[None, :]
        nt = subtasks.shape[0]
        inp = jnp.concatenate(
            [subtasks, jnp.broadcast_to(agent, (nt, agent.shape[0])),
             jnp.broadcast_to(chosen, (nt, chosen.shape[0]))], axis=-1)
        return subtasks + jnp.any(joins > 0) * self.fc_upd(nn.relu(inp))

    def __call__(
        self,
        entities: jax.Array,
        entity_mask: jax.Array,
        entity2task_mask: jax.Array,
        last_alloc: jax.Array,
        task_mask: jax.Array,
        perm: jax.Array | None = None,
    ) -> jax.Array:
        """Init path touching every parameter: encoder plus agent 0's step -> log-probs [NT]."""
        enc = self.encode(entities, entity_mask, entity2task_mask, last_alloc, perm)
        zeros = jnp.zeros_like(enc.counts)
        logp = self.step_logp(enc.subtasks, zeros, enc.counts, enc.agents[0], task_mask)
        if self.pi_autoreg:
            self.step_update(enc.subtasks, enc.agents[0], jnp.int32(0))
        return logp


def encode(
    policy: AllocPolicy,
    params: Any,
    entities: jax.Array,
    entity_mask: jax.Array,
    entity2task_mask: jax.Array,
    last_alloc: jax.Array,
    perm: jax.Array | None,
) -> Encoding:
    """Pure encoder of one row (spec 3.3 steps 1-6); arguments as `AllocPolicy.encode`."""
    return policy.apply(params, entities, entity_mask, entity2task_mask, last_alloc, perm,
                        method=AllocPolicy.encode)


def decode(
    policy: AllocPolicy,
    params: Any,
    enc: Encoding,
    task_mask: jax.Array,
    active: jax.Array,
    gumbel: jax.Array | None = None,
    alloc: jax.Array | None = None,
) -> Decoded:
    """Autoregressive decoder over agent slots 0..NA-1 as one `lax.scan` (spec 3.3, 6.2).

    task_mask [NT] (True = finished/padded), active [NA] bool; exactly one of gumbel [NA, NT]
    (sampling: k_i = argmax(logp_i + g_i)) or alloc [NA, NT] (teacher forcing: k_i given).
    An agent takes a decision iff it is active and some subtask is unfinished; otherwise
    its row is zero and it changes no carry and no statistic.
    """
    teacher = alloc is not None
    if teacher == (gumbel is not None):
        raise ValueError("pass exactly one of `gumbel` (sample) or `alloc` (score)")
    task_mask = task_mask.astype(bool)
    na, nt = enc.agents.shape[0], task_mask.shape[0]
    decides = active.astype(bool) & jnp.any(~task_mask)
    if teacher:
        forced = jnp.argmax(alloc, axis=-1).astype(jnp.int32)
        noise = jnp.zeros((na, nt), jnp.float32)
    else:
        forced = jnp.zeros((na,), jnp.int32)
        noise = gumbel

    def body(carry, x):
        subtasks, agent_counts = carry
        agent, decides_i, noise_i, forced_i = x
        logp = policy.apply(params, subtasks, agent_counts, enc.counts, agent, task_mask,
                            method=AllocPolicy.step_logp)
        # The only line that differs between sampling and scoring (static switch).
        k = forced_i if teacher else jnp.argmax(logp + noise_i).astype(jnp.int32)
        onehot = (jnp.arange(nt) == k) & decides_i
        p = jnp.exp(logp)
        lp = jnp.where(decides_i, logp[k], 0.0)
        ent = jnp.where(decides_i, -jnp.sum(jnp.where(task_mask, 0.0, p * logp)), 0.0)
        maxp = jnp.where(decides_i, jnp.max(p), 0.0)
        if policy.pi_autoreg:
            subtasks = policy.apply(params, subtasks, agent, k, onehot,
                                    method=AllocPolicy.step_update)
            agent_counts = agent_counts + policy.count_norm * onehot
        return (subtasks, agent_counts), (onehot, lp, ent, maxp)

    carry = (enc.subtasks, jnp.zeros((nt,), jnp.float32))
    # Unrolled (NA is a handful of steps): a rolled scan under autodiff zero-fills and then
    # slices a stacked [NA, ..., NT, D] residual buffer, which cost more than the steps.
    _, (onehot, lp, ent, maxp) = jax.lax.scan(
        body, carry, (enc.agents, decides, noise, forced), unroll=True)
    n_dec = jnp.sum(decides)
    best_prob = jnp.sum(maxp) / jnp.maximum(n_dec, 1)
    return Decoded(onehot, jnp.sum(lp), jnp.sum(ent), best_prob, lp, ent)


def sample(policy: AllocPolicy, params: Any, enc: Encoding, task_mask: jax.Array, active: jax.Array,
           gumbel: jax.Array) -> Decoded:
    """One proposal from pre-drawn Gumbel noise [NA, NT]; vmap over noise for NP proposals."""
    return decode(policy, params, enc, task_mask, active, gumbel=gumbel)


def score(policy: AllocPolicy, params: Any, enc: Encoding, task_mask: jax.Array, active: jax.Array,
          alloc: jax.Array) -> Decoded:
    """Teacher-forced log-probability and conditional entropies of a given alloc [NA, NT]."""
    return decode(policy, params, enc, task_mask, active, alloc=alloc)


class AllocCritic(nn.Module):
    """Allocation critic Q(s, alloc) with a scalar Pop-Art affine (spec 3.5).

    Returns (y, a·y + b): the raw head and the normalised-scale value trained against Pop-Art
    targets; `popart_a [1]`, `popart_b [1]` are named like the mixer's for `popart_update`.
    """

    n_agents: int
    embed_dim: int = 128
    n_heads: int = 4
    n_extra_tasks: int = 0
    count_norm: float = COUNT_NORM

    @nn.compact
    def __call__(
        self,
        entities: jax.Array,
        entity_mask: jax.Array,
        entity2task_mask: jax.Array,
        alloc: jax.Array,
        perm: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """entities [NE, ED], entity_mask [NE], entity2task_mask [NE, NT], alloc [NA, NT],
        perm [NT + extra] -> (y, q) scalars."""
        na, d = self.n_agents, self.embed_dim
        entity_mask = entity_mask.astype(bool)
        member = membership(entity2task_mask, alloc)
        x1 = (dense(d, name="fc_in")(entities)
              + TaskEmbed(d, self.n_extra_tasks, name="task_embed")(member, perm)
              + CountEmbed(d, na, self.count_norm, name="count_embed")(member))
        x2 = MaskedMHA(d, d, self.n_heads, name="attn")(
            nn.relu(x1), both_active_block(entity_mask, na), ~entity_mask[:na])
        # Mean over all NA slots (inactive rows are zero), so the value depends on NA.
        h = jnp.mean(nn.relu(x2), axis=0)
        y = dense(1, name="fc_out")(h)[0]
        a = self.param("popart_a", nn.initializers.ones, (1,))
        b = self.param("popart_b", nn.initializers.zeros, (1,))
        return y, a[0] * y + b[0]
