"""LICA networks (lica.md 4, 5, 11, 13): GRU policy, mixing / MLP critics, per-subtask critic.

Every critic returns one value per output head, shape [..., K]: K = 1 for the flat critics,
K = NT for the per-subtask entity critic, so the learner's losses are written once.
Policies output logits; `mask_logits` / `policy_probs` / `policy_entropy` are the one place where
availability enters the softmax (finite -1e10, never -inf).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn import precision
from alma_jax.nn.attention import both_active_block, group_block
from alma_jax.nn.init import dense, torch_uniform
from alma_jax.nn.mixers import AttentionHyperNet

# Finite: entropy multiplies p * log p, and 0 * (-inf) would be NaN (lica.md 4).
NEG_LOGIT = -1e10


# ------------------------------------------------------------------------ policy helpers
def mask_logits(logits: jax.Array, avail: jax.Array) -> jax.Array:
    """logits [..., A], avail [..., A] bool -> logits with unavailable actions at -1e10."""
    return jnp.where(avail, logits, NEG_LOGIT)


def policy_probs(masked: jax.Array, avail: jax.Array) -> jax.Array:
    """Masked logits [..., A] -> probabilities [..., A], all-zero where nothing is available.

    The double `where` keeps value and gradient finite on rows without available actions,
    where the original divides 0 by 0 and overwrites the NaNs with zeros (lica.md 6).
    """
    p = jnp.where(avail, jax.nn.softmax(masked, axis=-1), 0.0)
    s = jnp.sum(p, axis=-1, keepdims=True)
    return jnp.where(avail, p / jnp.where(s > 0, s, 1.0), 0.0)


def policy_entropy(masked: jax.Array, avail: jax.Array) -> jax.Array:
    """Masked logits [..., A] -> entropy [...] in nats; unavailable actions contribute 0."""
    p = jax.nn.softmax(masked, axis=-1)
    logp = jax.nn.log_softmax(masked, axis=-1)
    plogp = jnp.where(avail & (p > 0), p * logp, 0.0)
    return -jnp.sum(plogp, axis=-1)


def gumbel_straight_through(
    key: jax.Array, masked: jax.Array, avail: jax.Array, tau: float = 1.0
) -> jax.Array:
    """Straight-through Gumbel-softmax (lica.md 11.1): one-hot forward, soft-sample gradient.

    masked [..., A] logits -> [..., A]; all-zero on rows without available actions.
    """
    g = jax.random.gumbel(key, masked.shape, masked.dtype)
    soft = policy_probs((masked + g) / tau, avail)
    hard = jax.nn.one_hot(jnp.argmax(jnp.where(avail, soft, -1.0), -1), masked.shape[-1])
    hard = jnp.where(avail, hard, 0.0)
    return hard + soft - jax.lax.stop_gradient(soft)


# ----------------------------------------------------------------------- flat observations
def flat_observation(entities: jax.Array, blocked: jax.Array) -> jax.Array:
    """entities [NE, ED], blocked [NA, NE] bool -> per-agent flat obs [NA, NE*ED].

    The GRU agent needs a fixed-size vector: every entity slot keeps its position, and
    entities the agent cannot see are zeroed.
    """
    seen = jnp.where(blocked[:, :, None], 0.0, entities[None].astype(jnp.float32))
    return seen.reshape(blocked.shape[0], -1)


def flat_state(entities: jax.Array, entity_mask: jax.Array) -> jax.Array:
    """entities [..., NE, ED], entity_mask [..., NE] -> global state [..., NE*ED]."""
    s = jnp.where(entity_mask[..., None], 0.0, entities.astype(jnp.float32))
    return s.reshape(s.shape[:-2] + (-1,))


def gru_inputs(flat_obs: jax.Array, last_action: jax.Array) -> jax.Array:
    """flat_obs [NA, O], last_action [NA, A] one-hot -> [NA, O+A+NA] (lica.md 4 order)."""
    n_agents = flat_obs.shape[0]
    ids = jnp.eye(n_agents, dtype=jnp.float32)
    return jnp.concatenate([flat_obs, last_action.astype(jnp.float32), ids], axis=-1)


# ------------------------------------------------------------------------------ GRU agent
class TorchGRUCell(nn.Module):
    """GRU cell with PyTorch's equations and parameter layout (separate input/hidden biases).

    Gate order in the stacked weights is (r, z, n); every weight and bias ~ U(±1/sqrt(H)).
    """

    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        """x [..., Din], h [..., H] -> h' [..., H]."""
        H = self.hidden_dim
        init = torch_uniform(H)
        w_ih = self.param("w_ih", init, (x.shape[-1], 3 * H))
        w_hh = self.param("w_hh", init, (H, 3 * H))
        b_ih = self.param("b_ih", init, (3 * H,))
        b_hh = self.param("b_hh", init, (3 * H,))
        gi = precision.dot(x, w_ih) + b_ih
        gh = precision.dot(h, w_hh) + b_hh
        i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(i_r + h_r)
        z = jax.nn.sigmoid(i_z + h_z)
        n = jnp.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h


class RNNPolicy(nn.Module):
    """LICA's shared recurrent agent: ReLU(Dense) -> GRU -> Dense(A) logits (lica.md 4)."""

    n_actions: int
    hidden_dim: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., O+A+N], h [..., H] -> (unmasked logits [..., A], h' [..., H])."""
        y = nn.relu(dense(self.hidden_dim, name="fc1")(x))
        h = TorchGRUCell(self.hidden_dim, name="rnn")(y, h)
        return dense(self.n_actions, name="fc2")(h), h


# -------------------------------------------------------------------------- flat critics
class MixingCritic(nn.Module):
    """LICA's hypernetwork mixing critic Q(s, p_1..p_N), unconstrained weights (lica.md 5.1)."""

    n_agents: int
    n_actions: int
    embed_dim: int = 64  # E
    hypernet_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, state: jax.Array) -> jax.Array:
        """x [..., N, A] (probabilities or one-hots), state [..., S] -> Q [..., 1]."""
        E = self.embed_dim
        F = self.n_agents * self.n_actions
        K = E * F
        assert self.hypernet_layers in (1, 2), "hypernet_layers must be 1 or 2"
        if self.hypernet_layers == 2:
            w1 = dense(K, name="hyper_w1_out")(nn.relu(dense(K, name="hyper_w1_in")(state)))
            wf = dense(E, name="hyper_wf_out")(nn.relu(dense(E, name="hyper_wf_in")(state)))
        else:
            w1 = dense(K, name="hyper_w1_in")(state)
            wf = dense(E, name="hyper_wf_in")(state)
        b1 = dense(E, name="hyper_b1")(state)
        b2 = dense(1, name="hyper_b2_out")(nn.relu(dense(E, name="hyper_b2_in")(state)))
        # Row-major: row i*A + a of W1 belongs to agent i, action a.
        W1 = w1.reshape(w1.shape[:-1] + (F, E))
        flat = x.reshape(x.shape[:-2] + (F,)).astype(jnp.float32)
        h = nn.relu(jnp.einsum("...f,...fe->...e", flat, W1) + b1)
        return jnp.sum(h * wf, axis=-1, keepdims=True) + b2


class MLPCritic(nn.Module):
    """MLP-critic ablation Q = MLP([state || flat p]) with ReLU hidden layers (lica.md 11.2)."""

    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x: jax.Array, state: jax.Array) -> jax.Array:
        """x [..., N, A], state [..., S] -> Q [..., 1]."""
        h = jnp.concatenate([state, x.reshape(x.shape[:-2] + (-1,)).astype(jnp.float32)], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(dense(width, name=f"fc{i}")(h))
        return dense(1, name="out")(h)


# ------------------------------------------------------------------ per-subtask critic (13.3)
def critic_key_mask(
    entity_mask: jax.Array, member: jax.Array | None, n_agents: int, activity: bool = True
) -> jax.Array:
    """entity_mask [NE], member [NE, NT] or None (flat) -> blocked [NA, NE] bool.

    Subtask mode: same-subtask keys only, plus (unless `activity=False`, ALMA's F13 parity) the
    "both active" term, so dead or padded entities never reach a hypernetwork.
    """
    active_block = both_active_block(entity_mask.astype(bool), n_agents)
    if member is None:
        return active_block
    blocked = group_block(member)[:n_agents]
    return blocked | active_block if activity else blocked


def entity_mix(
    p: jax.Array,
    u_w1: jax.Array,
    u_b1: jax.Array,
    u_wf: jax.Array,
    u_v: jax.Array,
    groups: jax.Array,
) -> jax.Array:
    """Per-subtask LICA mixing from per-agent hypernet outputs (lica.md 13.3).

    p [NA, A], u_w1 [NA, A*E], u_b1 / u_wf [NA, E], u_v [NA, 1], groups [NA, K] (Mb) -> Q [K].
    """
    n_agents, n_actions = p.shape
    E = u_b1.shape[-1]
    g = groups.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(g, axis=0), 1.0)[:, None]  # [K, 1]
    W1 = u_w1.reshape(n_agents, n_actions, E)
    contrib = jnp.einsum("ia,iae->ie", p.astype(jnp.float32), W1)  # block form of x @ W1
    h = nn.relu(g.T @ contrib + g.T @ u_b1 / n)  # [K, E]
    wf = g.T @ u_wf / n
    v = (g.T @ u_v / n)[:, 0]
    return jnp.sum(h * wf, axis=-1) + v


class EntityCritic(nn.Module):
    """One LICA mixing critic per subtask from attention hypernetworks (lica.md 13.3).

    Parameter shapes do not depend on the numbers of agent or entity slots.
    """

    n_actions: int
    embed_dim: int = 64  # E (LICA's mixing_embed_dim)
    hyper_dim: int = 128  # DHY
    n_heads: int = 4

    @nn.compact
    def __call__(
        self, p: jax.Array, x: jax.Array, blocked: jax.Array, active: jax.Array,
        groups: jax.Array,
    ) -> jax.Array:
        """p [NA, A], x [NE, ED+A] (`entity_inputs`), blocked [NA, NE] (`critic_key_mask`),
        active [NA] bool, groups [NA, K] (agent membership, zero rows off-subtask) -> Q [K]."""
        E, A = self.embed_dim, self.n_actions

        def hyper(name: str, width: int) -> jax.Array:
            net = AttentionHyperNet(self.hyper_dim, width, self.n_heads, name=name)
            return net(x, blocked, active)

        u_w1 = hyper("hyper_w1", A * E)
        u_b1 = hyper("hyper_b1", E)
        u_wf = hyper("hyper_wf", E)
        u_v = hyper("hyper_v", 1)
        return entity_mix(p, u_w1, u_b1, u_wf, u_v, groups.astype(bool) & active[:, None])
