"""Agent and mixer: padding, permutations, subtask masking, monotonic mixing (spec 6.5, 3-6)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import fast_init

from alma_jax.nn import (
    AttentionHyperNet,
    EntityAttentionAgent,
    FlexQMixer,
    TaskEmbed,
    both_active_block,
    entity_inputs,
    group_block,
    membership,
    mix,
)

NA, NN, NT, ED, NACT = 3, 4, 3, 5, 4
NE = NA + NN
SIZES = dict(embed_dim=16, n_heads=2, hidden_dim=8)
MIX_SIZES = dict(mix_dim=4, hyper_dim=16, n_heads=2)
MODES = [None, "mask", "full_obs"]


@dataclass
class Case:
    """One padded observation in stored polarity plus the allocation (numpy)."""

    entities: np.ndarray  # [NE, ED]
    last_action: np.ndarray  # [NA, NACT]
    obs_mask: np.ndarray  # [NE, NE]
    entity_mask: np.ndarray  # [NE]
    e2t: np.ndarray  # [NE, NT]
    alloc: np.ndarray  # [NA, NT]

    def member(self) -> jax.Array:
        return membership(jnp.asarray(self.e2t), jnp.asarray(self.alloc))

    def x(self) -> jax.Array:
        return entity_inputs(jnp.asarray(self.entities), jnp.asarray(self.last_action))


def make_case(seed: int) -> Case:
    """Agents 0, 1 active (subtasks 0 and 1), agent 2 dead; subtask 2 has no agents;
    the last non-agent slot is padding."""
    rng = np.random.default_rng(seed)
    entity_mask = np.zeros(NE, bool)
    entity_mask[2] = True
    entity_mask[NE - 1] = True
    active = ~entity_mask
    entities = rng.normal(size=(NE, ED)).astype(np.float32) * active[:, None]
    last_action = np.eye(NACT, dtype=np.float32)[rng.integers(0, NACT, NA)] * active[:NA, None]
    obs_mask = rng.random((NE, NE)) < 0.2
    np.fill_diagonal(obs_mask, False)
    obs_mask |= ~(active[:, None] & active[None, :])
    alloc = np.zeros((NA, NT), np.int32)
    alloc[0, 0] = alloc[1, 1] = 1
    e2t = np.ones((NE, NT), bool)
    for e, k in zip(range(NA, NE - 1), [0, 1, 2, 0]):
        e2t[e, k] = False
    e2t[:NA] = rng.random((NA, NT)) < 0.5  # the env's agent rows must be ignored
    return Case(entities, last_action, obs_mask, entity_mask, e2t, alloc)


def agent_module(mode):
    return EntityAttentionAgent(NA, NACT, subtask_cond=mode, **SIZES)


def mixer_module(mode, softmax=True):
    return FlexQMixer(NA, subtask_cond=mode, softmax_mixing_weights=softmax, **MIX_SIZES)


def forward_fn(mode, agent, mixer):
    """One jitted agent + mixer pass (one compile per input shape keeps the suite fast)."""

    @jax.jit
    def forward(pa, pm, x, obs_mask, entity_mask, e2t, alloc, q_in, use_q_in):
        member = membership(e2t, alloc) if mode else None
        qs = agent.apply(pa, x, obs_mask, entity_mask, member)
        q = jnp.where(use_q_in, q_in, qs[:, 1])
        y, qtot = mixer.apply(pm, q, x, entity_mask, member)
        return qs, q, y, qtot

    return forward


@pytest.fixture(scope="module")
def nets():
    """Per mode: agent and mixer modules, their parameters and the jitted joint forward."""
    out = {}
    c = make_case(0)
    for i, mode in enumerate(MODES):
        member = c.member() if mode else None
        agent, mixer = agent_module(mode), mixer_module(mode)
        x, om, em = c.x(), jnp.asarray(c.obs_mask), jnp.asarray(c.entity_mask)
        pa = fast_init(agent, x, om, em, member, seed=i)
        pm = fast_init(mixer, jnp.zeros(NA), x, em, member, seed=10 + i)
        out[mode] = dict(agent=agent, mixer=mixer, pa=pa, pm=pm, fwd=forward_fn(mode, agent, mixer))
    return out


def run(nets, mode, c: Case, q_override=None):
    """Agent utilities Q [NA, NACT], mixed q [NA] (action 1 unless given) and (y, Q_tot)."""
    n = nets[mode]
    q_in = jnp.zeros(NA) if q_override is None else jnp.asarray(q_override)
    out = n["fwd"](
        n["pa"],
        n["pm"],
        c.x(),
        jnp.asarray(c.obs_mask),
        jnp.asarray(c.entity_mask),
        jnp.asarray(c.e2t),
        jnp.asarray(c.alloc),
        q_in,
        q_override is not None,
    )
    return tuple(np.asarray(a) for a in out)


# ------------------------------------------------------------------ basic structure
@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_inactive_rows(nets, mode):
    qs, _, y, qtot = run(nets, mode, make_case(1))
    k = NT if mode else 1
    assert qs.shape == (NA, NACT) and y.shape == (k,) and qtot.shape == (k,)
    np.testing.assert_array_equal(qs[2], 0.0)  # dead agent
    assert np.abs(qs[:2]).min() > 0
    pm = nets[mode]["pm"]["params"]
    a, b = pm["popart_a"], pm["popart_b"]
    assert a.shape == (k,) and b.shape == (k,)
    np.testing.assert_allclose(qtot, np.asarray(a) * y + np.asarray(b), atol=1e-6)


# ------------------------------------------------------------------ 3: padding invariance
def pad_nonagents(c: Case, n_extra: int, env_blocks_padding: bool) -> Case:
    ne = NE + n_extra
    obs_mask = np.zeros((ne, ne), bool)
    obs_mask[:NE, :NE] = c.obs_mask
    if env_blocks_padding:
        obs_mask[NE:, :] = obs_mask[:, NE:] = True
    return replace(
        c,
        entities=np.concatenate([c.entities, np.zeros((n_extra, ED), np.float32)]),
        obs_mask=obs_mask,
        entity_mask=np.concatenate([c.entity_mask, np.ones(n_extra, bool)]),
        e2t=np.concatenate([c.e2t, np.ones((n_extra, NT), bool)]),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_blocks_padding", [True, False])
def test_padding_nonagent_slots_changes_nothing(nets, mode, env_blocks_padding):
    # env_blocks_padding=False: an env that forgets to hide padding (F1 guard).
    c = make_case(2)
    qs, q, y, _ = run(nets, mode, c)
    qs_p, _, y_p, _ = run(nets, mode, pad_nonagents(c, 3, env_blocks_padding), q_override=q)
    np.testing.assert_allclose(qs_p, qs, atol=1e-5)
    np.testing.assert_allclose(y_p, y, atol=1e-5)


# ------------------------------------------------------------------ 4: permutations
def permute_slots(c: Case, perm_e: np.ndarray) -> Case:
    """Reorder entity slots with `perm_e` (new slot s holds old entity perm_e[s])."""
    return replace(
        c,
        entities=c.entities[perm_e],
        last_action=c.last_action[perm_e[:NA]],
        obs_mask=c.obs_mask[perm_e][:, perm_e],
        entity_mask=c.entity_mask[perm_e],
        e2t=c.e2t[perm_e],
        alloc=c.alloc[perm_e[:NA]],
    )


@pytest.mark.parametrize("mode", MODES)
def test_agent_slot_permutation(nets, mode):
    c = make_case(3)
    perm_a = np.array([2, 0, 1])
    qs, q, y, _ = run(nets, mode, c)
    qs_p, q_p, y_p, _ = run(nets, mode, permute_slots(c, np.r_[perm_a, np.arange(NA, NE)]))
    np.testing.assert_allclose(qs_p, qs[perm_a], atol=1e-5)
    np.testing.assert_allclose(q_p, q[perm_a], atol=1e-5)
    np.testing.assert_allclose(y_p, y, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_nonagent_slot_permutation(nets, mode):
    c = make_case(4)
    perm_n = np.array([3, 1, 0, 2]) + NA
    qs, q, y, _ = run(nets, mode, c)
    qs_p, _, y_p, _ = run(nets, mode, permute_slots(c, np.r_[np.arange(NA), perm_n]))
    np.testing.assert_allclose(qs_p, qs, atol=1e-5)
    np.testing.assert_allclose(y_p, y, atol=1e-5)


# ------------------------------------------------------------------ 5: subtask masking
def perturb_entity(c: Case, e: int, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    entities = c.entities.copy()
    entities[e] += 3 * rng.normal(size=ED).astype(np.float32)
    last_action = c.last_action.copy()
    if e < NA:
        last_action[e] = np.roll(last_action[e], 1)
    return replace(c, entities=entities, last_action=last_action)


def outside_pairs(c: Case):
    """(agent i, entity e): i active, e active, visible to i, in none of i's subtasks."""
    member = np.asarray(c.member())
    share = ~np.asarray(group_block(jnp.asarray(member)))
    active = ~c.entity_mask
    return [
        (i, e)
        for i in range(NA)
        for e in range(NE)
        if active[i] and active[e] and e != i and not share[i, e] and not c.obs_mask[i, e]
    ]


def test_mask_mode_ignores_entities_outside_the_subtask(nets):
    c = make_case(5)
    c.obs_mask[:NA, :] &= c.entity_mask[None, :]  # agents see every active entity
    pairs = outside_pairs(c)
    assert any(e < NA for _, e in pairs) and any(e >= NA for _, e in pairs)
    for mode in ["mask", "full_obs"]:
        qs, *_ = run(nets, mode, c)
        for n, (i, e) in enumerate(pairs):
            qs_p, *_ = run(nets, mode, perturb_entity(c, e, n))
            if mode == "mask":
                np.testing.assert_allclose(qs_p[i], qs[i], atol=1e-5)
            else:
                assert np.abs(qs_p[i] - qs[i]).max() > 1e-4


def test_mask_mode_mixer_output_depends_on_its_subtask_only(nets):
    c = make_case(6)
    member = np.asarray(c.member())
    _, q, y, _ = run(nets, "mask", c)
    for e in np.flatnonzero(~c.entity_mask):
        _, _, y_p, _ = run(nets, "mask", perturb_entity(c, e, e), q_override=q)
        outside = ~member[e]
        np.testing.assert_allclose(y_p[outside], y[outside], atol=1e-5)
        if member[e, :2].any():
            assert np.abs(y_p - y)[member[e]].max() > 1e-5


def test_full_obs_mixer_sees_raw_membership(nets):
    # Moving a non-agent to another subtask changes no mask in 'full_obs': only the appended
    # one-hot can carry it to the hypernetworks.
    c = make_case(14)
    _, q, y, _ = run(nets, "full_obs", c)
    e2t = c.e2t.copy()
    e2t[NA] = np.roll(e2t[NA], 1)
    _, _, y_moved, _ = run(nets, "full_obs", replace(c, e2t=e2t), q_override=q)
    assert np.abs(y_moved - y).max() > 1e-5


# ------------------------------------------------------------------ 6: monotonic mixing
# Monotonicity lives in `mix`, shared by all modes: cover each weight map, flat and per subtask.
@pytest.mark.parametrize(
    "mode,softmax", [(None, True), (None, False), ("mask", True), ("full_obs", False)]
)
def test_mixer_monotonic_and_zero_outside_subtask(nets, mode, softmax):
    c = make_case(7)
    c.alloc[2, 0] = 1  # revive agent 2 in subtask 0: two agents share a mixture
    c.entity_mask[2] = False
    member = c.member() if mode else None
    # Same parameter shapes for softmax and abs weights: reuse the fixture's parameters.
    mixer, params = mixer_module(mode, softmax), nets[mode]["pm"]
    x, em = c.x(), jnp.asarray(c.entity_mask)

    def y_of(q):
        return mixer.apply(params, q, x, em, member)[0]

    qs = 5 * jax.random.normal(jax.random.key(0), (4, NA))
    jac, y = jax.jit(jax.vmap(lambda q: (jax.jacobian(y_of)(q), y_of(q))))(qs)
    jac, y = np.asarray(jac), np.asarray(y)  # [S, K, NA], [S, K]
    assert (jac >= 0).all()
    if mode:
        np.testing.assert_array_equal(jac[:, c.alloc.T == 0], 0.0)
        assert (jac[:, c.alloc.T == 1] > 0).all()
        np.testing.assert_array_equal(y[:, 2], 0.0)  # no agents in subtask 2
    else:
        assert (jac > 0).all()


def reference_mix(q, u_w1, u_b1, u_wf, u_v, groups, softmax):
    """Spec 2.4 written out with loops, numpy float64."""
    q, u_w1, u_b1, u_wf, u_v = (np.asarray(a, np.float64) for a in (q, u_w1, u_b1, u_wf, u_v))
    na, dm = u_b1.shape
    n_views = len(q) // na

    def nonneg(v):
        return np.exp(v) / np.exp(v).sum(-1, keepdims=True) if softmax else np.abs(v)

    w1_all = nonneg(u_w1)
    out = []
    for k in range(groups.shape[1]):
        a = groups[:, k].astype(np.float64)
        b1 = np.abs(sum(a[i] * u_b1[i] for i in range(na)) / na)
        wf = nonneg(sum(a[i] * u_wf[i] for i in range(na)) / na)
        v = abs(sum(a[i] * u_v[i, h] for i in range(na) for h in range(dm)) / (na * dm))
        pre = b1.copy()
        for m in range(n_views * na):
            pre += q[m] * a[m % na] * w1_all[m]
        hidden = np.where(pre > 0, pre, np.expm1(pre))
        out.append(hidden @ wf + v)
    return np.array(out)


@pytest.mark.parametrize("n_views,k,softmax", [(1, 1, True), (1, 3, False), (2, 3, True)])
def test_mix_matches_loop_reference(n_views, k, softmax):
    rng = np.random.default_rng(8)
    dm = 4
    q = rng.normal(size=n_views * NA).astype(np.float32)
    u = [rng.normal(size=(n_views * NA if i == 0 else NA, dm)).astype(np.float32) for i in range(4)]
    u[1][2] = 0.0  # an inactive agent's zero row still counts in the 1/NA average
    groups = np.eye(k, dtype=np.int32)[rng.integers(0, k, NA)] if k > 1 else np.ones((NA, 1))
    y = mix(jnp.asarray(q), *map(jnp.asarray, u), jnp.asarray(groups), softmax)
    np.testing.assert_allclose(y, reference_mix(q, *u, groups, softmax), rtol=1e-5, atol=1e-5)


def test_imagined_views_reduce_to_normal_mixture(nets):
    # REFIL hook: with q^I = 0 and the within view equal to the mixer mask, nothing changes.
    mode = None  # REFIL's own config is flat; the hook does not depend on the mode
    c = make_case(9)
    _, q, y, _ = run(nets, mode, c)
    member = None
    active = ~c.entity_mask
    normal = ~(active[:NA, None] & active[None, :])
    other = np.random.default_rng(0).random((NA, NE)) < 0.5
    views = jnp.asarray(np.stack([normal, other]))
    q2 = jnp.concatenate([jnp.asarray(q), jnp.zeros(NA)])
    mixer_apply = jax.jit(nets[mode]["mixer"].apply)
    y2, _ = mixer_apply(nets[mode]["pm"], q2, c.x(), jnp.asarray(c.entity_mask), member, views)
    np.testing.assert_allclose(y2, y, atol=1e-5)
    # The interaction view does enter: nonzero q^I moves the mixture.
    y3, _ = mixer_apply(nets[mode]["pm"], q2 + 1, c.x(), jnp.asarray(c.entity_mask), member, views)
    assert np.abs(np.asarray(y3) - y).max() > 1e-4


# ------------------------------------------------------------------ extras
def test_hypernet_zeroes_inactive_agents():
    # Inactive rows must be exactly zero: the flat means over all NA slots count them.
    c = make_case(13)
    hyper = AttentionHyperNet(hyper_dim=16, mix_dim=4, n_heads=2)
    x, em = c.x(), jnp.asarray(c.entity_mask)
    blocked = both_active_block(em, NA)
    params = fast_init(hyper, x, blocked, ~em[:NA])
    u = np.asarray(jax.jit(hyper.apply)(params, x, blocked, ~em[:NA]))
    assert u.shape == (NA, 4)
    np.testing.assert_array_equal(u[2], 0.0)
    assert np.abs(u[:2]).min() > 0


def test_coach_z_is_added_before_the_head(nets):
    c = make_case(10)
    qs, *_ = run(nets, None, c)
    agent_apply = jax.jit(nets[None]["agent"].apply)
    pa = nets[None]["pa"]
    args = (c.x(), jnp.asarray(c.obs_mask), jnp.asarray(c.entity_mask))
    np.testing.assert_allclose(agent_apply(pa, *args, z=jnp.zeros((NA, 8))), qs, atol=1e-6)
    z = jax.random.normal(jax.random.key(0), (NA, 8))
    qz = np.asarray(agent_apply(pa, *args, z=z))
    head = pa["params"]["fc_out"]["kernel"]
    # The head is affine, so the shift is exactly z @ W for active agents.
    np.testing.assert_allclose(qz[:2] - qs[:2], np.asarray(z @ head)[:2], atol=1e-5)
    np.testing.assert_array_equal(qz[2], 0.0)


def test_task_embed_permutation_and_zero_membership():
    member = jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]], bool)
    te = TaskEmbed(6, n_extra_tasks=2)
    params = fast_init(te, member)
    kernel = np.asarray(params["params"]["fc"]["kernel"])
    assert kernel.shape == (NT + 2, 6)
    apply = jax.jit(te.apply)
    emb = np.asarray(apply(params, member, jnp.arange(5)))  # identity permutation
    np.testing.assert_allclose(emb[:2], kernel[:2], atol=1e-6)
    np.testing.assert_array_equal(emb[2], 0.0)  # no subtask: zero embedding
    np.testing.assert_array_equal(emb[1], emb[3])
    perm = np.array([4, 2, 0, 1, 3])
    emb_p = np.asarray(apply(params, member, jnp.asarray(perm)))
    # Column j of the permuted input reads subtask perm[j]: subtask k uses kernel row inv[k].
    inv = np.argsort(perm)
    np.testing.assert_allclose(emb_p[0], kernel[inv[0]], atol=1e-6)
    np.testing.assert_allclose(emb_p[1], kernel[inv[1]], atol=1e-6)
    np.testing.assert_array_equal(emb_p[2], 0.0)


def test_full_obs_agent_uses_task_permutation(nets):
    c = make_case(11)
    qs, *_ = run(nets, "full_obs", c)  # no permutation given
    agent_apply = jax.jit(nets["full_obs"]["agent"].apply)
    args = (c.x(), jnp.asarray(c.obs_mask), jnp.asarray(c.entity_mask), c.member())
    pa = nets["full_obs"]["pa"]
    np.testing.assert_allclose(agent_apply(pa, *args, jnp.arange(NT)), qs, atol=1e-6)
    assert np.abs(np.asarray(agent_apply(pa, *args, jnp.array([1, 2, 0]))) - qs).max() > 1e-4


def test_gradients_finite_through_agent_and_mixer(nets):
    # 'mask' mode with a dead agent: fully blocked attention rows in agent and mixer.
    n = nets["mask"]
    c = make_case(12)
    member, em, x = c.member(), jnp.asarray(c.entity_mask), c.x()

    def loss(pa, pm):
        qs = n["agent"].apply(pa, x, jnp.asarray(c.obs_mask), em, member)
        _, qtot = n["mixer"].apply(pm, qs[:, 0], x, em, member)
        return jnp.sum(qtot**2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(n["pa"], n["pm"])
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)
