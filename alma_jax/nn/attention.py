"""The one masked multi-head attention (spec 2.1) and the group-mask helpers (spec 1.2, 1.4).

Masks keep the stored polarity: True = blocked / absent / not a member.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn import precision
from alma_jax.nn.init import dense, torch_uniform

# Finite stand-in for -inf: exp underflows to exactly 0, and a fully blocked row stays finite.
NEG_INF = -1e9


def group_block(member: jax.Array) -> jax.Array:
    """member [N, K] bool -> [N, N] bool: True unless i and j share at least one group."""
    member = member.astype(bool)
    # A boolean contraction rather than G @ G.T: exact on every backend and matmul precision.
    share = jnp.any(member[:, None, :] & member[None, :, :], axis=-1)
    return ~share


def membership(entity2task_mask: jax.Array, alloc: jax.Array) -> jax.Array:
    """entity2task_mask [NE, NT] bool, alloc [NA, NT] -> member [NE, NT] bool (True = member).

    Agent rows come from the allocation; non-agent rows are the env's stored membership,
    whatever the env wrote in the agent rows.
    """
    n_agents = alloc.shape[0]
    return jnp.concatenate([alloc.astype(bool), ~entity2task_mask[n_agents:].astype(bool)], axis=0)


def both_active_block(entity_mask: jax.Array, n_queries: int) -> jax.Array:
    """entity_mask [N] bool -> [NQ, N] bool: blocked unless query and key are both active."""
    return group_block(~entity_mask[:, None])[:n_queries]


class QKVProjection(nn.Module):
    """The bias-free q/k/v projection (one kernel [Din, 3D], columns q | k | v), with queries
    computed for the first NQ rows only: the other rows' queries would be discarded."""

    embed_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, n_q: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [N, Din] -> q [NQ, D], k [N, D], v [N, D]."""
        d = self.embed_dim
        kernel = self.param("kernel", torch_uniform(x.shape[-1]), (x.shape[-1], 3 * d))
        q = precision.dot(x[:n_q], kernel[:, :d])
        # k and v as two products rather than one [N, 2D] product split in two: the split's
        # gradient pads dk and dv back to [N, 2D] and adds them, a pass over the widest
        # activations of the step that the two products do not need.
        k = precision.dot(x, kernel[:, d:2 * d])
        v = precision.dot(x, kernel[:, 2 * d:])
        return q, k, v


class MaskedMHA(nn.Module):
    """Masked multi-head self-attention whose queries are the first NQ entities.

    qkv projection without bias, output dense with bias, no residual / norm / dropout.
    """

    embed_dim: int
    out_dim: int
    n_heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, blocked: jax.Array, qvalid: jax.Array) -> jax.Array:
        """x [N, Din], blocked [NQ, N] bool, qvalid [NQ] bool -> [NQ, out_dim]."""
        n_q = blocked.shape[0]
        n, head_dim = x.shape[0], self.embed_dim // self.n_heads
        assert head_dim * self.n_heads == self.embed_dim, "embed_dim must divide into heads"
        q, k, v = QKVProjection(self.embed_dim, name="qkv")(x, n_q)
        q = q.reshape(n_q, self.n_heads, head_dim)
        k = k.reshape(n, self.n_heads, head_dim)
        v = v.reshape(n, self.n_heads, head_dim)
        logits = precision.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(jnp.float32(head_dim))
        blocked = blocked.astype(bool)[None]
        w = jax.nn.softmax(jnp.where(blocked, NEG_INF, logits), axis=-1)
        # Second where: a fully blocked row would otherwise be uniform; the original zeroes it.
        w = jnp.where(blocked, 0.0, w)
        heads = precision.einsum("hqk,khd->qhd", w, v).reshape(n_q, self.embed_dim)
        out = dense(self.out_dim, name="out")(heads)
        return jnp.where(qvalid[:, None], out, 0.0)
