"""Flexible attention QMIX mixer, flat (spec 2.3) and per subtask (spec 2.4), in one module.

The flat mixer is the per-subtask mixer with a single all-ones "subtask" column, so both forms
share every line of the mixing arithmetic.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn.agent import SUBTASK_CONDS
from alma_jax.nn.attention import MaskedMHA, both_active_block, group_block
from alma_jax.nn.init import dense

MIXINGS = ("qmix", "vdn")


class AttentionHyperNet(nn.Module):
    """One attention hypernetwork: relu(Dense) -> masked MHA over agent queries -> Dense."""

    hyper_dim: int = 128  # DHY
    mix_dim: int = 32  # DM
    n_heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, blocked: jax.Array, agent_active: jax.Array) -> jax.Array:
        """x [NE, Din], blocked [NA, NE] bool, agent_active [NA] bool -> u [NA, DM]."""
        g = nn.relu(dense(self.hyper_dim, name="fc1")(x))
        h = MaskedMHA(self.hyper_dim, self.hyper_dim, self.n_heads, name="attn")(
            g, blocked, agent_active
        )
        u = dense(self.mix_dim, name="fc2")(h)
        return jnp.where(agent_active[:, None], u, 0.0)


def nonneg_map(x: jax.Array, softmax: bool) -> jax.Array:
    """[..., DM] -> [..., DM] non-negative: softmax over hidden units, or absolute value."""
    return jax.nn.softmax(x, axis=-1) if softmax else jnp.abs(x)


def mix(
    q: jax.Array,
    u_w1: jax.Array,
    u_b1: jax.Array,
    u_wf: jax.Array,
    u_v: jax.Array,
    groups: jax.Array,
    softmax: bool = True,
) -> jax.Array:
    """q [M], u_w1 [M, DM], u_b1/u_wf/u_v [NA, DM], groups [NA, K] -> pre-affine y [K].

    M = V·NA stacks V views of the first layer (V = 1 normally, 2 for REFIL); view v of
    q and u_w1 occupies rows v·NA..(v+1)·NA-1. Slot averages divide by NA, not by members.
    """
    n_agents, mix_dim = u_b1.shape
    groups = groups.astype(q.dtype)
    groups_w1 = jnp.tile(groups, (q.shape[0] // n_agents, 1))  # [M, K]
    w1 = groups_w1[:, :, None] * nonneg_map(u_w1, softmax)[:, None, :]  # [M, K, DM]
    b1 = jnp.abs(groups.T @ u_b1 / n_agents)  # [K, DM]
    wf = nonneg_map(groups.T @ u_wf / n_agents, softmax)  # [K, DM]
    v = jnp.abs(groups.T @ u_v.sum(-1) / (n_agents * mix_dim))  # [K]
    hidden = jax.nn.elu(jnp.einsum("m,mkh->kh", q, w1) + b1)
    return jnp.sum(hidden * wf, axis=-1) + v


class FlexQMixer(nn.Module):
    """Monotonic attention mixer: one output (flat) or one per subtask, plus Pop-Art affine."""

    n_agents: int
    mix_dim: int = 32  # DM
    hyper_dim: int = 128  # DHY
    n_heads: int = 4
    subtask_cond: str | None = None  # mixer_subtask_cond: None | 'mask' | 'full_obs'
    softmax_mixing_weights: bool = True
    # 'qmix' (the paper) or 'vdn': y = the sum of the group's utilities, no hypernetworks
    # (a diagnostic baseline: it isolates the agents' learning from the mixer's).
    mixing: str = "qmix"

    @nn.compact
    def __call__(
        self,
        q: jax.Array,
        x: jax.Array,
        entity_mask: jax.Array,
        member: jax.Array | None = None,
        w1_blocked: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """q [NA] (or [V·NA]), x [NE, ED+NACT], entity_mask [NE], member [NE, NT] (subtask
        modes), w1_blocked [V, NA, NE] -> (y [K], Q_tot [K]); K = NT per subtask, 1 flat.

        `w1_blocked` replaces the mixer mask for the first-layer hypernet only, one mask per
        view of `q` (REFIL's imagined groups); `b1`, `wF`, `V` always use the mixer mask.
        """
        assert self.subtask_cond in SUBTASK_CONDS, f"unknown subtask_cond {self.subtask_cond!r}"
        assert self.mixing in MIXINGS, f"unknown mixing {self.mixing!r}"
        na = self.n_agents
        active = ~entity_mask.astype(bool)
        if self.subtask_cond is None:
            groups = jnp.ones((na, 1), q.dtype)
        else:
            assert member is not None, f"subtask_cond={self.subtask_cond!r} needs `member`"
            groups = member[:na]
        if self.subtask_cond == "full_obs":
            # Raw subtask index (never permuted): the mixer is centralised and fixed per index.
            x = jnp.concatenate([x, member.astype(x.dtype)], axis=-1)
        if self.subtask_cond == "mask":
            blocked = group_block(member)[:na]  # centralised: no obs_mask, no activity (F13)
        else:
            blocked = both_active_block(entity_mask, na)

        k = groups.shape[1]
        if self.mixing == "vdn":
            views = jnp.tile(groups, (q.shape[0] // na, 1))  # [M, K]
            y = views.T @ q
        else:
            y = self._qmix(q, x, groups, blocked, active[:na], w1_blocked)
        # Pop-Art affine, one pair per output; rescaled in place by `popart_update`.
        popart_a = self.param("popart_a", nn.initializers.ones, (k,))
        popart_b = self.param("popart_b", nn.initializers.zeros, (k,))
        return y, popart_a * y + popart_b

    def _qmix(self, q, x, groups, blocked, active, w1_blocked):
        def hyper(name: str) -> AttentionHyperNet:
            return AttentionHyperNet(self.hyper_dim, self.mix_dim, self.n_heads, name=name)

        hyper_w1 = hyper("hyper_w1")
        if w1_blocked is None:
            u_w1 = hyper_w1(x, blocked, active)
        else:
            u_w1 = jnp.concatenate([hyper_w1(x, m, active) for m in w1_blocked], axis=0)
        u_b1 = hyper("hyper_b1")(x, blocked, active)
        u_wf = hyper("hyper_wf")(x, blocked, active)
        u_v = hyper("hyper_v")(x, blocked, active)
        return mix(q, u_w1, u_b1, u_wf, u_v, groups, self.softmax_mixing_weights)
