"""ALMA's high-level allocation learner: Amortized Q-Learning (spec 3.1-3.11).

A proposal network samples NP allocations, a critic Q(s, alloc) picks the best, and the
proposal network is trained to put probability on the critic's choice. Everything is pure:
`decide` acts for ONE environment (vmap it over envs), `make_meta` turns a sampled window
batch into a fixed-size decision batch, `update` performs spec 3.11 steps (a)-(d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from alma_jax.allocation import random_allocation
from alma_jax.buffer import Window, index_to_onehot, loss_mask, stored_alloc
from alma_jax.nn.allocator import (
    COUNT_NORM,
    AllocCritic,
    AllocPolicy,
    Decoded,
    decode,
    encode,
)
from alma_jax.nn.attention import membership
from alma_jax.nn.precision import at_precision, check_precision
from alma_jax.optim import make_optimizer
from alma_jax.popart import PopArtStats, denormalise, popart_init, popart_update
from envs_jax.core import Observation

__all__ = [
    "METRIC_NAMES",
    "AQLConfig",
    "AQLLearner",
    "AllocParams",
    "HighState",
    "MetaBatch",
    "Proposals",
]

METRIC_NAMES = (
    "losses/alloc_q_loss",
    "losses/alloc_amort_loss",
    "losses/alloc_entropy",
    "train_metrics/alloc_q_grad_norm",
    "train_metrics/alloc_pi_grad_norm",
    "alloc_metrics/best_prob",
    "alloc_metrics/perc_ag_changed",
    "alloc_metrics/ag_task_concentration",
    "alloc_metrics/any_task_no_agents_pi",
)


LOSS_WEIGHTINGS = ("original", "spec")


@dataclass(frozen=True)
class AQLConfig:
    """Static settings of the high-level learner (defaults: the paper's, spec 4.8)."""

    n_agents: int
    n_tasks: int
    entity_dim: int
    embed_dim: int = 128
    n_heads: int = 4
    n_proposals: int = 32
    gamma: float = 0.99
    lr: float = 5e-4
    grad_clip: float = 10.0
    optimizer: str = "rmsprop"  # 'rmsprop' (paper) | 'adam', for both networks
    popart: bool = True  # Pop-Art on the critic (the original's `popart` switches it too)
    # 'original': what the original computes (errata E3, E4): the critic loss is
    # Σ m·w²·δ² / Σ m·w and L_amort is weighted by w on every row but the last existing one
    # (an in-place product on a view of the mask); 'spec': the spec's text, Σ m·w·δ² / Σ m·w
    # and an unweighted L_amort.
    loss_weighting: str = "original"
    entropy_coef: float = 0.01
    decay_old: int = 150000
    max_bs: int = 400
    action_length: int = 5
    count_norm: float = COUNT_NORM
    n_extra_tasks: int = 0
    pi_pointer_net: bool = True
    pi_autoreg: bool = True
    sel_task_upd: bool = True
    subtask_mask: bool = True
    pi_ag_attn: bool = False
    include_greedy_proposal: bool = False  # F10: off replicates the original
    stored_prev_alloc: bool = True  # F8: False = the original's last_alloc reconstruction
    precision: str = "fp32"  # the networks' contractions: 'fp32' | 'bf16' (nn/precision.py)

    def __post_init__(self) -> None:
        if not self.pi_pointer_net:
            raise NotImplementedError("pi_pointer_net=False is not implemented")
        check_precision(self.precision)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"aql.loss_weighting={self.loss_weighting!r} is not allowed; "
                             f"choose one of {list(LOSS_WEIGHTINGS)}")


@struct.dataclass
class HighState:
    """Online and target parameters of both networks, optimiser states, critic Pop-Art."""

    pi: Any
    critic: Any
    pi_opt_state: Any
    critic_opt_state: Any
    critic_stats: PopArtStats
    target_pi: Any
    target_critic: Any
    target_critic_stats: PopArtStats


@struct.dataclass
class AllocParams:
    """What the rollout needs to act: online parameters and exploration rates (0/0 = test)."""

    pi: Any
    critic: Any
    eps_alloc: jax.Array
    eps_prop: jax.Array
    # Evaluation diagnostic (not ALMA): 1 keeps every agent whose previous subtask is still
    # open on it, so only agents without an open subtask are (re)allocated: the heuristic's
    # stability with the learned choice for the rest. 0 (default) is the paper's policy.
    keep_open: jax.Array | float = 0.0


@struct.dataclass
class MetaBatch:
    """High-level batch of R decision rows (spec 3.8); rows with exists=False are filler.

    entities [R,NE,ED], entity_mask [R,NE], entity2task_mask [R,NE,NT], task_mask [R,NT],
    avail_actions [R,NA,NACT], last_alloc [R,NA,NT] bool, alloc [R,NA,NT] bool (executed),
    seg_r [R] (already divided by action_length), seg_d [R] bool, mask [R] bool (includes
    exists), t_added [R] int32, exists [R] bool.
    """

    entities: jax.Array
    entity_mask: jax.Array
    entity2task_mask: jax.Array
    task_mask: jax.Array
    avail_actions: jax.Array
    last_alloc: jax.Array
    alloc: jax.Array
    seg_r: jax.Array
    seg_d: jax.Array
    mask: jax.Array
    t_added: jax.Array
    exists: jax.Array


@struct.dataclass
class Proposals:
    """Candidates of one row ([..] = optional leading row axis); C = NP (+1 if greedy).

    allocs [.., C, NA, NT] bool, log_prob/entropy/best_prob [.., C], values [.., C] (online
    critic, normalised scale), best [..] int32 (argmax of values, first on ties), and the
    TaskEmbed permutations used by the policy and the critic for this call.
    """

    allocs: jax.Array
    log_prob: jax.Array
    entropy: jax.Array
    best_prob: jax.Array
    values: jax.Array
    best: jax.Array
    pi_perm: jax.Array
    critic_perm: jax.Array


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, 0 where den == 0 (finite gradients either way)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


class AQLLearner:
    """Networks and pure functions of the AQL allocation controller for one `AQLConfig`."""

    def __init__(self, cfg: AQLConfig):
        self.cfg = cfg
        self.policy = at_precision(AllocPolicy(
            cfg.n_agents, cfg.embed_dim, cfg.n_heads, cfg.n_extra_tasks, cfg.count_norm,
            pi_autoreg=cfg.pi_autoreg, sel_task_upd=cfg.sel_task_upd,
            subtask_mask=cfg.subtask_mask, pi_ag_attn=cfg.pi_ag_attn,
        ), cfg.precision)
        self.critic = at_precision(AllocCritic(cfg.n_agents, cfg.embed_dim, cfg.n_heads,
                                               cfg.n_extra_tasks, cfg.count_norm),
                                   cfg.precision)
        self.optimizer = make_optimizer(lr=cfg.lr, clip=cfg.grad_clip, kind=cfg.optimizer)

    # ------------------------------------------------------------------------ state
    def init(self, key: jax.Array, obs: Observation) -> HighState:
        """Fresh state from the observation of ONE environment."""
        cfg = self.cfg
        k_pi, k_q = jax.random.split(key)
        last = jnp.zeros((cfg.n_agents, cfg.n_tasks), bool)
        perm = jnp.arange(cfg.n_tasks + cfg.n_extra_tasks)
        pi = self.policy.init(k_pi, obs.entities, obs.entity_mask, obs.entity2task_mask, last,
                              obs.task_mask, perm)
        critic = self.critic.init(k_q, obs.entities, obs.entity_mask, obs.entity2task_mask,
                                  last, perm)
        return HighState(
            pi=pi, critic=critic, pi_opt_state=self.optimizer.init(pi),
            critic_opt_state=self.optimizer.init(critic), critic_stats=popart_init(),
            target_pi=pi, target_critic=critic, target_critic_stats=popart_init(),
        )

    def update_target(self, state: HighState) -> HighState:
        """Copy policy, critic and critic Pop-Art statistics into the targets (spec 3.11)."""
        return state.replace(target_pi=state.pi, target_critic=state.critic,
                             target_critic_stats=state.critic_stats)

    def alloc_params(self, state: HighState, eps_alloc: jax.Array | float,
                     eps_prop: jax.Array | float) -> AllocParams:
        """Acting parameters; eps_alloc = eps_prop = 0 is test mode (spec 3.6 step 4)."""
        return AllocParams(state.pi, state.critic, jnp.asarray(eps_alloc, jnp.float32),
                           jnp.asarray(eps_prop, jnp.float32), jnp.zeros((), jnp.float32))

    # ---------------------------------------------------------------------- networks
    def draw_perm(self, key: jax.Array) -> jax.Array:
        """A TaskEmbed permutation [NT + extra]: one per network call, shared by its batch."""
        return jax.random.permutation(key, self.cfg.n_tasks + self.cfg.n_extra_tasks)

    def critic_value(self, critic_params: Any, entities: jax.Array, entity_mask: jax.Array,
                     entity2task_mask: jax.Array, alloc: jax.Array, perm: jax.Array
                     ) -> jax.Array:
        """Normalised-scale value a·y + b of one row [NE, ...] and allocation [NA, NT]."""
        return self.critic.apply(critic_params, entities, entity_mask, entity2task_mask,
                                 alloc, perm)[1]

    def _candidates(self, rows: tuple[int, ...], key: jax.Array) -> jax.Array:
        """Gumbel noise [*rows, C, NA, NT]; the greedy candidate (if any) gets zero noise last."""
        cfg = self.cfg
        g = jax.random.gumbel(key, (*rows, cfg.n_proposals, cfg.n_agents, cfg.n_tasks))
        if cfg.include_greedy_proposal:
            g = jnp.concatenate([g, jnp.zeros_like(g[..., :1, :, :])], axis=-3)
        return g

    def propose_row(self, pi: Any, critic: Any, gumbel: jax.Array, pi_perm: jax.Array,
                    critic_perm: jax.Array, entities: jax.Array, entity_mask: jax.Array,
                    entity2task_mask: jax.Array, task_mask: jax.Array, last_alloc: jax.Array
                    ) -> Proposals:
        """Spec 3.6 steps 1-2 for one row: gumbel [C, NA, NT] -> candidates, values, best."""
        na = self.cfg.n_agents
        entity_mask = entity_mask.astype(bool)
        active = ~entity_mask[:na]
        enc = encode(self.policy, pi, entities, entity_mask, entity2task_mask, last_alloc,
                     pi_perm)
        dec: Decoded = jax.vmap(
            lambda g: decode(self.policy, pi, enc, task_mask, active, gumbel=g))(gumbel)
        values = jax.vmap(
            lambda a: self.critic_value(critic, entities, entity_mask, entity2task_mask, a,
                                        critic_perm))(dec.alloc)
        best = jnp.argmax(values).astype(jnp.int32)  # first maximum on ties
        return Proposals(dec.alloc, dec.log_prob, dec.entropy, dec.best_prob, values, best,
                         pi_perm, critic_perm)

    # ------------------------------------------------------------------------ acting
    def choose(self, params: AllocParams, key: jax.Array, obs: Observation,
               prev_alloc: jax.Array) -> tuple[jax.Array, Proposals]:
        """`decide` plus its proposals (for tests and logging) -> (alloc [NA, NT], Proposals)."""
        na = self.cfg.n_agents
        k_pi, k_q, k_g, k_prop, k_agent, k_rand = jax.random.split(key, 6)
        props = self.propose_row(
            params.pi, params.critic, self._candidates((), k_g), self.draw_perm(k_pi),
            self.draw_perm(k_q), obs.entities, obs.entity_mask, obs.entity2task_mask,
            obs.task_mask, prev_alloc.astype(bool))
        alloc = props.allocs[props.best]
        # u < eps with u in [0, 1): never at eps = 0, always at eps = 1.
        use_first = jax.random.uniform(k_prop) < params.eps_prop
        alloc = jnp.where(use_first, props.allocs[0], alloc)
        rand = random_allocation(None, k_rand, obs, prev_alloc)
        replace = jax.random.uniform(k_agent, (na,)) < params.eps_alloc
        alloc = jnp.where(replace[:, None], rand, alloc)
        open_task = ~obs.task_mask.astype(bool)[None, :]
        keep = (params.keep_open > 0) & jnp.any(prev_alloc.astype(bool) & open_task, 1)
        alloc = jnp.where(keep[:, None], prev_alloc.astype(bool), alloc)
        active = ~obs.entity_mask[:na].astype(bool)
        return alloc & active[:, None] & open_task, props

    def decide(self, params: AllocParams, key: jax.Array, obs: Observation,
               prev_alloc: jax.Array) -> jax.Array:
        """Allocation policy for ONE env (spec 3.6): prev_alloc [NA, NT] -> alloc [NA, NT] bool."""
        return self.choose(params, key, obs, prev_alloc)[0]

    # -------------------------------------------------------------------- meta batch
    def make_meta(self, w: Window) -> MetaBatch:
        """Spec 3.8: decision rows of a [B, T] window batch, flattened to R = max_bs rows."""
        cfg = self.cfg
        B, T = w.reward.shape
        R, NT = cfg.max_bs, cfg.n_tasks
        dp = w.hier_decision.astype(bool) & w.filled.astype(bool)
        timeout = w.reset & ~w.terminated

        def back(carry, x):
            cr, cd, co = carry
            r, term, to, d, m = x
            cr = cr + r
            seg_r = cr
            cr = jnp.where(d, 0.0, cr)
            cd = cd | term
            seg_d = cd
            cd = cd & ~d
            co = co | to
            m = m & ~co  # a segment containing a time-out cannot bootstrap
            co = co & ~d
            return (cr, cd, co), (seg_r, seg_d, m)

        xs = tuple(jnp.swapaxes(x, 0, 1) for x in (
            w.reward.astype(jnp.float32), w.terminated.astype(bool), timeout, dp,
            loss_mask(w)))
        init = (jnp.zeros((B,), jnp.float32), jnp.zeros((B,), bool), jnp.zeros((B,), bool))
        _, (seg_r, seg_d, mask) = jax.lax.scan(back, init, xs, reverse=True)
        seg_r, seg_d, mask = (jnp.swapaxes(x, 0, 1) for x in (seg_r, seg_d, mask))
        seg_r = seg_r / cfg.action_length
        # The last decision of a window row has no successor in the window.
        n_from_here = jnp.flip(jnp.cumsum(jnp.flip(dp.astype(jnp.int32), -1), -1), -1)
        later_decision = n_from_here - dp.astype(jnp.int32) > 0
        mask = mask & (later_decision | seg_d)

        if cfg.stored_prev_alloc:
            last_alloc = index_to_onehot(w.prev_alloc, NT).astype(bool)
        else:
            last_alloc = self._reconstruct_last_alloc(w, dp)

        idx = jnp.nonzero(dp.reshape(-1), size=R, fill_value=0)[0]
        exists = jnp.arange(R) < jnp.minimum(jnp.sum(dp), R)

        def pick(x: jax.Array) -> jax.Array:
            return x.reshape((B * T,) + x.shape[2:])[idx]

        return MetaBatch(
            entities=pick(w.entities),
            entity_mask=pick(w.entity_mask.astype(bool)),
            entity2task_mask=pick(w.entity2task_mask.astype(bool)),
            task_mask=pick(w.task_mask.astype(bool)),
            avail_actions=pick(w.avail_actions),
            last_alloc=pick(last_alloc),
            alloc=pick(stored_alloc(w)),
            seg_r=pick(seg_r),
            seg_d=pick(seg_d),
            mask=pick(mask) & exists,
            t_added=pick(w.t_added.astype(jnp.int32)),
            exists=exists,
        )

    def _reconstruct_last_alloc(self, w: Window, dp: jax.Array) -> jax.Array:
        """The original's last_alloc (spec 3.8 step 5, F8): zero at window row 0 -> [B,T,NA,NT]."""
        alloc = stored_alloc(w)

        def fwd(was_reset, x):
            prev_alloc, prev_reset, d = x
            was_reset = was_reset | prev_reset
            out = prev_alloc & ~was_reset[:, None, None]
            return was_reset & ~d, out

        xs = (jnp.swapaxes(alloc[:, :-1], 0, 1), jnp.swapaxes(w.reset[:, :-1], 0, 1),
              jnp.swapaxes(dp[:, 1:], 0, 1))
        _, rest = jax.lax.scan(fwd, jnp.zeros(w.reset.shape[:1], bool), xs)
        return jnp.concatenate([jnp.zeros_like(alloc[:, :1]), jnp.swapaxes(rest, 0, 1)], 1)

    # ---------------------------------------------------------------------- learning
    def propose_batch(self, pi: Any, critic: Any, key: jax.Array, meta: MetaBatch
                      ) -> Proposals:
        """Fresh proposals at every row with one policy and one critic permutation."""
        k_pi, k_q, k_g = jax.random.split(key, 3)
        pi_perm, critic_perm = self.draw_perm(k_pi), self.draw_perm(k_q)
        gumbel = self._candidates(meta.exists.shape, k_g)
        f = jax.vmap(self.propose_row, in_axes=(None, None, 0, None, None, 0, 0, 0, 0, 0))
        props = f(pi, critic, gumbel, pi_perm, critic_perm, meta.entities, meta.entity_mask,
                  meta.entity2task_mask, meta.task_mask, meta.last_alloc)
        # The permutations are per call, not per row.
        return props.replace(pi_perm=pi_perm, critic_perm=critic_perm)

    def target_values(self, state: HighState, meta: MetaBatch, best_alloc: jax.Array,
                      perm: jax.Array) -> jax.Array:
        """Denormalised target-critic values [R] of best_alloc [R, NA, NT]."""
        f = jax.vmap(self.critic_value, in_axes=(None, 0, 0, 0, 0, None))
        q = f(state.target_critic, meta.entities, meta.entity_mask, meta.entity2task_mask,
              best_alloc, perm)
        return denormalise(state.target_critic_stats, q)

    def critic_targets(self, state: HighState, meta: MetaBatch, key: jax.Array
                       ) -> tuple[jax.Array, jax.Array, Proposals, jax.Array]:
        """Spec 3.9 / 3.11 (b) -> (Y [R], loss mask [R] = mask(r)·exists(r+1), proposals,
        target-critic permutation), all with pre-update parameters and no gradient."""
        cfg = self.cfg
        k_prop, k_t = jax.random.split(key)
        props = self.propose_batch(state.pi, state.critic, k_prop, meta)
        best_alloc = jnp.take_along_axis(
            props.allocs, props.best[:, None, None, None], axis=1)[:, 0]
        t_perm = self.draw_perm(k_t)
        v = self.target_values(state, meta, best_alloc, t_perm)
        v_next = jnp.concatenate([v[1:], jnp.zeros_like(v[:1])])
        exists_next = jnp.concatenate([meta.exists[1:], jnp.zeros_like(meta.exists[:1])])
        # gamma per decision, not gamma^k (F11).
        y = meta.seg_r + cfg.gamma * (1.0 - meta.seg_d.astype(jnp.float32)) * v_next
        m = meta.mask & meta.exists & exists_next
        return jax.lax.stop_gradient(y), m, props, t_perm

    def recency(self, t_added: jax.Array, t_env: jax.Array | int) -> jax.Array:
        """w(r) = max(0, 1 - (t_env - t_added)/decay_old) [R]."""
        age = jnp.asarray(t_env, jnp.float32) - t_added.astype(jnp.float32)
        return jnp.maximum(0.0, 1.0 - age / self.cfg.decay_old)

    def critic_loss(self, critic_params: Any, meta: MetaBatch, z: jax.Array, weight: jax.Array,
                    perm: jax.Array) -> jax.Array:
        """Σ weight^p·(Q - Z)² / Σ weight with Q the critic on the executed allocations;
        p = 2 as the original computes it (E4), p = 1 for loss_weighting='spec'."""
        f = jax.vmap(self.critic_value, in_axes=(None, 0, 0, 0, 0, None))
        q = f(critic_params, meta.entities, meta.entity_mask, meta.entity2task_mask,
              meta.alloc, perm)
        err2 = jnp.where(weight > 0, (q - z) ** 2, 0.0)
        num_w = weight * weight if self.cfg.loss_weighting == "original" else weight
        return _safe_div(jnp.sum(num_w * err2), jnp.sum(weight))

    def amort_weight(self, meta: MetaBatch, t_env: jax.Array | int) -> jax.Array:
        """Per-row weight of L_amort [R]: mask·exists, times the recency weight w on every
        existing row but the last for loss_weighting='original' (E3)."""
        m = (meta.mask & meta.exists).astype(jnp.float32)
        if self.cfg.loss_weighting == "spec":
            return m
        exists_next = jnp.concatenate([meta.exists[1:], jnp.zeros_like(meta.exists[:1])])
        w = jnp.where(exists_next, self.recency(meta.t_added, t_env), 1.0)
        return m * w

    def policy_loss(self, pi_params: Any, meta: MetaBatch, props: Proposals,
                    row_weight: jax.Array | None = None
                    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Spec 3.10 by teacher forcing the sampled candidates -> (L_π, (L_amort, entropy)).

        `row_weight` [R] weights L_amort's rows (default mask·exists, the spec's form; the
        update passes `amort_weight`)."""
        cfg = self.cfg
        na = cfg.n_agents

        def row(ent, em, e2t, tm, last, allocs):
            enc = encode(self.policy, pi_params, ent, em, e2t, last, props.pi_perm)
            active = ~em[:na]
            dec = jax.vmap(
                lambda a: decode(self.policy, pi_params, enc, tm, active, alloc=a))(allocs)
            return dec.log_prob, dec.entropy

        log_prob, entropy = jax.vmap(row)(meta.entities, meta.entity_mask,
                                          meta.entity2task_mask, meta.task_mask,
                                          meta.last_alloc, props.allocs)
        best_lp = jnp.take_along_axis(log_prob, props.best[:, None], axis=1)[:, 0]
        m = (meta.mask & meta.exists).astype(jnp.float32) if row_weight is None else row_weight
        amort = _safe_div(-jnp.sum(m * best_lp), jnp.sum(m))
        ex = meta.exists.astype(jnp.float32)
        sampled = entropy[:, : cfg.n_proposals]  # a greedy extra candidate is not regularised
        mean_ent = _safe_div(jnp.sum(ex[:, None] * sampled), jnp.sum(ex) * cfg.n_proposals)
        return amort - cfg.entropy_coef * mean_ent, (amort, mean_ent)

    def update(self, state: HighState, w: Window, key: jax.Array, t_env: jax.Array | int
               ) -> tuple[HighState, dict[str, jax.Array]]:
        """One high-level update on a window batch [B, T] (spec 3.8-3.11 steps (a)-(d))."""
        return self.update_meta(state, self.make_meta(w), key, t_env)

    def update_meta(self, state: HighState, meta: MetaBatch, key: jax.Array,
                    t_env: jax.Array | int) -> tuple[HighState, dict[str, jax.Array]]:
        """`update` on an already built MetaBatch."""
        k_targets, k_q = jax.random.split(key)
        y, m, props, _ = self.critic_targets(state, meta, k_targets)

        # Pop-Art first, then the forward with the rescaled affine (F2, as the low level).
        crit = state.critic["params"]
        if self.cfg.popart:
            stats, a, b, z = popart_update(state.critic_stats, crit["popart_a"],
                                           crit["popart_b"], y, m)
        else:  # raw targets; the critic's output affine stays at its initial identity
            stats, a, b, z = state.critic_stats, crit["popart_a"], crit["popart_b"], y
        critic = dict(state.critic, params=dict(crit, popart_a=a, popart_b=b))
        weight = m.astype(jnp.float32) * self.recency(meta.t_added, t_env)
        q_perm = self.draw_perm(k_q)
        q_loss, q_grads = jax.value_and_grad(self.critic_loss)(critic, meta, z, weight, q_perm)
        q_updates, critic_opt = self.optimizer.update(q_grads, state.critic_opt_state, critic)
        critic = optax.apply_updates(critic, q_updates)

        (_, (amort, mean_ent)), pi_grads = jax.value_and_grad(self.policy_loss, has_aux=True)(
            state.pi, meta, props, self.amort_weight(meta, t_env))
        pi_updates, pi_opt = self.optimizer.update(pi_grads, state.pi_opt_state, state.pi)
        pi = optax.apply_updates(state.pi, pi_updates)

        metrics = {
            "losses/alloc_q_loss": q_loss,
            "losses/alloc_amort_loss": amort,
            "losses/alloc_entropy": mean_ent,
            "train_metrics/alloc_q_grad_norm": optax.tree.norm(q_grads),
            "train_metrics/alloc_pi_grad_norm": optax.tree.norm(pi_grads),
            **self.alloc_metrics(meta, props),
        }
        new = state.replace(pi=pi, critic=critic, pi_opt_state=pi_opt,
                            critic_opt_state=critic_opt, critic_stats=stats)
        return new, metrics

    def alloc_metrics(self, meta: MetaBatch, props: Proposals) -> dict[str, jax.Array]:
        """Spec 4.7 allocation statistics of the critic-best proposals over existing rows."""
        cfg = self.cfg
        na, n_p = cfg.n_agents, cfg.n_proposals
        ex = meta.exists.astype(jnp.float32)
        n_rows = jnp.sum(ex)
        best = jnp.take_along_axis(props.allocs, props.best[:, None, None, None], axis=1)[:, 0]

        best_prob = _safe_div(jnp.sum(ex[:, None] * props.best_prob[:, :n_p]), n_rows * n_p)

        active = ~meta.entity_mask[:, :na]
        changed = jnp.argmax(meta.last_alloc, -1) != jnp.argmax(best, -1)
        per_row = _safe_div(jnp.sum(changed & active, -1).astype(jnp.float32),
                            jnp.sum(active, -1).astype(jnp.float32))
        has_prev = (jnp.any(meta.last_alloc, axis=(-2, -1)) & meta.exists).astype(jnp.float32)
        perc_changed = _safe_div(jnp.sum(per_row * has_prev), jnp.sum(has_prev))

        member = jax.vmap(membership)(meta.entity2task_mask, best)
        n_ag = jnp.sum(best, axis=1).astype(jnp.float32)
        n_nn = jnp.sum(member[:, na:], axis=1).astype(jnp.float32)
        n_active_tasks = jnp.sum(~meta.task_mask, -1).astype(jnp.float32)
        conc = _safe_div(jnp.sum(jnp.abs(n_ag - n_nn), -1), n_active_tasks)
        concentration = _safe_div(jnp.sum(ex * conc), n_rows)

        has_agents = jnp.any(props.allocs[:, :n_p], axis=-2)  # [R, NP, NT]
        empty_task = jnp.any(~meta.task_mask[:, None, :] & ~has_agents, -1)
        no_agents = _safe_div(jnp.sum(ex[:, None] * empty_task), n_rows * n_p)
        return {
            "alloc_metrics/best_prob": best_prob,
            "alloc_metrics/perc_ag_changed": perc_changed,
            "alloc_metrics/ag_task_concentration": concentration,
            "alloc_metrics/any_task_no_agents_pi": no_agents,
        }
