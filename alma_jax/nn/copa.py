"""COPA coach and recognition networks plus their Gaussian helpers (spec 5.4).

The coach turns the full state into one strategy `z [NA, DA]` per agent; the recognition net
`q(z | s_t, a_t)` tries to recover it from the state and the joint action (variational term).
Both are written for one row; the learner vmaps them over environments, batch and time.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn.agent import TaskEmbed
from alma_jax.nn.attention import MaskedMHA
from alma_jax.nn.init import dense

LOGVAR_MIN, LOGVAR_MAX = -10.0, 0.0
LOGP_MIN, LOGP_MAX = -1000.0, 0.0  # per-dimension clip of log q(z)
ENTROPY_MIN, ENTROPY_MAX = 0.0, 10.0  # per-dimension clip of the coach entropy
_LOG_2PI = math.log(2.0 * math.pi)


def _clip_logvar(x: jax.Array) -> jax.Array:
    return jnp.clip(x, LOGVAR_MIN, LOGVAR_MAX)


class CopaCoach(nn.Module):
    """Centralised coach: strategy distribution (mu, logvar) [NA, DA] from all entities."""

    n_agents: int
    embed_dim: int = 128  # D
    n_heads: int = 4
    hidden_dim: int = 64  # DA, the agent's hidden width (z is added to it)
    task_embed: bool = True  # False with an allocation and mask_copa (the mask carries groups)

    @nn.compact
    def __call__(
        self,
        entities: jax.Array,
        blocked: jax.Array,
        agent_active: jax.Array,
        member: jax.Array | None = None,
        perm: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """entities [NE, ED], blocked [NA, NE] bool, agent_active [NA] bool, member [NE, NT]
        (needed with `task_embed`), perm [NT] -> (mu [NA, DA], logvar [NA, DA] in [-10, 0])."""
        h = dense(self.embed_dim, name="fc_in")(entities)
        if self.task_embed:
            h = h + TaskEmbed(self.embed_dim, name="task_embed")(member, perm)
        h = MaskedMHA(self.embed_dim, self.embed_dim, self.n_heads, name="attn")(
            nn.relu(h), blocked, agent_active
        )
        h = nn.relu(h)
        mu = dense(self.hidden_dim, name="fc_mu")(h)
        logvar = _clip_logvar(dense(self.hidden_dim, name="fc_logvar")(h))
        return mu, logvar


class CopaRecognition(nn.Module):
    """Recognition net q(z | s_t, a_t): Gaussian (mu, logvar) [NA, DA] per agent."""

    n_agents: int
    embed_dim: int = 128
    n_heads: int = 4
    hidden_dim: int = 64
    task_embed: bool = True

    @nn.compact
    def __call__(
        self,
        entities: jax.Array,
        actions_onehot: jax.Array,
        blocked: jax.Array,
        agent_active: jax.Array,
        member: jax.Array | None = None,
        perm: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """entities [NE, ED], actions_onehot [NA, NACT], blocked [NA, NE], agent_active [NA],
        member [NE, NT], perm [NT] -> (mu [NA, DA], logvar [NA, DA] in [-10, 0])."""
        na, d = self.n_agents, self.embed_dim
        h = dense(d, name="fc_in")(entities)
        # Only agent slots act; no bias so the action term is exactly zero elsewhere.
        act = dense(d, use_bias=False, name="fc_action")(actions_onehot.astype(h.dtype))
        h = h.at[:na].add(act)
        if self.task_embed:
            h = h + TaskEmbed(d, name="task_embed")(member, perm)
        h = MaskedMHA(d, d, self.n_heads, name="attn")(nn.relu(h), blocked, agent_active)
        h = nn.relu(h)
        mu = dense(self.hidden_dim, name="mu_out")(nn.relu(dense(d, name="mu_hidden")(h)))
        logvar = dense(self.hidden_dim, name="logvar_out")(
            nn.relu(dense(d, name="logvar_hidden")(h)))
        return mu, _clip_logvar(logvar)


def sample_strategy(mu: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
    """Reparameterised draw z = mu + exp(logvar / 2) * noise (any matching shapes)."""
    return mu + jnp.exp(0.5 * logvar) * noise


def gaussian_log_prob(x: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Per-dimension log N(x; mu, exp(logvar)), same shape as x."""
    return -0.5 * ((x - mu) ** 2 * jnp.exp(-logvar) + logvar + _LOG_2PI)


def gaussian_entropy(logvar: jax.Array) -> jax.Array:
    """Per-dimension entropy of N(., exp(logvar)), same shape as logvar."""
    return 0.5 * (1.0 + _LOG_2PI + logvar)


def vi_terms(
    z: jax.Array,
    coach_logvar: jax.Array,
    recog_mu: jax.Array,
    recog_logvar: jax.Array,
    agent_active: jax.Array,
    row_mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """COPA's variational losses (spec 5.4) -> (vi_loss, entropy_loss) scalars.

    z, coach_logvar, recog_mu, recog_logvar: [..., NA, DA] (the strategy in force at each row
    and the coach distribution it came from); agent_active [..., NA] bool; row_mask [...].
    vi_loss = mean over unmasked rows of -(mean over active agents of Σ_d clip(log q(z_d)));
    entropy_loss likewise with -Σ_d clip(H_d). Both are to be minimised.
    """
    logq = jnp.clip(gaussian_log_prob(z, recog_mu, recog_logvar), LOGP_MIN, LOGP_MAX).sum(-1)
    ent = jnp.clip(gaussian_entropy(coach_logvar), ENTROPY_MIN, ENTROPY_MAX).sum(-1)
    act = agent_active.astype(logq.dtype)
    n_act = act.sum(-1) + 1e-8

    def per_row(x):
        return jnp.sum(x * act, -1) / n_act

    m = row_mask.astype(logq.dtype)
    n_rows = jnp.maximum(jnp.sum(m), 1.0)
    vi_loss = jnp.sum(-per_row(logq) * m) / n_rows
    entropy_loss = jnp.sum(-per_row(ent) * m) / n_rows
    return vi_loss, entropy_loss
