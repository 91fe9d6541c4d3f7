"""LICA actor-critic learner (lica.md 2-7, 11, 13) as pure functions over whole-episode Windows.

One `update` is one LICA iteration on the episodes just collected: one critic step on TD(lambda)
targets from the target critic, a hard target copy every `target_update_interval` critic
steps, then one actor step that ascends the freshly updated critic's Q(s, p) plus the adaptive
entropy bonus. Flat mode (`subtask_cond=None`) is the original LICA on the global reward;
`subtask_cond='mask'` is LICA as ALMA's low level (lica.md 13): subtask-masked actors and one
mixing critic per subtask on subtask rewards.

Acting: `act` samples from the masked softmax; `eps == 0.0` means test mode (argmax). The
trainer passes its epsilon schedule's value while training (never 0 with the default schedule)
and exactly 0.0 at test time; epsilon never mixes in random actions (lica.md 4).
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
from alma_jax.nn.agent import EntityAttentionAgent, agent_key_mask, entity_inputs
from alma_jax.nn.attention import membership
from alma_jax.nn.lica import (
    EntityCritic,
    MixingCritic,
    MLPCritic,
    RNNPolicy,
    critic_key_mask,
    flat_observation,
    flat_state,
    gru_inputs,
    gumbel_straight_through,
    mask_logits,
    policy_entropy,
    policy_probs,
)
from alma_jax.nn.precision import at_precision, check_precision

AGENTS = ("attention", "gru")
CRITICS = ("mix", "mlp", "entity")
ACTION_INPUTS = ("probs", "gumbel_st")
ENTROPY_MODES = ("adaptive", "vanilla", "fixed", "none")  # 'fixed' = spec's name for 'vanilla'


@dataclass(frozen=True)
class LicaConfig:
    """Static settings of the LICA learner; defaults are the original's (lica.md 9)."""

    n_agents: int
    n_actions: int
    n_tasks: int
    subtask_cond: str | None = None  # None (flat LICA) | 'mask' (ALMA low level, lica.md 13)
    mask_subtask_actions: bool = False  # SaveTheCity: False
    agent: str = "attention"  # 'attention' (feed-forward entity attention) | 'gru' (lica.md 4)
    critic: str | None = None  # 'mix' | 'mlp' | 'entity'; None: 'entity' if 'mask' else 'mix'
    action_input: str = "probs"  # 'probs' | 'gumbel_st' (lica.md 11.1)
    gumbel_tau: float = 1.0
    entropy: str = "adaptive"  # 'adaptive' (xi / sg(H)) | 'vanilla' (beta) | 'none'
    entropy_coef: float = 0.06  # xi
    beta: float = 0.01  # fixed coefficient of the 'vanilla' entropy bonus
    entropy_floor: float = 1e-6  # xi / max(H, floor): a fully deterministic batch stays finite
    entropy_over_active: bool = False  # flat mode: False = mean over all NA slots (original)
    td_lambda: float = 0.8
    gamma: float = 0.99
    actor_lr: float = 2.5e-3
    critic_lr: float = 5e-4
    grad_clip: float = 10.0
    target_update_interval: int = 200  # critic gradient steps
    td_general: bool = False  # flat mode: general end-of-data TD form (5.3); 'mask' always is
    hidden_dim: int = 64  # GRU hidden / attention agent's DA
    embed_dim: int = 128  # attention agent's D
    n_heads: int = 4
    mix_dim: int = 64  # E (mixing_embed_dim)
    hyper_dim: int = 128  # DHY of the entity critic's attention hypernetworks
    hypernet_layers: int = 2
    mlp_hidden: tuple[int, ...] = (256, 256)
    critic_activity_mask: bool = True  # entity critic keys also need both ends active (13.3)
    precision: str = "fp32"  # the networks' contractions: 'fp32' | 'bf16' (nn/precision.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_hidden", tuple(self.mlp_hidden))
        checks = {
            "subtask_cond": (self.subtask_cond, (None, "mask")),
            "agent": (self.agent, AGENTS),
            "critic": (self.critic, (None,) + CRITICS),
            "action_input": (self.action_input, ACTION_INPUTS),
            "entropy": (self.entropy, ENTROPY_MODES),
            "hypernet_layers": (self.hypernet_layers, (1, 2)),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"LicaConfig.{name}={value!r}; allowed: {list(allowed)}")
        if self.subtask_cond == "mask" and self.critic_arch != "entity":
            raise ValueError("subtask_cond='mask' needs the per-subtask critic (critic='entity')")
        if self.target_update_interval < 1:
            raise ValueError("target_update_interval must be >= 1 (critic steps)")
        check_precision(self.precision)

    @property
    def critic_arch(self) -> str:
        """The critic actually built ('entity' whenever subtasks condition the learner)."""
        if self.critic is not None:
            return self.critic
        return "entity" if self.subtask_cond == "mask" else "mix"


@struct.dataclass
class LicaState:
    """params = {'agent', 'critic'} (acting reads params['agent'] only), optimisers, target."""

    params: Any
    actor_opt: Any
    critic_opt: Any
    target_critic: Any
    critic_steps: jax.Array  # int32, critic gradient steps taken
    last_target_copy: jax.Array  # int32, critic_steps at the last hard copy
    target_updates: jax.Array  # int32, number of hard copies so far


@struct.dataclass
class LicaBatch:
    """Parameter-free views of a Window [B, T] shared by both losses.

    cur / nxt: rows 0..T-2 / 1..T-1; onehot [B,T,NA,A] (zero on rows without an action);
    alloc [B,T,NA,NT] bool; acted [B,T]; m [B,T-1,K] loss mask per critic head;
    ent_w [B,T-1,NA] entropy weights (a masked mean over them gives H).
    """

    cur: Window
    nxt: Window
    onehot: jax.Array
    alloc: jax.Array
    acted: jax.Array
    m: jax.Array
    ent_w: jax.Array


# --------------------------------------------------------------------------------- TD(lambda)
def _time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def mask_full(filled: jax.Array, terminated: jax.Array) -> jax.Array:
    """filled, terminated [B, T] -> [B, T] float: filled, minus the row after a termination."""
    prev_term = jnp.concatenate([jnp.zeros_like(terminated[:, :1]), terminated[:, :-1]], 1)
    return (filled.astype(bool) & ~prev_term.astype(bool)).astype(jnp.float32)


def lambda_returns(
    r: jax.Array, d: jax.Array, qn: jax.Array, cont: jax.Array, gamma: float, lam: float
) -> jax.Array:
    """General lambda-returns [B, T', ...] from per-transition r, d, bootstrap value qn and cont.

    G(t) = r + gamma (1-d) ((1-lam) qn + lam (cont ? G(t+1) : qn)); qn(t) values the row after
    t, cont(t) says whether G(t+1) continues the same trace (next row acted, same group). The
    last row never continues (end of data = bootstrap).
    """
    f = jnp.float32
    cont = cont.astype(bool).at[:, -1].set(False)

    def body(g_next, inp):
        r_t, d_t, qn_t, c_t = inp
        tail = jnp.where(c_t, g_next, qn_t)
        g = r_t + gamma * (1.0 - d_t) * ((1.0 - lam) * qn_t + lam * tail)
        return g, g

    xs = tuple(_time_major(x) for x in (r.astype(f), d.astype(f), qn.astype(f), cont))
    _, g = jax.lax.scan(body, jnp.zeros_like(xs[0][0]), xs, reverse=True)
    return _time_major(g)


def td_lambda_targets(
    r: jax.Array, d: jax.Array, m: jax.Array, q: jax.Array, gamma: float, lam: float,
    general: bool = False,
) -> jax.Array:
    """TD(lambda) targets [B, T-1, ...] from r, d, m (= mask_full), target q [B, T, ...] (5.3).

    `general=False` is the original recursion (valid when every non-terminated episode fills
    all T rows); `general=True` bootstraps at each episode's last filled row instead.
    """
    f = jnp.float32
    r, d, m, q = (x.astype(f) for x in (r, d, m, q))
    if not general:
        g_last = q[:, -1] * (1.0 - jnp.sum(d, axis=1))

        def body(g_next, inp):
            r_t, d_t, m_t, q_next = inp
            g = lam * gamma * g_next + m_t * (r_t + (1.0 - lam) * gamma * q_next * (1.0 - d_t))
            return g, g

        xs = tuple(_time_major(x) for x in (r[:, :-1], d[:, :-1], m[:, :-1], q[:, 1:]))
        _, g = jax.lax.scan(body, g_last, xs, reverse=True)
        return _time_major(g)
    # mask_full drops the row after a termination; that row is still the episode's last one.
    prev_md = jnp.concatenate([jnp.zeros_like(m[:, :1]), (m * d)[:, :-1]], 1)
    prev_d = jnp.concatenate([jnp.zeros_like(d[:, :1]), d[:, :-1]], 1)
    filled = jnp.maximum(m, prev_md)
    acted = filled[:, :-1] * filled[:, 1:]  # rows 0..T-2 followed by an observation
    cont = jnp.concatenate([acted[:, 1:], jnp.zeros_like(acted[:, :1])], 1)
    g = lambda_returns(r[:, :-1], d[:, :-1], q[:, 1:], cont, gamma, lam)
    last = filled[:, :-1] * (1.0 - filled[:, 1:])
    at_last = last * (1.0 - prev_d[:, :-1]) * q[:, :-1]
    return jnp.where(acted > 0, g, at_last)


# --------------------------------------------------------------------------------- learner
def _slice_rows(w: Window, lo: int | None, hi: int | None) -> Window:
    return jax.tree.map(lambda x: x[:, lo:hi], w)


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over all leaves (the pre-clip gradient norm that is logged, lica.md 7)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _masked_mean(x: jax.Array, w: jax.Array, floor: float = 1.0) -> jax.Array:
    w = w.astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), floor)


class LicaLearner:
    """Networks and pure functions of LICA for one `LicaConfig` (interface of QMixLearner)."""

    on_policy = True

    def __init__(self, cfg: LicaConfig):
        self.cfg = cfg
        na, nact = cfg.n_agents, cfg.n_actions
        if cfg.agent == "attention":
            self.agent = EntityAttentionAgent(na, nact, cfg.embed_dim, cfg.n_heads, cfg.hidden_dim,
                                              subtask_cond=cfg.subtask_cond)
        else:
            self.agent = RNNPolicy(nact, cfg.hidden_dim)
        arch = cfg.critic_arch
        if arch == "mix":
            self.critic = MixingCritic(na, nact, cfg.mix_dim, cfg.hypernet_layers)
        elif arch == "mlp":
            self.critic = MLPCritic(cfg.mlp_hidden)
        else:
            self.critic = EntityCritic(nact, cfg.mix_dim, cfg.hyper_dim, cfg.n_heads)
        self.agent = at_precision(self.agent, cfg.precision)
        self.critic = at_precision(self.critic, cfg.precision)
        self.actor_tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                                    optax.adam(cfg.actor_lr))
        self.critic_tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                                     optax.adam(cfg.critic_lr))

    # ------------------------------------------------------------------ one row, one env
    def _member(self, entity2task_mask: jax.Array, alloc: jax.Array) -> jax.Array | None:
        if self.cfg.subtask_cond is None:
            return None
        return membership(entity2task_mask, alloc)

    def avail(self, codes: jax.Array, alloc: jax.Array) -> jax.Array:
        """codes [NA, A], alloc [NA, NT] -> available [NA, A] bool (parse, alma.md 1.5)."""
        cfg = self.cfg
        return parse_avail(codes, alloc if cfg.subtask_cond else None, cfg.mask_subtask_actions)

    def _agent_args(self, entities, obs_mask, entity_mask, entity2task_mask, last_action,
                    alloc) -> tuple:
        """The agent network's inputs for one row (without the GRU carry)."""
        cfg = self.cfg
        la = index_to_onehot(last_action, cfg.n_actions)
        member = self._member(entity2task_mask, alloc)
        if cfg.agent == "attention":
            return entity_inputs(entities, la), obs_mask, entity_mask, member
        blocked = agent_key_mask(obs_mask, entity_mask, cfg.n_agents, member)
        return (gru_inputs(flat_observation(entities, blocked), la),)

    def _critic_args(self, x, entities, entity_mask, entity2task_mask, last_action,
                     alloc) -> tuple:
        """The critic's inputs for one row; x [NA, A] one-hots or probabilities."""
        cfg = self.cfg
        if cfg.critic_arch != "entity":
            return x, flat_state(entities, entity_mask)
        na = cfg.n_agents
        xin = entity_inputs(entities, index_to_onehot(last_action, cfg.n_actions))
        member = self._member(entity2task_mask, alloc)
        blocked = critic_key_mask(entity_mask, member, na, cfg.critic_activity_mask)
        active = ~entity_mask[:na].astype(bool)
        groups = alloc.astype(bool) if member is not None else jnp.ones((na, 1), bool)
        return x, xin, blocked, active, groups

    def agent_row(
        self, agent_params, entities, obs_mask, entity_mask, entity2task_mask, codes,
        last_action, alloc, h,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """One row: (masked logits [NA, A], avail [NA, A], h' [NA, H] or None).

        last_action [NA] index (-1 none), alloc [NA, NT], h [NA, H] (GRU) or None.
        """
        args = self._agent_args(entities, obs_mask, entity_mask, entity2task_mask, last_action,
                                alloc)
        if self.cfg.agent == "attention":
            logits = self.agent.apply(agent_params, *args)
        else:
            logits, h = self.agent.apply(agent_params, *args, h)
        avail = self.avail(codes, alloc)
        return mask_logits(logits, avail), avail, h

    def critic_row(self, critic_params, x, entities, entity_mask, entity2task_mask, last_action,
                   alloc) -> jax.Array:
        """One row: x [NA, A] (one-hots or probabilities) -> Q [K] (K = NT or 1)."""
        args = self._critic_args(x, entities, entity_mask, entity2task_mask, last_action, alloc)
        return self.critic.apply(critic_params, *args)

    # -------------------------------------------------------------------------- init / act
    def init(self, key: jax.Array, example) -> LicaState:
        """Fresh state from ONE example observation (anything with the Observation fields)."""
        cfg = self.cfg
        k_agent, k_critic = jax.random.split(key)
        na = cfg.n_agents
        ent, e2t = example.entities, example.entity2task_mask
        la, alloc = jnp.full((na,), -1, jnp.int32), jnp.zeros((na, cfg.n_tasks), bool)
        carry = () if cfg.agent == "attention" else (jnp.zeros((na, cfg.hidden_dim)),)
        agent = self.agent.init(k_agent, *self._agent_args(
            ent, example.obs_mask, example.entity_mask, e2t, la, alloc), *carry)
        p = jnp.zeros((na, cfg.n_actions))
        critic = self.critic.init(k_critic, *self._critic_args(
            p, ent, example.entity_mask, e2t, la, alloc))
        zero = jnp.zeros((), jnp.int32)
        return LicaState(
            params={"agent": agent, "critic": critic},
            actor_opt=self.actor_tx.init(agent), critic_opt=self.critic_tx.init(critic),
            target_critic=critic, critic_steps=zero, last_target_copy=zero, target_updates=zero,
        )

    def init_carry(self, n_envs: int) -> jax.Array | None:
        """Acting carry at episode start: GRU hidden zeros [E, NA, H]; None without a GRU."""
        if self.cfg.agent != "gru":
            return None
        return jnp.zeros((n_envs, self.cfg.n_agents, self.cfg.hidden_dim), jnp.float32)

    def act(self, params, key, obs, last_action, alloc, eps, carry=None, decision=None):
        """obs [E] batch, last_action [E, NA], alloc [E, NA, NT] -> (actions [E, NA], carry).

        Train mode samples from the masked softmax; `eps == 0.0` is test mode (argmax, first
        index on ties). eps has no other effect: LICA explores only through its policy.
        carry: GRU hidden [E, NA, H] (None for the attention agent); `decision` [E] (the
        rollout's allocation-decision flags) is accepted for the interface and unused: the
        GRU keeps its memory across allocation changes within an episode.
        """
        f = jax.vmap(self.agent_row, in_axes=(None, 0, 0, 0, 0, 0, 0, 0, 0))
        masked, _, carry = f(params["agent"], obs.entities, obs.obs_mask, obs.entity_mask,
                             obs.entity2task_mask, obs.avail_actions, last_action, alloc, carry)
        greedy = jnp.argmax(masked, axis=-1)
        sampled = jax.random.categorical(key, masked, axis=-1)
        actions = jnp.where(jnp.asarray(eps) == 0.0, greedy, sampled)
        return actions.astype(jnp.int32), carry

    # ------------------------------------------------------------------------ batched nets
    def unroll(self, agent_params, rows: Window, alloc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """rows [B, T'], alloc [B, T', NA, NT] -> (masked logits, avail) [B, T', NA, A].

        The GRU restarts from zeros at row 0 and at every episode start inside the rows (a row
        without any previous action), as the rollout does when acting.
        """
        fields = (rows.entities, rows.obs_mask, rows.entity_mask, rows.entity2task_mask,
                  rows.avail_actions, rows.last_action, alloc)
        if self.cfg.agent == "attention":
            f = jax.vmap(jax.vmap(self.agent_row, in_axes=(None,) + (0,) * 7 + (None,)),
                         in_axes=(None,) + (0,) * 7 + (None,))
            masked, avail, _ = f(agent_params, *fields, None)
            return masked, avail
        B, T = rows.filled.shape
        start = jnp.all(rows.last_action < 0, axis=-1).at[:, 0].set(True)
        f = jax.vmap(self.agent_row, in_axes=(None,) + (0,) * 8)

        def step(h, inp):
            *xs, begins = inp
            h = jnp.where(begins[:, None, None], 0.0, h)
            masked, avail, h = f(agent_params, *xs, h)
            return h, (masked, avail)

        h0 = jnp.zeros((B, self.cfg.n_agents, self.cfg.hidden_dim), jnp.float32)
        xs = tuple(_time_major(x) for x in fields + (start,))
        _, (masked, avail) = jax.lax.scan(step, h0, xs)
        return _time_major(masked), _time_major(avail)

    def critic_values(self, critic_params, x: jax.Array, rows: Window, alloc: jax.Array):
        """x [B, T', NA, A], rows [B, T'], alloc [B, T', NA, NT] -> Q [B, T', K]."""
        if self.cfg.critic_arch != "entity":
            return self.critic.apply(critic_params, x, flat_state(rows.entities, rows.entity_mask))
        f = jax.vmap(jax.vmap(self.critic_row, in_axes=(None,) + (0,) * 6),
                     in_axes=(None,) + (0,) * 6)
        return f(critic_params, x, rows.entities, rows.entity_mask, rows.entity2task_mask,
                 rows.last_action, alloc)

    # --------------------------------------------------------------------------- losses
    def prepare(self, w: Window) -> LicaBatch:
        """Masks, one-hot actions and allocations of a whole-episode Window [B, T]."""
        cfg = self.cfg
        na = cfg.n_agents
        # Rows that carry an action: filled and not the final observation of an episode.
        acted = loss_mask(w)
        onehot = index_to_onehot(w.actions, cfg.n_actions) * acted[..., None, None]
        active = ~w.entity_mask[..., :na].astype(bool)
        if cfg.subtask_cond == "mask":
            alloc = stored_alloc(w) & active[..., None]
            m = subtask_loss_mask(w, alloc)[:, :-1]
            ent_w = acted[..., None] & active & jnp.any(alloc, -1)
        else:
            alloc = jnp.zeros(w.actions.shape + (cfg.n_tasks,), bool)
            m = acted[:, :-1, None]
            if cfg.entropy_over_active:
                ent_w = acted[..., None] & active
            else:  # the original: every slot counts, so H_bt is the mean over all NA agents
                ent_w = jnp.broadcast_to(acted[..., None], active.shape)
        return LicaBatch(cur=_slice_rows(w, None, -1), nxt=_slice_rows(w, 1, None),
                         onehot=onehot, alloc=alloc, acted=acted,
                         m=m.astype(jnp.float32), ent_w=ent_w[:, :-1].astype(jnp.float32))

    def bootstrap_values(self, target_params, b: LicaBatch) -> jax.Array:
        """Subtask mode: qn [B, T-1, NT], the target critic at row t+1 under row t's allocation.

        Row t+1's entities and recorded actions, but the agent groups that acted at t (13.4).
        """
        return self.critic_values(target_params, b.onehot[:, 1:], b.nxt, b.alloc[:, :-1])

    def critic_targets(self, target_params, w: Window, b: LicaBatch) -> jax.Array:
        """TD(lambda) targets y [B, T-1, K] from the target critic (no gradient)."""
        cfg = self.cfg
        gamma, lam = cfg.gamma, cfg.td_lambda
        if cfg.subtask_cond == "mask":
            alloc_t = b.alloc[:, :-1]
            qn = self.bootstrap_values(target_params, b)
            r = w.task_rewards[:, :-1]
            d = (w.tasks_terminated | w.terminated[..., None])[:, :-1]
            # A lambda-trace must not chain values of different agent groups (13.4).
            same = jnp.all(b.alloc[:, 1:] == alloc_t, axis=-2)
            cont = b.acted[:, 1:, None] & same
            y = lambda_returns(r, d, qn, cont, gamma, lam)
        else:
            tq = self.critic_values(target_params, b.onehot, w, b.alloc)  # [B, T, 1]
            r, d = w.reward[..., None], w.terminated[..., None]
            if cfg.td_general:
                y = lambda_returns(r[:, :-1], d[:, :-1], tq[:, 1:], b.acted[:, 1:, None],
                                   gamma, lam)
            else:
                m = mask_full(w.filled, w.terminated)[..., None]
                y = td_lambda_targets(r, d, m, tq, gamma, lam)
        return jax.lax.stop_gradient(y)

    def critic_loss(self, critic_params, y: jax.Array, b: LicaBatch):
        """Masked mean squared TD(lambda) error over rows 0..T-2 and heads -> (loss, aux)."""
        q = self.critic_values(critic_params, b.onehot[:, :-1], b.cur, b.alloc[:, :-1])
        err = (q - y) * b.m
        loss = jnp.sum(err**2) / jnp.maximum(jnp.sum(b.m), 1.0)
        return loss, {"q": q, "err": err}

    def actor_loss(self, agent_params, critic_params, b: LicaBatch, key: jax.Array):
        """-Qbar(p) - entropy bonus with the critic frozen (lica.md 6, 13.5) -> (loss, aux)."""
        cfg = self.cfg
        critic_params = jax.lax.stop_gradient(critic_params)
        masked, avail = self.unroll(agent_params, b.cur, b.alloc[:, :-1])
        entropy = policy_entropy(masked, avail)  # [B, T-1, NA]
        H = _masked_mean(entropy, b.ent_w, floor=1e-8)
        if cfg.action_input == "gumbel_st":
            p = gumbel_straight_through(key, masked, avail, cfg.gumbel_tau)
        else:
            p = policy_probs(masked, avail)
        q = self.critic_values(critic_params, p, b.cur, b.alloc[:, :-1])
        q_bar = _masked_mean(q, b.m)
        if cfg.entropy == "adaptive":
            coef = cfg.entropy_coef / jnp.maximum(jax.lax.stop_gradient(H), cfg.entropy_floor)
        elif cfg.entropy in ("vanilla", "fixed"):
            coef = jnp.float32(cfg.beta)
        else:
            coef = jnp.float32(0.0)
        loss = -q_bar - coef * H
        return loss, {"entropy": H, "q_probs_mean": q_bar, "entropy_coef_eff": coef, "p": p}

    # -------------------------------------------------------------------------- update
    def critic_step(self, state: LicaState, w: Window, b: LicaBatch):
        """Critic gradient step + hard target copy by critic-step count -> (state, metrics)."""
        cfg = self.cfg
        y = self.critic_targets(state.target_critic, w, b)
        critic = state.params["critic"]
        (loss, aux), grads = jax.value_and_grad(self.critic_loss, has_aux=True)(critic, y, b)
        updates, critic_opt = self.critic_tx.update(grads, state.critic_opt, critic)
        critic = optax.apply_updates(critic, updates)
        steps = state.critic_steps + 1
        copy = steps - state.last_target_copy >= cfg.target_update_interval
        target = jax.tree.map(lambda new, old: jnp.where(copy, new, old), critic,
                              state.target_critic)
        n = jnp.maximum(jnp.sum(b.m), 1.0)
        metrics = {
            "losses/critic_loss": loss,
            "train_metrics/critic_grad_norm": global_norm(grads),
            "train_metrics/td_error_abs": jnp.sum(jnp.abs(aux["err"])) / n,
            "train_metrics/q_t_mean": jnp.sum(aux["q"] * b.m) / n,
            "train_metrics/target_mean": jnp.sum(y * b.m) / n,
        }
        state = state.replace(
            params=dict(state.params, critic=critic), critic_opt=critic_opt, target_critic=target,
            critic_steps=steps, last_target_copy=jnp.where(copy, steps, state.last_target_copy),
            target_updates=state.target_updates + copy.astype(jnp.int32),
        )
        return state, metrics

    def actor_step(self, state: LicaState, b: LicaBatch, key: jax.Array):
        """Actor gradient step through the current online critic -> (state, metrics)."""
        agent = state.params["agent"]
        (loss, aux), grads = jax.value_and_grad(self.actor_loss, has_aux=True)(
            agent, state.params["critic"], b, key)
        updates, actor_opt = self.actor_tx.update(grads, state.actor_opt, agent)
        agent = optax.apply_updates(agent, updates)
        metrics = {
            "losses/mix_loss": loss,
            "train_metrics/entropy": aux["entropy"],
            "train_metrics/agent_grad_norm": global_norm(grads),
            "train_metrics/q_probs_mean": aux["q_probs_mean"],
            "train_metrics/entropy_coef_eff": aux["entropy_coef_eff"],
        }
        return state.replace(params=dict(state.params, agent=agent), actor_opt=actor_opt), metrics

    def update(self, state: LicaState, w: Window, key: jax.Array):
        """One LICA iteration on whole episodes w [B, T]: critic step, then actor step (spec 2)."""
        b = self.prepare(w)
        state, mc = self.critic_step(state, w, b)
        state, ma = self.actor_step(state, b, key)
        metrics = {**mc, **ma,
                   "train_metrics/critic_steps": state.critic_steps.astype(jnp.float32),
                   "train_metrics/target_updates": state.target_updates.astype(jnp.float32)}
        return state, metrics

    def update_target(self, state: LicaState) -> LicaState:
        """Identity: LICA copies its target critic inside `update`, by critic-step count."""
        return state
