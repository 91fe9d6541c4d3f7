"""Low-level value learner: attention QMIX, flat (A-QMIX) or one mixture per subtask (spec 2).

Acting (`act`) and learning (`update`) share the utility function `agent_q`; the learner is
1-step double Q-learning with hard target networks and Pop-Art on the mixer (spec 2.5, 2.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from alma_jax.avail import parse_avail
from alma_jax.buffer import Window, index_to_onehot, loss_mask, stored_alloc, subtask_loss_mask
from alma_jax.nn.agent import EntityAttentionAgent, entity_inputs
from alma_jax.nn.attention import membership
from alma_jax.nn.mixers import FlexQMixer
from alma_jax.optim import make_optimizer
from alma_jax.popart import PopArtStats, denormalise, popart_init, popart_update

NEG = -9_999_999.0  # the original's value for unavailable actions in the greedy target


@dataclass(frozen=True)
class QMixConfig:
    """Static settings of the low-level learner (defaults: the paper's, spec 4.8)."""

    n_agents: int
    n_actions: int
    n_tasks: int
    subtask_cond: str | None = None  # None (flat) | 'mask' (ALMA, heuristic) | 'full_obs'
    mask_subtask_actions: bool = False  # SaveTheCity: False
    gamma: float = 0.99
    lr: float = 5e-4
    grad_clip: float = 10.0
    embed_dim: int = 128
    n_heads: int = 4
    hidden_dim: int = 64
    mix_dim: int = 32
    hyper_dim: int = 128
    softmax_mixing_weights: bool = True
    dq_select_with_next_alloc: bool = True  # F3: replicate the original


@struct.dataclass
class LowState:
    """Parameters, optimiser state, Pop-Art statistics and their target copies."""

    params: Any
    opt_state: Any
    stats: PopArtStats
    target_params: Any
    target_stats: PopArtStats


class QMixLearner:
    """Networks and pure functions of the low-level learner for one `QMixConfig`."""

    def __init__(self, cfg: QMixConfig):
        self.cfg = cfg
        self.agent = EntityAttentionAgent(
            cfg.n_agents, cfg.n_actions, cfg.embed_dim, cfg.n_heads, cfg.hidden_dim,
            subtask_cond=cfg.subtask_cond,
        )
        self.mixer = FlexQMixer(
            cfg.n_agents, cfg.mix_dim, cfg.hyper_dim, cfg.n_heads, subtask_cond=cfg.subtask_cond,
            softmax_mixing_weights=cfg.softmax_mixing_weights,
        )
        self.optimizer = make_optimizer(lr=cfg.lr, clip=cfg.grad_clip)

    # ----------------------------------------------------------------- networks (one row)
    def _member(self, entity2task_mask, alloc):
        if self.cfg.subtask_cond is None:
            return None
        return membership(entity2task_mask, alloc)

    def agent_q(self, agent_params, entities, obs_mask, entity_mask, entity2task_mask,
                last_action, alloc):
        """Utilities [NA, NACT] of one row; last_action [NA] index (-1 none), alloc [NA, NT]."""
        x = entity_inputs(entities, index_to_onehot(last_action, self.cfg.n_actions))
        member = self._member(entity2task_mask, alloc)
        return self.agent.apply(agent_params, x, obs_mask, entity_mask, member)

    def mix(self, mixer_params, q, entities, entity_mask, entity2task_mask, last_action, alloc):
        """(y [K], Q_tot [K]) of one row from chosen utilities q [NA]."""
        x = entity_inputs(entities, index_to_onehot(last_action, self.cfg.n_actions))
        member = self._member(entity2task_mask, alloc)
        return self.mixer.apply(mixer_params, q, x, entity_mask, member)

    def init(self, key: jax.Array, example) -> LowState:
        """Fresh learner state from one example row (anything with the observation fields)."""
        cfg = self.cfg
        k1, k2 = jax.random.split(key)
        la = jnp.full((cfg.n_agents,), -1, jnp.int32)
        alloc = jnp.zeros((cfg.n_agents, cfg.n_tasks), bool)
        x = entity_inputs(example.entities, index_to_onehot(la, cfg.n_actions))
        member = self._member(example.entity2task_mask, alloc)
        agent = self.agent.init(k1, x, example.obs_mask, example.entity_mask, member)
        mixer = self.mixer.init(k2, jnp.zeros(cfg.n_agents), x, example.entity_mask, member)
        params = {"agent": agent, "mixer": mixer}
        return LowState(params=params, opt_state=self.optimizer.init(params),
                        stats=popart_init(), target_params=params, target_stats=popart_init())

    # ---------------------------------------------------------------------------- acting
    def act(self, params, key, obs, last_action, alloc, eps):
        """Epsilon-greedy actions [E, NA] for a batch of observations (spec 2.2)."""
        q = jax.vmap(self.agent_q, in_axes=(None, 0, 0, 0, 0, 0, 0))(
            params["agent"], obs.entities, obs.obs_mask, obs.entity_mask, obs.entity2task_mask,
            last_action, alloc,
        )
        avail = jax.vmap(parse_avail, in_axes=(0, 0, None))(
            obs.avail_actions, alloc if self.cfg.subtask_cond else None,
            self.cfg.mask_subtask_actions,
        )
        greedy = jnp.argmax(jnp.where(avail, q, NEG), -1)
        k_explore, k_pick = jax.random.split(key)
        explore = jax.random.uniform(k_explore, greedy.shape) < eps
        u = jax.random.uniform(k_pick, greedy.shape)
        # uniform among available actions: the k-th available one
        count = jnp.sum(avail, -1)
        k = jnp.floor(u * count)
        before = jnp.cumsum(avail, -1) - avail
        random = jnp.argmax(avail & (before == k[..., None]), -1)
        return jnp.where(explore, random, greedy).astype(jnp.int32)

    # -------------------------------------------------------------------------- learning
    def _utilities(self, agent_params, w: Window, alloc):
        """Agent utilities over a window batch: [B, T, NA, NACT]."""
        f = jax.vmap(jax.vmap(self.agent_q, in_axes=(None, 0, 0, 0, 0, 0, 0)),
                     in_axes=(None, 0, 0, 0, 0, 0, 0))
        return f(agent_params, w.entities, w.obs_mask, w.entity_mask, w.entity2task_mask,
                 w.last_action, alloc)

    def _mixed(self, mixer_params, q, w: Window, alloc):
        f = jax.vmap(jax.vmap(self.mix, in_axes=(None, 0, 0, 0, 0, 0, 0)),
                     in_axes=(None, 0, 0, 0, 0, 0, 0))
        return f(mixer_params, q, w.entities, w.entity_mask, w.entity2task_mask,
                 w.last_action, alloc)

    def targets(self, state: LowState, w: Window):
        """Raw targets Y [B, T-1, K] and loss mask [B, T-1, K] (spec 2.6, 2.7)."""
        cfg = self.cfg
        alloc = stored_alloc(w) if cfg.subtask_cond else jnp.zeros(
            w.actions.shape + (cfg.n_tasks,), bool)
        # Rows t+1 evaluated with the allocation of row t ("what the agent was pursuing").
        alloc_prev = alloc[:, :-1]
        nxt = jax.tree.map(lambda x: x[:, 1:], w)
        q_online_next = self._utilities(
            state.params["agent"], nxt, alloc[:, 1:] if cfg.dq_select_with_next_alloc
            else alloc_prev)
        q_target_next = self._utilities(state.target_params["agent"], nxt, alloc_prev)
        avail = jax.vmap(jax.vmap(parse_avail, in_axes=(0, 0, None)), in_axes=(0, 0, None))(
            nxt.avail_actions, alloc_prev if cfg.subtask_cond else None,
            cfg.mask_subtask_actions)
        greedy = jnp.argmax(jnp.where(avail, q_online_next, NEG), -1)
        q_next = jnp.take_along_axis(q_target_next, greedy[..., None], -1)[..., 0]
        _, qtot_next = self._mixed(state.target_params["mixer"], q_next, nxt, alloc_prev)
        v_next = denormalise(state.target_stats, qtot_next)
        if cfg.subtask_cond:
            r = w.task_rewards[:, :-1]
            d = w.tasks_terminated[:, :-1]
            mask = subtask_loss_mask(w, alloc)[:, :-1]
        else:
            r = w.reward[:, :-1, None]
            d = w.terminated[:, :-1, None]
            mask = loss_mask(w)[:, :-1, None]
        y = r + cfg.gamma * (1.0 - d) * v_next
        return jax.lax.stop_gradient(y), mask, alloc

    def update(self, state: LowState, w: Window) -> tuple[LowState, dict[str, jax.Array]]:
        """One gradient step on a window batch; Pop-Art statistics updated first (F2)."""
        y, mask, alloc = self.targets(state, w)
        m = mask.astype(jnp.float32)
        mixer = state.params["mixer"]["params"]
        stats, a, b, z = popart_update(state.stats, mixer["popart_a"], mixer["popart_b"], y, m)
        params = jax.tree.map(lambda x: x, state.params)
        params["mixer"]["params"] = dict(mixer, popart_a=a, popart_b=b)
        cur = jax.tree.map(lambda x: x[:, :-1], w)

        def loss_fn(p):
            q = self._utilities(p["agent"], cur, alloc[:, :-1])
            chosen = jnp.take_along_axis(q, cur.actions[..., None], -1)[..., 0]
            _, qtot = self._mixed(p["mixer"], chosen, cur, alloc[:, :-1])
            err = (qtot - z) * m
            loss = jnp.sum(err**2) / jnp.maximum(jnp.sum(m), 1.0)
            return loss, (qtot, chosen, err)

        (loss, (qtot, chosen, err)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        n = jnp.maximum(jnp.sum(m), 1.0)
        metrics = {
            "losses/q_loss": loss,
            "train_metrics/q_grad_norm": optax.tree.norm(grads),
            "train_metrics/td_error_abs": jnp.sum(jnp.abs(err)) / n,
            "train_metrics/q_taken_mean": jnp.sum(qtot * m) / n,
            "train_metrics/target_mean": jnp.sum(y * m) / n,
        }
        return state.replace(params=params, opt_state=opt_state, stats=stats), metrics

    def update_target(self, state: LowState) -> LowState:
        return state.replace(target_params=state.params, target_stats=state.stats)
