"""Low-level value learner: attention QMIX, flat (A-QMIX) or one mixture per subtask (spec 2).

Acting (`act`) and learning (`update`) share the utility function `agent_q`; the learner is
1-step double Q-learning with hard target networks and Pop-Art on the mixer (spec 2.5, 2.6).
Two switches add the flat baselines of spec 5: REFIL's imagined-group loss (`imagine`, spec
2.8) and COPA's coach-player strategies (`copa`, spec 5.4).

Acting protocol. Without COPA the learner is stateless: it has no `init_carry` (the attribute is
None) and `act(params, key, obs, last_action, alloc, eps) -> actions [E, NA]`. With COPA,
`init_carry(E)` gives the held strategies z [E, NA, DA] (zeros) and
`act(..., eps, carry, decision) -> (actions, carry)`: the coach redraws z where `decision` [E]
is set and holds it otherwise; `eps == 0` is test mode and uses the coach mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from alma_jax.avail import parse_avail
from alma_jax.batching import split_map
from alma_jax.buffer import Window, index_to_onehot, loss_mask, stored_alloc, subtask_loss_mask
from alma_jax.nn.agent import EntityAttentionAgent, entity_inputs
from alma_jax.nn.attention import both_active_block, group_block, membership
from alma_jax.nn.copa import CopaCoach, CopaRecognition, sample_strategy, vi_terms
from alma_jax.nn.mixers import MIXINGS, FlexQMixer
from alma_jax.nn.precision import at_precision, check_precision
from alma_jax.optim import OPTIMIZERS, make_optimizer
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
    mixer: str = "qmix"  # 'qmix' (paper) | 'vdn' (sum of utilities: a diagnostic baseline)
    optimizer: str = "rmsprop"  # 'rmsprop' (paper, spec 2.10) | 'adam'
    dq_select_with_next_alloc: bool = True  # F3: replicate the original
    # Beyond the paper (which is 1-step, spec 2.6): uncorrected n-step returns inside the
    # window, cut at episode ends, subtask ends and rows whose subtask has no agents.
    n_step: int = 1
    # Pop-Art on the mixer (spec 2.5; the paper's setting). Off: the mixer's pre-affine output
    # y is Q_tot and targets stay raw, as in the original's `popart: False`.
    popart: bool = True
    # REFIL (spec 2.8): loss = (1 - im_lambda) L_Q + im_lambda L_im
    imagine: bool = False
    im_lambda: float = 0.5
    imagine_respect_subtask: bool = False  # F4: True also ORs the subtask mask into agent views
    imagine_row_activity: bool = True  # F5: mixer "both active" from row t (False: window row 0)
    # COPA (spec 5.4)
    copa: bool = False
    copa_vi_lambda: float = 5e-5
    mask_copa: bool = False  # with an allocation: group_block attention instead of TaskEmbed
    precision: str = "fp32"  # the networks' contractions: 'fp32' | 'bf16' (nn/precision.py)
    # The window batch's network passes as this many independent pieces (alma_jax/batching.py):
    # lets XLA:CPU run them on separate cores; same mathematics.
    update_splits: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.im_lambda <= 1.0:
            raise ValueError(f"im_lambda must lie in [0, 1], got {self.im_lambda}")
        if self.mixer not in MIXINGS:
            raise ValueError(f"mixer must be one of {list(MIXINGS)}, got {self.mixer!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {self.n_step}")
        check_precision(self.precision)
        if self.copa_vi_lambda < 0.0:
            raise ValueError(f"copa_vi_lambda must be >= 0, got {self.copa_vi_lambda}")


@struct.dataclass
class LowState:
    """Parameters, optimiser state, Pop-Art statistics and their target copies.

    `params` = {"agent", "mixer"} plus {"coach", "recog"} with COPA, so the one optimiser and
    the hard target copy cover the COPA networks too (spec 2.10, 4.5).
    """

    params: Any
    opt_state: Any
    stats: PopArtStats
    target_params: Any
    target_stats: PopArtStats


class Strategies(NamedTuple):
    """COPA strategies over a window, each held from its decision row: [B, T, NA, DA].

    Rows before a window's first decision row are zero (F16). `z_views` [2, B, T, NA, DA] are
    the strategies for REFIL's within / interaction views (None without REFIL).
    """

    z: jax.Array
    mu: jax.Array
    logvar: jax.Array
    z_views: jax.Array | None = None


class LossOut(NamedTuple):
    """What one step's loss computed: the loss, Q_tot and TD errors [B, T-1, K] of the taken
    actions, raw targets y, mask m (float) and its count n, the new Pop-Art statistics and
    affine (a', b') and the logged loss terms."""

    loss: jax.Array
    qtot: jax.Array
    err: jax.Array
    y: jax.Array
    mask: jax.Array
    n: jax.Array
    stats: PopArtStats
    popart_a: jax.Array
    popart_b: jax.Array
    aux: dict


class ImaginedGroups(NamedTuple):
    """REFIL's draw for a window batch: groups [B, NE] (True = group B), active0 [B, NE]."""

    groups: jax.Array
    active0: jax.Array


# ------------------------------------------------------------------------- pure helpers
def draw_groups(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """REFIL group labels [*shape[:-1], NE] bool: one p ~ U(0,1) per leading index, then
    every entity of that index is in group B with probability p (spec 2.8)."""
    k_p, k_g = jax.random.split(key)
    p = jax.random.uniform(k_p, shape[:-1] + (1,))
    return jax.random.bernoulli(k_g, p, shape)


def imagined_views(groups: jax.Array, active0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """groups, active0 [NE] bool -> (within, interaction) blocked masks [NE, NE] bool.

    Only entities active at window row 0 join a group. Within view: blocked unless i and j are
    in the same group (self-pairs of members allowed); interaction view: its complement.
    """
    in_groups = jnp.stack([active0 & ~groups, active0 & groups], axis=-1)  # [NE, 2]
    within = group_block(in_groups)
    return within, ~within


def nstep_targets(r: jax.Array, d: jax.Array, v_next: jax.Array, mask: jax.Array,
                  gamma: float, n_step: int) -> jax.Array:
    """n-step targets [B, T-1, K] from 1-step pieces along axis 1.

    r, d, v_next: reward, termination and bootstrap value V(t+1) of transition t; mask: the
    loss mask of transition t. G_1 = r + g(1-d)V(t+1); G_j(t) = r + g(1-d) G_{j-1}(t+1) when
    transition t+1 is a valid continuation (its mask is on, so same episode, subtask still
    open and staffed), else it bootstraps from V(t+1) as the 1-step target does.
    """
    cont = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1).astype(bool)
    g = r + gamma * (1.0 - d) * v_next
    for _ in range(n_step - 1):
        later = jnp.concatenate([g[:, 1:], jnp.zeros_like(g[:, :1])], axis=1)
        g = r + gamma * (1.0 - d) * jnp.where(cont, later, v_next)
    return g


def hold_at_decisions(x: jax.Array, decision: jax.Array) -> jax.Array:
    """x [B, T, ...], decision [B, T] bool -> [B, T, ...]: row t holds x at the latest decision
    row <= t, zeros before the first one (F16). Gradients flow to the decision rows only."""
    t = jnp.arange(x.shape[1])
    last = jax.lax.cummax(jnp.where(decision, t, -1), axis=1)  # [B, T]
    held = jax.vmap(lambda xb, ib: xb[ib])(x, jnp.maximum(last, 0))
    valid = (last >= 0).reshape(last.shape + (1,) * (x.ndim - 2))
    return jnp.where(valid, held, 0.0)


class QMixLearner:
    """Networks and pure functions of the low-level learner for one `QMixConfig`."""

    def __init__(self, cfg: QMixConfig):
        self.cfg = cfg
        self.agent = at_precision(EntityAttentionAgent(
            cfg.n_agents, cfg.n_actions, cfg.embed_dim, cfg.n_heads, cfg.hidden_dim,
            subtask_cond=cfg.subtask_cond,
        ), cfg.precision)
        self.mixer = at_precision(FlexQMixer(
            cfg.n_agents, cfg.mix_dim, cfg.hyper_dim, cfg.n_heads, subtask_cond=cfg.subtask_cond,
            softmax_mixing_weights=cfg.softmax_mixing_weights, mixing=cfg.mixer,
        ), cfg.precision)
        self.optimizer = make_optimizer(lr=cfg.lr, clip=cfg.grad_clip, kind=cfg.optimizer)
        # mask_copa only applies with an allocation (spec 5.4): groups come from the mask then.
        self._copa_group_mask = cfg.mask_copa and cfg.subtask_cond is not None
        copa_sizes = dict(n_agents=cfg.n_agents, embed_dim=cfg.embed_dim, n_heads=cfg.n_heads,
                          hidden_dim=cfg.hidden_dim, task_embed=not self._copa_group_mask)
        self.coach = at_precision(CopaCoach(**copa_sizes), cfg.precision)
        self.recog = at_precision(CopaRecognition(**copa_sizes), cfg.precision)
        # The rollout and trainer call a learner stateful iff `init_carry` is not None.
        self.init_carry: Callable[[int], jax.Array] | None = (
            self._copa_init_carry if cfg.copa else None)

    # ----------------------------------------------------------------- networks (one row)
    def _member(self, entity2task_mask, alloc):
        if self.cfg.subtask_cond is None:
            return None
        return membership(entity2task_mask, alloc)

    def agent_q(self, agent_params, entities, obs_mask, entity_mask, entity2task_mask,
                last_action, alloc, z=None, subtask_mask: bool = True):
        """Utilities [NA, NACT] of one row; last_action [NA] index (-1 none), alloc [NA, NT],
        z [NA, DA] (COPA strategy or None); obs_mask may be any key mask [NA or NE, NE]."""
        x = entity_inputs(entities, index_to_onehot(last_action, self.cfg.n_actions))
        member = self._member(entity2task_mask, alloc)
        return self.agent.apply(agent_params, x, obs_mask, entity_mask, member, None, z,
                                subtask_mask)

    def mix(self, mixer_params, q, entities, entity_mask, entity2task_mask, last_action, alloc,
            w1_blocked=None):
        """(y [K], Q_tot [K]) of one row from chosen utilities q [NA] (or [2·NA] with REFIL's
        first-layer view masks w1_blocked [2, NA, NE]). Without Pop-Art, Q_tot is y (the
        affine stays in the parameter tree, unused, so it gets zero gradients)."""
        x = entity_inputs(entities, index_to_onehot(last_action, self.cfg.n_actions))
        member = self._member(entity2task_mask, alloc)
        y, qtot = self.mixer.apply(mixer_params, q, x, entity_mask, member, w1_blocked)
        return y, (qtot if self.cfg.popart else y)

    def _copa_inputs(self, entity_mask, entity2task_mask, alloc):
        """COPA attention mask [NA, NE] and TaskEmbed membership [NE, NT] (None if unused)."""
        na = self.cfg.n_agents
        if self.cfg.subtask_cond is None:
            # Flat methods: the env's stored membership (its agent rows included).
            member = ~entity2task_mask.astype(bool)
        else:
            member = membership(entity2task_mask, alloc)
        if self._copa_group_mask:
            return group_block(member)[:na], None
        return both_active_block(entity_mask.astype(bool), na), member

    def coach_row(self, coach_params, entities, entity_mask, entity2task_mask, alloc, perm,
                  view=None):
        """Coach (mu, logvar) [NA, DA] of one row; perm [NT] TaskEmbed permutation; view
        [NA, NE] an extra blocked mask (REFIL's imagined groups) or None."""
        blocked, member = self._copa_inputs(entity_mask, entity2task_mask, alloc)
        if view is not None:
            blocked = blocked | view
        active = ~entity_mask.astype(bool)[: self.cfg.n_agents]
        return self.coach.apply(coach_params, entities, blocked, active, member, perm)

    def recog_row(self, recog_params, entities, entity_mask, entity2task_mask, alloc, actions,
                  perm):
        """Recognition (mu, logvar) [NA, DA] of one row from the executed actions [NA]."""
        blocked, member = self._copa_inputs(entity_mask, entity2task_mask, alloc)
        active = ~entity_mask.astype(bool)[: self.cfg.n_agents]
        onehot = index_to_onehot(actions, self.cfg.n_actions)
        return self.recog.apply(recog_params, entities, onehot, blocked, active, member, perm)

    def draw_perm(self, key: jax.Array) -> jax.Array:
        """TaskEmbed permutation [NT]: one per network call, shared by its batch (spec 3.2)."""
        return jax.random.permutation(key, self.cfg.n_tasks)

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
        if cfg.copa:
            # fold_in keeps the agent and mixer draws identical to a run without COPA
            blocked, cmember = self._copa_inputs(example.entity_mask, example.entity2task_mask,
                                                 alloc)
            active = ~example.entity_mask.astype(bool)[: cfg.n_agents]
            perm = jnp.arange(cfg.n_tasks)
            params["coach"] = self.coach.init(jax.random.fold_in(key, 1), example.entities,
                                              blocked, active, cmember, perm)
            onehot = jnp.zeros((cfg.n_agents, cfg.n_actions))
            params["recog"] = self.recog.init(jax.random.fold_in(key, 2), example.entities,
                                              onehot, blocked, active, cmember, perm)
        return LowState(params=params, opt_state=self.optimizer.init(params),
                        stats=popart_init(), target_params=params, target_stats=popart_init())

    # ---------------------------------------------------------------------------- acting
    def _copa_init_carry(self, n_envs: int) -> jax.Array:
        """Held strategies at episode start: zeros [E, NA, DA] (row 0 is always a decision)."""
        return jnp.zeros((n_envs, self.cfg.n_agents, self.cfg.hidden_dim), jnp.float32)

    def coach_act(self, coach_params, key, obs, alloc, eps, carry, decision):
        """New held strategies [E, NA, DA]: redrawn where decision [E], else carry [E, NA, DA].

        Test mode (eps == 0) takes the mean; one TaskEmbed permutation for the whole batch.
        """
        k_perm, k_noise = jax.random.split(key)
        perm = self.draw_perm(k_perm)
        mu, logvar = jax.vmap(self.coach_row, in_axes=(None, 0, 0, 0, 0, None))(
            coach_params, obs.entities, obs.entity_mask, obs.entity2task_mask, alloc, perm)
        z = sample_strategy(mu, logvar, jax.random.normal(k_noise, mu.shape))
        z = jnp.where(jnp.asarray(eps) == 0.0, mu, z)
        return jnp.where(decision[:, None, None], z, carry)

    def act(self, params, key, obs, last_action, alloc, eps, carry=None, decision=None):
        """Epsilon-greedy actions for a batch of observations (spec 2.2).

        obs [E] batch, last_action [E, NA], alloc [E, NA, NT] -> actions [E, NA] when
        `carry` is None (stateless), else (actions, carry'): COPA's held strategies
        carry [E, NA, DA] are redrawn by the coach where decision [E] is set (spec 5.4).
        A COPA learner called without a carry acts with no strategy (z = 0).
        """
        z = None
        if carry is not None:
            # fold_in: the epsilon-greedy draws stay those of the stateless path
            z = self.coach_act(params["coach"], jax.random.fold_in(key, 1), obs, alloc, eps,
                               carry, decision)
        q = jax.vmap(self.agent_q, in_axes=(None, 0, 0, 0, 0, 0, 0, 0))(
            params["agent"], obs.entities, obs.obs_mask, obs.entity_mask, obs.entity2task_mask,
            last_action, alloc, z,
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
        actions = jnp.where(explore, random, greedy).astype(jnp.int32)
        return actions if carry is None else (actions, z)

    # -------------------------------------------------------------------------- learning
    def _alloc(self, w: Window) -> jax.Array:
        if self.cfg.subtask_cond:
            return stored_alloc(w)
        return jnp.zeros(w.actions.shape + (self.cfg.n_tasks,), bool)

    def _utilities(self, agent_params, w: Window, alloc, z=None, key_mask=None,
                   subtask_mask: bool = True):
        """Agent utilities over a window batch: [B, T, NA, NACT].

        z [B, T, NA, DA] COPA strategies; key_mask [B, T, NA, NE] replaces w.obs_mask.
        """
        obs_mask = w.obs_mask if key_mask is None else key_mask

        def row(entities, om, em, e2t, la, al, zz):
            return self.agent_q(agent_params, entities, om, em, e2t, la, al, zz, subtask_mask)

        return split_map(jax.vmap(jax.vmap(row)), self.cfg.update_splits)(
            w.entities, obs_mask, w.entity_mask, w.entity2task_mask, w.last_action, alloc, z)

    def _mixed(self, mixer_params, q, w: Window, alloc, w1_blocked=None):
        def row(qq, entities, em, e2t, la, al, wb):
            return self.mix(mixer_params, qq, entities, em, e2t, la, al, wb)

        return split_map(jax.vmap(jax.vmap(row)), self.cfg.update_splits)(
            q, w.entities, w.entity_mask, w.entity2task_mask, w.last_action, alloc, w1_blocked)

    # REFIL ------------------------------------------------------------------------------
    def imagined_groups(self, key: jax.Array, w: Window) -> ImaginedGroups:
        """One group draw per window (constant over time), activity of window row 0."""
        active0 = ~w.entity_mask[:, 0].astype(bool)
        return ImaginedGroups(draw_groups(key, active0.shape), active0)

    def refil_row_masks(self, groups, active0, obs_mask, entity_mask, entity2task_mask, alloc):
        """One row -> (agent views [2, NA, NE], mixer first-layer views [2, NA, NE]) blocked.

        View 0 = within groups, view 1 = interaction. Agent views add the env's obs_mask (the
        agent itself adds inactive keys, F1); mixer views add "both active" (row t's
        activity, or window row 0's with imagine_row_activity=False, F5) and, in 'mask' mode,
        the subtask groups of row t.
        """
        na = self.cfg.n_agents
        views = jnp.stack(imagined_views(groups, active0))[:, :na]  # [2, NA, NE]
        agent = views | obs_mask.astype(bool)[None, :na]
        active = ~entity_mask.astype(bool) if self.cfg.imagine_row_activity else active0
        mixer = views | both_active_block(~active, na)[None]
        if self.cfg.subtask_cond == "mask":
            mixer = mixer | group_block(membership(entity2task_mask, alloc))[None, :na]
        return agent, mixer

    def _refil_masks(self, im: ImaginedGroups, w: Window, alloc):
        """[B, T, 2, NA, NE] agent and mixer view masks of a window batch."""
        per_row = jax.vmap(self.refil_row_masks, in_axes=(None, None, 0, 0, 0, 0))
        return jax.vmap(per_row)(im.groups, im.active0, w.obs_mask, w.entity_mask,
                                 w.entity2task_mask, alloc)

    # COPA -------------------------------------------------------------------------------
    def copa_strategies(self, coach_params, w: Window, alloc, key: jax.Array,
                        im: ImaginedGroups | None = None) -> Strategies:
        """Coach run on every row, sampled, then held from each decision row (spec 5.4).

        With REFIL groups `im`, the two imagined views get their own strategies (coach
        attention additionally blocked by the view, fresh noise), held the same way; `z` does
        not depend on `im`. `key` splits into (TaskEmbed permutation, noise, view noise).
        """
        k_perm, k_noise, k_views = jax.random.split(key, 3)
        perm = self.draw_perm(k_perm)

        def coach(view):
            f = jax.vmap(self.coach_row, in_axes=(None, 0, 0, 0, 0, None, 0))
            return jax.vmap(f, in_axes=(None, 0, 0, 0, 0, None, 0))(
                coach_params, w.entities, w.entity_mask, w.entity2task_mask, alloc, perm, view)

        mu, logvar = coach(None)
        z = sample_strategy(mu, logvar, jax.random.normal(k_noise, mu.shape))
        dec = w.hier_decision.astype(bool)
        z_views = None
        if im is not None:
            na, T = self.cfg.n_agents, w.entity_mask.shape[1]
            views = jax.vmap(lambda g, a: jnp.stack(imagined_views(g, a))[:, :na])(
                im.groups, im.active0)  # [B, 2, NA, NE]
            zs = []
            for v, k in enumerate(jax.random.split(k_views, 2)):
                view = jnp.broadcast_to(views[:, None, v], (views.shape[0], T) + views.shape[2:])
                mu_v, logvar_v = coach(view)
                zs.append(hold_at_decisions(
                    sample_strategy(mu_v, logvar_v, jax.random.normal(k, mu_v.shape)), dec))
            z_views = jnp.stack(zs)
        return Strategies(hold_at_decisions(z, dec), hold_at_decisions(mu, dec),
                          hold_at_decisions(logvar, dec), z_views)

    def copa_vi(self, recog_params, w: Window, alloc, strat: Strategies, key: jax.Array,
                row_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(vi_loss, entropy_loss) over rows 0..T-2 with the flat mask row_mask [B, T-1]."""
        perm = self.draw_perm(key)
        f = jax.vmap(self.recog_row, in_axes=(None, 0, 0, 0, 0, 0, None))
        q_mu, q_logvar = jax.vmap(f, in_axes=(None, 0, 0, 0, 0, 0, None))(
            recog_params, w.entities, w.entity_mask, w.entity2task_mask, alloc, w.actions, perm)
        active = ~w.entity_mask[..., : self.cfg.n_agents].astype(bool)
        cut = lambda x: x[:, :-1]  # noqa: E731
        return vi_terms(cut(strat.z), cut(strat.logvar), cut(q_mu), cut(q_logvar), cut(active),
                        row_mask)

    # targets and update -----------------------------------------------------------------
    def targets(self, state: LowState, w: Window, z=None, z_target=None):
        """Raw targets Y [B, T-1, K], loss mask [B, T-1, K] and the allocation (spec 2.6, 2.7).

        COPA: z, z_target [B, T, NA, DA] are the held strategies of the online coach (for the
        double-Q argmax) and of the target coach (`copa_strategies`).
        """
        if self.cfg.copa and (z is None or z_target is None):
            raise ValueError("copa=True: targets need the online and target strategies")
        alloc = self._alloc(w)
        q_select = self._select_utilities(state.params["agent"], w, alloc, z)
        y, mask = self._targets_from(state, w, alloc, q_select, z_target)
        return y, mask, alloc

    def _select_utilities(self, agent_params, w: Window, alloc, z=None):
        """Online utilities of rows t+1 [B, T-1, NA, NACT] for the double-Q argmax: with row
        t+1's own allocation (F3) or, with dq_select_with_next_alloc=False, row t's."""
        nxt = jax.tree.map(lambda x: x[:, 1:], w)
        sel_alloc = alloc[:, 1:] if self.cfg.dq_select_with_next_alloc else alloc[:, :-1]
        return self._utilities(agent_params, nxt, sel_alloc, None if z is None else z[:, 1:])

    def _targets_from(self, state: LowState, w: Window, alloc, q_select, z_target=None):
        """(Y, mask) given the online utilities `q_select` of rows t+1 (`_select_utilities`)."""
        cfg = self.cfg
        # Rows t+1 evaluated with the allocation of row t ("what the agent was pursuing").
        alloc_prev = alloc[:, :-1]
        nxt = jax.tree.map(lambda x: x[:, 1:], w)
        nxt_zt = None if z_target is None else z_target[:, 1:]
        q_target_next = self._utilities(state.target_params["agent"], nxt, alloc_prev, nxt_zt)
        avail = jax.vmap(jax.vmap(parse_avail, in_axes=(0, 0, None)), in_axes=(0, 0, None))(
            nxt.avail_actions, alloc_prev if cfg.subtask_cond else None,
            cfg.mask_subtask_actions)
        greedy = jnp.argmax(jnp.where(avail, q_select, NEG), -1)
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
        y = nstep_targets(r, d, v_next, mask, cfg.gamma, cfg.n_step)
        return jax.lax.stop_gradient(y), mask

    def update(self, state: LowState, w: Window,
               key: jax.Array | None = None) -> tuple[LowState, dict[str, jax.Array]]:
        """One gradient step on a window batch; Pop-Art statistics updated first (F2).

        `key` drives REFIL's group draws and COPA's strategy noise and TaskEmbed
        permutations; required when either is on, unused otherwise. It is split into
        (groups, online coach, target coach, recognition net) keys.
        """
        grads, out = self.loss_and_grads(state, w, key)
        # the step starts from the rescaled affine (a', b'), as the loss saw it
        params = jax.tree.map(lambda x: x, state.params)
        params["mixer"]["params"] = dict(params["mixer"]["params"], popart_a=out.popart_a,
                                         popart_b=out.popart_b)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        m, n = out.mask, out.n
        metrics = dict(out.aux)
        metrics.update({
            "train_metrics/q_grad_norm": optax.tree.norm(grads),
            "train_metrics/td_error_abs": jnp.sum(jnp.abs(out.err)) / n,
            "train_metrics/q_taken_mean": jnp.sum(out.qtot * m) / n,
            "train_metrics/target_mean": jnp.sum(out.y * m) / n,
        })
        return state.replace(params=params, opt_state=opt_state, stats=out.stats), metrics

    def loss_and_grads(self, state: LowState, w: Window, key: jax.Array | None = None):
        """(gradients, LossOut) of one step's loss at `state.params` with the rescaled Pop-Art
        affine; `update` applies them (arguments as `update`).

        One online agent pass over all T rows serves both the loss (rows 0..T-2) and the
        double-Q argmax (rows 1..T-1, under stop_gradient): with F3's default both evaluate
        row t under its own allocation, and the agents' utilities do not depend on Pop-Art.
        The targets, and so the new Pop-Art statistics and affine (a', b'), are therefore
        computed inside the differentiated function; the loss sees exactly a', b' and its
        gradient with respect to the affine is the one taken at a', b' (spec F2's order).
        """
        cfg = self.cfg
        if (cfg.imagine or cfg.copa) and key is None:
            raise ValueError("update needs a key when imagine or copa is on")
        alloc = self._alloc(w)
        im = None
        if key is not None:
            k_im, k_coach, k_target, k_recog = jax.random.split(key, 4)
        if cfg.imagine:
            im = self.imagined_groups(k_im, w)
        z_target = None
        if cfg.copa:
            z_target = self.copa_strategies(state.target_params["coach"], w, alloc,
                                            k_target).z
        cur = jax.tree.map(lambda x: x[:, :-1], w)
        cur_alloc = alloc[:, :-1]
        flat_mask = loss_mask(w)[:, :-1]
        if cfg.imagine:
            agent_views, mixer_views = self._refil_masks(im, cur, cur_alloc)
        sg = jax.lax.stop_gradient

        def chosen(q):
            return jnp.take_along_axis(q, cur.actions[..., None], -1)[..., 0]

        def loss_fn(p):
            # one key for the loss and the argmax: both see the same strategies (`z` does not
            # depend on REFIL's groups)
            strat = self.copa_strategies(p["coach"], w, alloc, k_coach, im) if cfg.copa \
                else None
            z_all = None if strat is None else strat.z
            q_all = self._utilities(p["agent"], w, alloc, z_all)  # [B, T, NA, NACT]
            if cfg.dq_select_with_next_alloc:
                q_select = sg(q_all[:, 1:])
            else:  # rows t+1 under row t's allocation: a pass of its own
                q_select = sg(self._select_utilities(p["agent"], w, alloc, z_all))
            y, mask = self._targets_from(state, w, alloc, q_select, z_target)
            m = mask.astype(jnp.float32)
            n = jnp.maximum(jnp.sum(m), 1.0)
            a_old, b_old = (sg(p["mixer"]["params"][k]) for k in ("popart_a", "popart_b"))
            if cfg.popart:
                stats, a_new, b_new, y_norm = popart_update(state.stats, a_old, b_old, y, m)
            else:  # statistics stay uninitialised, so target denormalisation is the identity
                stats, a_new, b_new, y_norm = state.stats, a_old, b_old, y
            # The affine takes the value a' (b') exactly and the identity as its derivative.
            mixer = dict(p["mixer"]["params"])
            for k, new in (("popart_a", a_new), ("popart_b", b_new)):
                mixer[k] = sg(new) + (mixer[k] - sg(mixer[k]))
            p_mixer = dict(p["mixer"], params=mixer)
            q_taken = chosen(q_all[:, :-1])
            _, qtot = self._mixed(p_mixer, q_taken, cur, cur_alloc)
            err = (qtot - y_norm) * m
            q_loss = jnp.sum(err**2) / n
            loss, aux = q_loss, {"losses/q_loss": q_loss}
            if cfg.imagine:
                q_views = [
                    chosen(self._utilities(
                        p["agent"], cur, cur_alloc,
                        None if strat is None else strat.z_views[v][:, :-1],
                        agent_views[:, :, v], cfg.imagine_respect_subtask))
                    for v in range(2)
                ]
                _, qtot_im = self._mixed(p_mixer, jnp.concatenate(q_views, -1), cur,
                                         cur_alloc, mixer_views)
                im_loss = jnp.sum(((qtot_im - y_norm) * m) ** 2) / n
                loss = (1.0 - cfg.im_lambda) * loss + cfg.im_lambda * im_loss
                aux["losses/im_loss"] = im_loss
            if cfg.copa:
                # the flat mask even with per-subtask mixing, as in the original
                vi, ent = self.copa_vi(p["recog"], w, alloc, strat, k_recog, flat_mask)
                loss = loss + cfg.copa_vi_lambda * vi + cfg.copa_vi_lambda / 10.0 * ent
                aux["losses/copa_vi_loss"] = vi
                aux["losses/copa_entropy_loss"] = ent
            if cfg.imagine or cfg.copa:
                aux["losses/total_loss"] = loss
            return loss, LossOut(loss, qtot, err, y, m, n, stats, a_new, b_new, aux)

        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return grads, out

    def update_target(self, state: LowState) -> LowState:
        """Hard copy of every network (COPA's included) and the Pop-Art statistics (4.5)."""
        return state.replace(target_params=state.params, target_stats=state.stats)
