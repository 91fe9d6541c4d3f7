"""REFIL's imagined-group loss (spec 2.8, 6.5 item 12) and COPA's coach (spec 5.4, F16).

A tiny flat window (B=2, T=5) is written field by field: a padded entity slot, an agent that
dies, a building that appears after window row 0 (so F5's per-row activity matters), decision
rows that do not start every window (F16). Slow references loop over rows with the learner's
own per-row networks (`agent_q`, `mix`, `coach_row`, `recog_row`), whose correctness is tested
in test_nn_*.py; what is tested here is the masking, the holding of strategies, the loss terms
and where gradients and target copies go.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from alma_jax import buffer as bf
from alma_jax.learners.qmix import (
    LowState,
    QMixConfig,
    QMixLearner,
    draw_groups,
    hold_at_decisions,
    imagined_views,
)
from alma_jax.nn import agent_key_mask, vi_terms
from alma_jax.popart import popart_init, popart_update
from envs_jax.core import Observation

NA, NB, NT, NACT, ED = 2, 3, 3, 4, 3  # agents, buildings (non-agent entities), subtasks, ...
NE = NA + NB
B, T = 2, 5
DA = 8
SIZES = dict(n_agents=NA, n_actions=NACT, n_tasks=NT, embed_dim=16, n_heads=2, hidden_dim=DA,
             mix_dim=4, hyper_dim=16)
DECISIONS = np.array([[1, 0, 1, 0, 1],   # rows 0 and 2, then the next episode's row 0
                      [0, 0, 1, 0, 0]],  # window opens mid-segment: rows 0-1 get z = 0
                     bool)
KEY = jax.random.PRNGKey(7)


# ------------------------------------------------------------------------ hand-built data
def make_window(seed: int = 0) -> bf.Window:
    """Two flat windows of T=5 rows.

    b=0: an episode terminating at transition 2 (row 3 is its final observation, masked),
         then the first row of the next one; the last building slot is padding throughout.
    b=1: agent 1 dies at row 3; building 2 is absent at row 0 and appears at row 2.
    Inactive entities are blocked in obs_mask (the env's rule) plus random extra blocks.
    """
    rng = np.random.default_rng(seed)
    ep = bf.empty_episodes((B,), T - 1, NA, NE, NT, NACT, ED)
    entity_mask = np.zeros((B, T, NE), bool)
    entity_mask[0, :, NE - 1] = True
    entity_mask[1, 3:, 1] = True
    entity_mask[1, :2, NA + 2] = True
    active = ~entity_mask
    obs_mask = rng.random((B, T, NE, NE)) < 0.2
    obs_mask[..., np.arange(NE), np.arange(NE)] = False
    obs_mask |= ~(active[..., :, None] & active[..., None, :])
    e2t = np.ones((B, T, NE, NT), bool)  # flat: the env writes no agent rows
    for j in range(NB):
        e2t[:, :, NA + j, j] = False
    actions = rng.integers(0, NACT, (B, T, NA))
    actions[entity_mask[..., :NA]] = 0
    actions[0, 3] = 0  # the final-observation row
    last_action = np.concatenate([np.full((B, 1, NA), -1), actions[:, :-1]], 1)
    last_action[0, 4] = -1
    reset = np.zeros((B, T), bool)
    terminated = np.zeros((B, T), bool)
    reset[0, 2] = terminated[0, 2] = True
    fields = dict(
        entities=(rng.normal(size=(B, T, NE, ED)) * active[..., None]).astype(np.float32),
        obs_mask=obs_mask,
        entity_mask=entity_mask,
        entity2task_mask=e2t,
        task_mask=np.zeros((B, T, NT), bool),
        avail_actions=np.ones((B, T, NA, NACT), np.int32),
        actions=actions.astype(np.int32),
        reward=rng.normal(size=(B, T)).astype(np.float32),
        task_rewards=np.zeros((B, T, NT), np.float32),
        terminated=terminated,
        reset=reset,
        filled=np.ones((B, T), bool),
        hier_decision=DECISIONS,
        tasks_terminated=np.zeros((B, T, NT), bool),
        last_action=last_action.astype(np.int32),
        prev_alloc=np.full((B, T, NA), -1, np.int32),
    )
    fields = {k: jnp.asarray(v, getattr(ep, k).dtype) for k, v in fields.items()}
    zeros = jnp.zeros((B, T), jnp.int32)
    return bf.Window(**fields, t_added=zeros, slot=zeros, row=jnp.tile(jnp.arange(T), (B, 1)))


# These graphs are tiny: XLA's CPU optimisation passes would dominate the suite's time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def quick_jit(fn):
    """`jax.jit(fn)` compiled once, without expensive passes, for one argument signature."""
    compiled = []

    def call(*args):
        if not compiled:
            compiled.append(jax.jit(fn).lower(*args).compile(FAST_COMPILE))
        return compiled[0](*args)

    return call


def row(w, b, t):
    return {f: np.asarray(getattr(w, f)[b, t]) for f in bf.ROW_FIELDS}


def update_keys(key):
    """`update` splits its key into (groups, coach, target coach, recognition)."""
    return jax.random.split(key, 4)


def draw_params(shapes, seed: int):
    """PyTorch-like ranges drawn by numpy (`learner.init` would cost seconds of compile)."""
    rng = np.random.default_rng(seed)

    def draw(s):
        bound = 1 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.3
        return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

    params = jax.tree.map(draw, shapes)
    params["mixer"]["params"] = dict(params["mixer"]["params"], popart_a=jnp.ones(1),
                                     popart_b=jnp.zeros(1))
    return params


def make_state(learner, w):
    """Online and target nets drawn independently, fresh Pop-Art statistics."""
    row0 = jax.tree.map(lambda x: x[0, 0], w)
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0), row0).params
    params, target = draw_params(shapes, 1), draw_params(shapes, 2)
    return LowState(params=params, opt_state=learner.optimizer.init(params),
                    stats=popart_init(), target_params=target, target_stats=popart_init())


@pytest.fixture(scope="module")
def window():
    return make_window()


@pytest.fixture(scope="module")
def refil(window):
    """REFIL with lambda = 0 (the imagined loss is still computed and logged)."""
    learner = QMixLearner(QMixConfig(imagine=True, im_lambda=0.0, **SIZES))
    return learner, make_state(learner, window), quick_jit(learner.update)


@pytest.fixture(scope="module")
def copa(window):
    """COPA with vi_lambda = 0: only the Q loss trains the coach (VI terms still logged)."""
    learner = QMixLearner(QMixConfig(copa=True, copa_vi_lambda=0.0, **SIZES))
    return learner, make_state(learner, window), quick_jit(learner.update)


@pytest.fixture(scope="module")
def strategies(copa):
    return quick_jit(copa[0].copa_strategies)


@pytest.fixture(scope="module")
def copa_act(copa):
    return quick_jit(copa[0].act)


def assert_trees_close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def assert_finite(tree):
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


# ================================================================================ REFIL
def test_refil_with_lambda_zero_is_plain_qmix(refil, window):
    learner, state, update = refil
    plain = QMixLearner(QMixConfig(**SIZES))
    new_p, met_p = quick_jit(plain.update)(state, window)
    new_r, met_r = update(state, window, KEY)
    np.testing.assert_allclose(met_r["losses/q_loss"], met_p["losses/q_loss"], rtol=1e-6)
    np.testing.assert_allclose(met_r["losses/total_loss"], met_p["losses/q_loss"], rtol=1e-6)
    np.testing.assert_allclose(met_r["train_metrics/q_grad_norm"],
                               met_p["train_metrics/q_grad_norm"], rtol=1e-5)
    assert_trees_close(new_r.params, new_p.params)
    # the imagined loss is really computed (and differs from the plain one)
    im = float(met_r["losses/im_loss"])
    assert np.isfinite(im) and abs(im - float(met_r["losses/q_loss"])) > 1e-4
    assert_finite((new_r, met_r))


def test_refil_update_needs_a_key(refil, window):
    learner, state, _ = refil
    with pytest.raises(ValueError, match="key"):
        learner.update(state, window)


def test_group_draws_vary_per_window():
    """One p ~ U(0,1) per window: group-B fractions spread over [0, 1], all-one-group happens."""
    frac = np.asarray(draw_groups(jax.random.PRNGKey(0), (2000, 400))).mean(1)
    assert sps.kstest(frac, "uniform").pvalue > 1e-3  # 400 draws per row: close to p itself
    small = np.asarray(draw_groups(jax.random.PRNGKey(1), (2000, NE))).mean(1)
    # P(all entities in one group) = 2 / (NE + 1) per window
    assert abs(np.mean((small == 0) | (small == 1)) - 2 / (NE + 1)) < 0.05


def test_imagined_views_partition_pairs():
    """Spec 6.5 item 12 on the views: for active i != j exactly one view allows the pair;
    self-pairs only in the within view; entities inactive at row 0 join no group."""
    rng = np.random.default_rng(1)
    views = jax.jit(imagined_views)
    for _ in range(20):
        groups, active0 = rng.random(NE) < 0.5, rng.random(NE) < 0.8
        within, interact = (np.asarray(v) for v in views(groups, active0))
        for i in range(NE):
            for j in range(NE):
                both = active0[i] and active0[j]
                same = both and groups[i] == groups[j]
                assert within[i, j] == (not same)
                assert interact[i, j] == same
                if both and i != j:
                    assert within[i, j] != interact[i, j]
                if i == j and active0[i]:
                    assert not within[i, i] and interact[i, i]
                if not active0[i] or not active0[j]:
                    assert within[i, j]


def test_drawn_masks_structure(refil, window):
    """The masks `update` uses: views fixed per window, agent views = view | obs_mask, mixer
    views = view | not(both active at row t); after the agent's own OR no inactive key is ever
    allowed."""
    learner, *_ = refil
    k_im = update_keys(KEY)[0]
    im = learner.imagined_groups(k_im, window)
    groups, active0 = np.asarray(im.groups), np.asarray(im.active0)
    assert groups.shape == (B, NE)
    np.testing.assert_array_equal(active0, ~np.asarray(window.entity_mask[:, 0]))
    alloc = learner._alloc(window)
    agent_m, mixer_m = (np.asarray(x) for x in jax.jit(learner._refil_masks)(im, window, alloc))
    assert agent_m.shape == mixer_m.shape == (B, T, 2, NA, NE)
    for b in range(B):
        for t in range(T):
            r = row(window, b, t)
            act_t = ~r["entity_mask"]
            for i in range(NA):
                for j in range(NE):
                    same = (active0[b, i] and active0[b, j] and groups[b, i] == groups[b, j])
                    both_t = act_t[i] and act_t[j]
                    view = (not same, same)
                    for v in range(2):
                        assert agent_m[b, t, v, i, j] == (view[v] or r["obs_mask"][i, j])
                        assert mixer_m[b, t, v, i, j] == (view[v] or not both_t)
                    if both_t and i != j:  # exactly one mixer view allows an active pair
                        assert mixer_m[b, t, 0, i, j] != mixer_m[b, t, 1, i, j]
            for v in range(2):
                used = np.asarray(agent_key_mask(agent_m[b, t, v], r["entity_mask"], NA))
                assert used[:, ~act_t].all() and mixer_m[b, t, v][:, ~act_t].all()
    # F5: building 2 of window 1 is absent at row 0: in no group, yet visible to the
    # mixer's interaction view once it appears
    e = NA + 2
    assert not active0[1, e]
    assert mixer_m[1, 2, 0, 0, e] and not mixer_m[1, 2, 1, 0, e]


def test_refil_row_activity_flag_and_mask_mode(window):
    """imagine_row_activity=False uses window row 0's activity (the original); 'mask' mode
    adds the subtask groups to the mixer views only (F4: not to the agent views)."""
    r = row(window, 1, 2)
    groups = np.zeros(NE, bool)
    active0 = ~np.asarray(window.entity_mask[1, 0])
    alloc = np.zeros((NA, NT), bool)
    orig = QMixLearner(QMixConfig(imagine=True, imagine_row_activity=False, **SIZES))
    _, mixer_m = orig.refil_row_masks(groups, active0, r["obs_mask"], r["entity_mask"],
                                      r["entity2task_mask"], alloc)
    assert np.asarray(mixer_m)[:, :, NA + 2].all()  # absent at row 0: blocked in both views
    masked = QMixLearner(QMixConfig(imagine=True, subtask_cond="mask", **SIZES))
    alloc = np.array([[1, 0, 0], [0, 1, 0]], bool)  # agent 0 on building 0's subtask
    e2t = r["entity2task_mask"].copy()
    e2t[:NA] = ~alloc
    agent_m, mixer_m = (np.asarray(x) for x in masked.refil_row_masks(
        groups, np.ones(NE, bool), np.zeros((NE, NE), bool), np.zeros(NE, bool), e2t, alloc))
    # everyone in one group: the within view allows everything, the subtask mask does not
    assert not agent_m[0].any()
    np.testing.assert_array_equal(mixer_m[0, 0], [False, True, False, True, True])


def test_imagined_loss_matches_slow_reference(refil, window):
    """L_im = Σ m (Q_im - Z)² / Σ m with Q_im = a·elu(q^Wᵀ W1^W + q^Iᵀ W1^I + b1)·wF + V + b,
    everything rebuilt row by row from the drawn groups."""
    learner, state, update = refil
    _, metrics = update(state, window, KEY)
    y, mask, _ = jax.jit(learner.targets)(state, window)
    mixer = state.params["mixer"]["params"]
    _, a, b_, z = popart_update(state.stats, mixer["popart_a"], mixer["popart_b"], y,
                                mask.astype(jnp.float32))
    params = jax.tree.map(lambda x: x, state.params)
    params["mixer"]["params"] = dict(mixer, popart_a=a, popart_b=b_)
    im = learner.imagined_groups(update_keys(KEY)[0], window)
    groups, active0 = np.asarray(im.groups), np.asarray(im.active0)
    agent_q = jax.jit(lambda *a: learner.agent_q(*a, None, False))
    mix = jax.jit(learner.mix)
    alloc = np.zeros((NA, NT), bool)
    z, m = np.asarray(z)[..., 0], np.asarray(mask)[..., 0].astype(np.float64)
    total = 0.0
    for b in range(B):
        same = np.array([[active0[b, i] and active0[b, j] and groups[b, i] == groups[b, j]
                          for j in range(NE)] for i in range(NA)])
        for t in range(T - 1):
            r = row(window, b, t)
            act = ~r["entity_mask"]
            both = act[:NA, None] & act[None, :]
            chosen, mixer_views = [], []
            for view in (~same, same):
                q = np.asarray(agent_q(params["agent"], r["entities"],
                                       view | r["obs_mask"][:NA], r["entity_mask"],
                                       r["entity2task_mask"], r["last_action"], alloc))
                chosen.append(q[np.arange(NA), r["actions"]])
                mixer_views.append(view | ~both)
            _, q_im = mix(params["mixer"], jnp.asarray(np.concatenate(chosen)), r["entities"],
                          r["entity_mask"], r["entity2task_mask"], r["last_action"], alloc,
                          jnp.asarray(np.stack(mixer_views)))
            total += m[b, t] * (float(q_im[0]) - z[b, t]) ** 2
    np.testing.assert_allclose(float(metrics["losses/im_loss"]), total / m.sum(), rtol=1e-5)


# ================================================================================= COPA
def held_loop(x, decision):
    """Slow F16 broadcast: row t holds x at the latest decision row <= t, zeros before."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        cur = None
        for t in range(x.shape[1]):
            if decision[b, t]:
                cur = x[b, t]
            out[b, t] = 0.0 if cur is None else cur
    return out


def test_hold_at_decisions_matches_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 7, NA, 3)).astype(np.float32)
    dec = rng.random((4, 7)) < 0.3
    dec[0] = False  # a window without any decision row stays all-zero
    dec[1, 0] = True
    got = np.asarray(jax.jit(hold_at_decisions)(jnp.asarray(x), jnp.asarray(dec)))
    np.testing.assert_array_equal(got, held_loop(x, dec))
    # gradients reach exactly the decision rows that some later row uses
    g = np.asarray(jax.grad(lambda v: hold_at_decisions(v, jnp.asarray(dec)).sum())(x))
    np.testing.assert_array_equal(np.abs(g).sum((-1, -2)) > 0, dec)


def test_copa_strategies_match_slow_loop(copa, strategies, window):
    """Coach samples at decision rows, held forward, zeros before a window's first decision;
    the coach's mean and log-variance are held the same way."""
    learner, state, _ = copa
    key = jax.random.PRNGKey(11)
    alloc = learner._alloc(window)
    strat = strategies(state.params["coach"], window, alloc, key)
    k_perm, k_noise, _ = jax.random.split(key, 3)  # copa_strategies: (perm, noise, views)
    perm = learner.draw_perm(k_perm)
    noise = np.asarray(jax.random.normal(k_noise, (B, T, NA, DA)))
    coach = jax.jit(learner.coach_row)
    mu = np.zeros((B, T, NA, DA), np.float32)
    logvar = np.zeros_like(mu)
    for b in range(B):
        for t in range(T):
            r = row(window, b, t)
            m_, lv = coach(state.params["coach"], r["entities"], r["entity_mask"],
                           r["entity2task_mask"], alloc[b, t], perm)
            mu[b, t], logvar[b, t] = m_, lv
    z = mu + np.exp(0.5 * logvar) * noise
    for got, want in ((strat.z, z), (strat.mu, mu), (strat.logvar, logvar)):
        np.testing.assert_allclose(np.asarray(got), held_loop(want, DECISIONS), atol=1e-5)
    zs = np.asarray(strat.z)
    np.testing.assert_array_equal(zs[1, :2], 0.0)
    np.testing.assert_array_equal(zs[0, 1], zs[0, 0])
    assert np.abs(zs[0, 2] - zs[0, 1]).max() > 1e-3
    assert np.all((logvar >= -10.0) & (logvar <= 0.0))


def acting_obs(window, memberships: bool):
    """Three environments from window rows (0, 0), (0, 1), (1, 2)."""
    idx = [(0, 0), (0, 1), (1, 2)]
    rows = [row(window, b, t) for b, t in idx]
    e2t = np.stack([r["entity2task_mask"] for r in rows])
    if not memberships:  # no subtask embedding at all: the coach ignores the permutation
        e2t[:] = True
    obs = Observation(
        entities=jnp.asarray(np.stack([r["entities"] for r in rows])),
        avail_actions=jnp.asarray(np.stack([r["avail_actions"] for r in rows])),
        obs_mask=jnp.asarray(np.stack([r["obs_mask"] for r in rows])),
        entity_mask=jnp.asarray(np.stack([r["entity_mask"] for r in rows])),
        entity2task_mask=jnp.asarray(e2t),
        task_mask=jnp.asarray(np.stack([r["task_mask"] for r in rows])),
    )
    last = jnp.asarray(np.stack([r["last_action"] for r in rows]))
    return obs, last, jnp.zeros((3, NA, NT), bool)


def test_copa_act_holds_z_between_decisions(copa, copa_act, window):
    learner, state, _ = copa
    assert learner.init_carry is not None
    obs, last, alloc = acting_obs(window, memberships=True)
    act = copa_act
    carry = learner.init_carry(3)
    assert carry.shape == (3, NA, DA) and not np.asarray(carry).any()
    decisions = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1]], bool)
    for s, dec in enumerate(decisions):
        actions, new = act(state.params, jax.random.PRNGKey(s), obs, last, alloc,
                           jnp.float32(0.3), carry, jnp.asarray(dec))
        assert actions.shape == (3, NA) and actions.dtype == jnp.int32
        new, old = np.asarray(new), np.asarray(carry)
        for e in range(3):
            if dec[e]:
                assert np.abs(new[e] - old[e]).min() > 0  # a fresh draw
            else:
                np.testing.assert_array_equal(new[e], old[e])
        carry = jnp.asarray(new)


def test_copa_test_mode_uses_the_mean(copa, copa_act, window):
    learner, state, _ = copa
    obs, last, alloc = acting_obs(window, memberships=False)
    act = copa_act
    carry, dec = learner.init_carry(3), jnp.ones(3, bool)
    run = [np.asarray(act(state.params, jax.random.PRNGKey(s), obs, last, alloc,
                          jnp.float32(eps), carry, dec)[1])
           for eps, s in ((0.0, 0), (0.0, 1), (0.2, 0), (0.2, 1))]
    np.testing.assert_array_equal(run[0], run[1])  # test mode: no noise
    assert np.abs(run[2] - run[3]).max() > 1e-3  # training: sampled
    coach = jax.jit(learner.coach_row)
    for e in range(3):
        mu, _ = coach(state.params["coach"], obs.entities[e], obs.entity_mask[e],
                      obs.entity2task_mask[e], alloc[e], jnp.arange(NT))
        np.testing.assert_allclose(run[0][e], np.asarray(mu), atol=1e-6)


def test_stateless_act_and_trainer_protocol(window):
    from alma_jax.trainer import _act_fns

    plain = QMixLearner(QMixConfig(**SIZES))
    assert plain.init_carry is None
    assert _act_fns(plain) == (plain.act, None)
    with_copa = QMixLearner(QMixConfig(copa=True, **SIZES))
    act, init = _act_fns(with_copa)
    assert act == with_copa.act and init(2).shape == (2, NA, DA)


def test_vi_terms_with_clipping_match_hand_computation():
    """log q clipped per dimension to [-1000, 0], entropy to [0, 10], sums over DA, mean over
    active agents, then over unmasked rows; the loss terms are the negatives."""
    rng = np.random.default_rng(3)
    S, d = 4, 3
    z = rng.normal(size=(S, NA, d)).astype(np.float32)
    q_mu = (z + rng.normal(size=z.shape) * 0.5).astype(np.float32)
    q_logvar = rng.uniform(-10, 0, size=z.shape).astype(np.float32)
    c_logvar = rng.uniform(-10, 0, size=z.shape).astype(np.float32)
    q_mu[0, 0] = z[0, 0]  # at the mean of a narrow density: log q > 0, clipped to 0
    q_logvar[0, 0] = -8.0
    q_mu[1, 0, 0] = z[1, 0, 0] + 100.0  # far tail: log q < -1000, clipped
    q_logvar[1, 0, 0] = -5.0
    c_logvar[0, 1] = 0.0  # entropy 1.419 per dim; -10 gives a negative entropy, clipped to 0
    c_logvar[1, 0] = -10.0
    active = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], bool)  # a row without agents
    row_mask = np.array([1, 1, 1, 0], bool)
    vi, ent = jax.jit(vi_terms)(*map(jnp.asarray, (z, c_logvar, q_mu, q_logvar, active,
                                                    row_mask)))
    logq = sps.norm.logpdf(z, q_mu, np.exp(0.5 * q_logvar.astype(np.float64)))
    assert logq.max() > 0 and logq.min() < -1000  # both clips are exercised
    h = sps.norm.entropy(scale=np.exp(0.5 * c_logvar.astype(np.float64)))
    assert h.min() < 0
    logq, h = np.clip(logq, -1000, 0).sum(-1), np.clip(h, 0, 10).sum(-1)
    want_vi = want_ent = 0.0
    for s in range(S):
        n = active[s].sum() + 1e-8
        want_vi -= row_mask[s] * (logq[s] * active[s]).sum() / n
        want_ent -= row_mask[s] * (h[s] * active[s]).sum() / n
    np.testing.assert_allclose(float(vi), want_vi / row_mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(ent), want_ent / row_mask.sum(), rtol=1e-5)


@pytest.fixture(scope="module")
def copa_step(copa, window):
    learner, state, update = copa
    new, metrics = update(state, window, KEY)
    return new, metrics


def test_copa_update_vi_metrics_match_reference(copa, strategies, copa_step, window):
    """The logged VI terms: recognition net on (s_t, a_t) of every row, the held strategies of
    the update's coach draw, flat loss mask over rows 0..T-2."""
    learner, state, _ = copa
    _, metrics = copa_step
    _, k_coach, _, k_recog = update_keys(KEY)
    alloc = learner._alloc(window)
    strat = strategies(state.params["coach"], window, alloc, k_coach)
    perm = learner.draw_perm(k_recog)
    recog = jax.jit(learner.recog_row)
    q = [[recog(state.params["recog"], *(row(window, b, t)[f] for f in (
        "entities", "entity_mask", "entity2task_mask")), alloc[b, t], window.actions[b, t], perm)
          for t in range(T)] for b in range(B)]
    q_mu = np.array([[np.asarray(x[0]) for x in qb] for qb in q])
    q_lv = np.array([[np.asarray(x[1]) for x in qb] for qb in q])
    z, lv = np.asarray(strat.z, np.float64), np.asarray(strat.logvar, np.float64)
    logq = np.clip(sps.norm.logpdf(z, q_mu, np.exp(0.5 * q_lv)), -1000, 0).sum(-1)
    h = np.clip(sps.norm.entropy(scale=np.exp(0.5 * lv)), 0, 10).sum(-1)
    active = ~np.asarray(window.entity_mask)[..., :NA]
    m = np.asarray(bf.loss_mask(window))[:, :-1]
    assert not m.all()  # the final-observation row of window 0 is masked

    def term(x):
        per_row = (x * active).sum(-1) / (active.sum(-1) + 1e-8)
        return -(per_row[:, :-1] * m).sum() / m.sum()

    np.testing.assert_allclose(float(metrics["losses/copa_vi_loss"]), term(logq), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["losses/copa_entropy_loss"]), term(h), rtol=1e-4)


def test_copa_q_loss_gradients_reach_the_coach(copa, copa_step):
    """vi_lambda = 0: the coach still learns (through z in the Q loss); the recognition net,
    trained by the VI term only, gets exactly zero gradient."""
    _, state, _ = copa
    new, metrics = copa_step
    assert_finite((new, metrics))
    for name in ("fc_in", "attn", "fc_mu", "task_embed"):
        moved = [np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(
            jax.tree.leaves(new.params["coach"]["params"][name]),
            jax.tree.leaves(state.params["coach"]["params"][name]))]
        assert max(moved) > 1e-6, name
    assert_trees_close(new.params["recog"], state.params["recog"], atol=0.0)


def test_copa_target_coach_drives_targets_and_is_copied(copa, copa_step, window):
    learner, state, update = copa
    new, metrics = copa_step
    # the target coach's strategies enter the bootstrap values
    tp = jax.tree.map(lambda x: x, state.target_params)
    tp["coach"] = jax.tree.map(lambda x: 3.0 * x, tp["coach"])
    _, met_b = update(state.replace(target_params=tp), window, KEY)
    assert abs(float(met_b["train_metrics/target_mean"])
               - float(metrics["train_metrics/target_mean"])) > 1e-5
    # hard copy of every network, the coach and the recognition net included
    tgt = learner.update_target(new)
    assert set(tgt.target_params) == {"agent", "mixer", "coach", "recog"}
    assert_trees_close(tgt.target_params, new.params, atol=0.0)
