"""AQL high-level learner on SaveTheCity observations (spec 3.6-3.11, 6.5 items 8, 9).

A hand-built window (B=2, T=8) with known decision rows, rewards, resets and time-outs is
checked against hand-computed segment sums and masks; the critic targets are recomputed
row by row from the target critic; acting is checked against the critic argmax and the
exploration rules; one update runs under jit + vmap over seeds + lax.scan.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import envs_jax
from alma_jax import buffer as bf
from alma_jax.learners.aql import METRIC_NAMES, AQLConfig, AQLLearner
from alma_jax.popart import PopArtStats

ENV = envs_jax.make("savethecity")
NA, NT, NE, ED, NACT = ENV.n_agents, ENV.n_tasks, ENV.n_entities, ENV.entity_dim, ENV.n_actions
B, T, AL, GAMMA, R = 2, 8, 2, 0.99, 8
CFG = AQLConfig(n_agents=NA, n_tasks=NT, entity_dim=ED, embed_dim=16, n_heads=2, n_proposals=8,
                max_bs=R, action_length=AL, gamma=GAMMA, decay_old=1000)
LEARNER = AQLLearner(CFG)
RESET = jax.jit(ENV.reset)  # eager reset is much slower
TARGET_STATS = PopArtStats(jnp.float32(0.3), jnp.float32(2.5), jnp.bool_(True))

# Hand-built window: decision rows, and the expected flattened decision list.
DP = np.zeros((B, T), bool)
DP[0, [0, 3, 5]] = True  # b=0: one episode, terminates at transition 5, row 6 final obs
DP[1, [0, 4, 6]] = True  # b=1: times out at transition 2, row 3 final obs, new episode at 4
DECISIONS = [(0, 0), (0, 3), (0, 5), (1, 0), (1, 4), (1, 6)]
PADDED_ROW = (1, 6)  # a decision row whose entities, agents and subtasks are all padding
N_KEYS = 1024  # environments per `choose` call in the acting tests (one compiled shape)


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Compile with most XLA optimisations off: these tests check values, not speed."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@functools.cache
def obs_of(seed: int):
    obs, _ = RESET(jax.random.key(seed))
    return jax.tree.map(np.asarray, obs)


def make_window():
    """Window [2, 8] from real observations; returns (window, rewards, held alloc indices)."""
    rng = np.random.default_rng(0)
    ep = bf.empty_episodes((B,), T - 1, NA, NE, NT, NACT, ED)
    obs = [[obs_of(10 * b + (t >= 4 and b == 1)) for t in range(T)] for b in range(B)]
    f = {k: np.stack([np.stack([getattr(o, k) for o in row]) for row in obs])
         for k in ("entities", "entity_mask", "entity2task_mask", "task_mask", "avail_actions")}
    b_, t_ = PADDED_ROW
    f["entities"][b_, t_] = 0.0
    f["entity_mask"][b_, t_] = True
    f["entity2task_mask"][b_, t_] = True
    f["task_mask"][b_, t_] = True
    filled = np.ones((B, T), bool)
    filled[0, 7] = False  # padding after episode 0's final observation row
    reward = rng.normal(size=(B, T)).astype(np.float32)
    reward[0, 6:] = reward[1, 3] = 0.0  # final-observation / padding rows carry nothing
    terminated = np.zeros((B, T), bool)
    reset = np.zeros((B, T), bool)
    terminated[0, 5] = reset[0, 5] = True
    reset[1, 2] = True  # time-out
    starts = {(0, 0), (1, 0), (1, 4)}
    held = np.full((B, T, NA), -1)
    prev = np.full((B, T, NA), -1)
    for b in range(B):
        for t in range(T):
            if (b, t) not in starts and filled[b, t]:
                prev[b, t] = held[b, t - 1]
            active_ag = ~f["entity_mask"][b, t, :NA]
            open_tasks = np.flatnonzero(~f["task_mask"][b, t])
            if DP[b, t] and open_tasks.size:
                held[b, t] = np.where(active_ag, rng.choice(open_tasks, NA), -1)
            elif filled[b, t]:
                held[b, t] = held[b, t - 1]
    alloc = held[..., None] == np.arange(NT)
    f["entity2task_mask"][:, :, :NA] = ~alloc
    t_added = np.array([[900] * T, [400] * 4 + [1000] * 4], np.int32)
    fields = dict(
        f, obs_mask=np.zeros((B, T, NE, NE), bool), actions=np.zeros((B, T, NA), np.int32),
        reward=reward, task_rewards=np.zeros((B, T, NT), np.float32), terminated=terminated,
        reset=reset, filled=filled, hier_decision=DP, tasks_terminated=np.zeros((B, T, NT), bool),
        last_action=np.full((B, T, NA), -1, np.int32), prev_alloc=prev.astype(np.int32))
    fields = {k: jnp.asarray(v, getattr(ep, k).dtype) for k, v in fields.items()}
    zeros = jnp.zeros((B, T), jnp.int32)
    w = bf.Window(**fields, t_added=jnp.asarray(t_added), slot=zeros, row=zeros)
    return w, reward, held


@functools.cache
def setup():
    """Window, meta batch, and two seeds of learner state (init vmapped over seeds)."""
    w, reward, held = make_window()
    obs = jax.tree.map(lambda x: jnp.asarray(x), obs_of(0))
    # rbg keys: the same init, compiled in about half the time of threefry's.
    keys = jax.random.split(jax.random.key(0, impl="rbg"), 2)
    states = jax.jit(jax.vmap(LEARNER.init, in_axes=(0, None)))(keys, obs)
    meta = jax.jit(LEARNER.make_meta)(w)
    return w, reward, held, states, meta


def seed(states, i):
    return jax.tree.map(lambda x: x[i], states)


@functools.cache
def critic_value():
    return jax.jit(LEARNER.critic_value)


# ---------------------------------------------------------------------- meta batch
def expected_segments(reward):
    seg_r = [reward[0, 0:3].sum(), reward[0, 3:5].sum(), reward[0, 5:8].sum(),
             reward[1, 0:4].sum(), reward[1, 4:6].sum(), reward[1, 6:8].sum()]
    seg_d = [False, False, True, False, False, False]
    # (1,0) contains the time-out; (1,6) is the window row's last decision and not terminal.
    mask = [True, True, True, False, True, False]
    return np.array(seg_r) / AL, np.array(seg_d), np.array(mask)


def test_make_meta_on_hand_built_window():
    w, reward, held, _, meta = setup()
    seg_r, seg_d, mask = expected_segments(reward)
    n = len(DECISIONS)
    exists = np.arange(R) < n
    np.testing.assert_array_equal(meta.exists, exists)
    np.testing.assert_allclose(meta.seg_r[:n], seg_r, atol=1e-6)
    np.testing.assert_array_equal(meta.seg_d[:n], seg_d)
    np.testing.assert_array_equal(meta.mask, np.r_[mask, np.zeros(R - n, bool)])
    rows = tuple(np.array(DECISIONS).T)
    np.testing.assert_array_equal(meta.t_added[:n], np.asarray(w.t_added)[rows])
    np.testing.assert_array_equal(meta.entities[:n], np.asarray(w.entities)[rows])
    # Executed allocation = agent rows of entity2task_mask; last_alloc = stored prev_alloc.
    np.testing.assert_array_equal(meta.alloc[:n], (held[..., None] == np.arange(NT))[rows])
    expected_last = np.zeros((n, NA, NT), bool)
    for i, (b, t) in enumerate(DECISIONS):
        if t > 0 and (b, t) != (1, 4):
            expected_last[i] = held[b, t - 1][:, None] == np.arange(NT)
    np.testing.assert_array_equal(meta.last_alloc[:n], expected_last)


def test_make_meta_truncation_and_reconstructed_last_alloc():
    w, reward, held, _, _ = setup()
    learner = AQLLearner(AQLConfig(NA, NT, ED, max_bs=4, action_length=AL,
                                   stored_prev_alloc=False))
    meta = jax.jit(learner.make_meta)(w)
    seg_r, seg_d, mask = expected_segments(reward)
    np.testing.assert_array_equal(meta.exists, [True] * 4)
    np.testing.assert_allclose(meta.seg_r, seg_r[:4], atol=1e-6)
    np.testing.assert_array_equal(meta.mask, mask[:4])
    # The original's reconstruction: previous row's allocation, zero after a reset and at
    # window row 0; matches the stored value here because no window starts mid-episode.
    expected = np.zeros((4, NA, NT), bool)
    expected[1] = held[0, 2][:, None] == np.arange(NT)
    expected[2] = held[0, 4][:, None] == np.arange(NT)
    np.testing.assert_array_equal(meta.last_alloc, expected)


# ----------------------------------------------------------------------- targets
@functools.cache
def targets_fn():
    return jax.jit(LEARNER.critic_targets)


def target_state():
    """Online critic with a non-trivial affine, a different target critic, target stats."""
    _, _, _, states, _ = setup()
    s = seed(states, 0)
    crit = s.critic["params"]
    critic = dict(s.critic, params=dict(crit, popart_a=jnp.array([1.3]),
                                        popart_b=jnp.array([-0.2])))
    return s.replace(critic=critic, target_critic=seed(states, 1).critic,
                     target_critic_stats=TARGET_STATS)


def test_critic_targets_follow_the_spec_formula():
    _, reward, _, _, meta = setup()
    state = target_state()
    y, m, props, t_perm = targets_fn()(state, meta, jax.random.key(7))
    seg_r, seg_d, mask = expected_segments(reward)
    n = len(DECISIONS)
    # mask(r) and exists(r + 1)
    np.testing.assert_array_equal(m, [True, True, True, False, True, False, False, False])
    # Online critic picks the best proposal (normalised scale, first on ties).
    np.testing.assert_array_equal(props.best, np.argmax(np.asarray(props.values), -1))
    r0 = 1
    q = critic_value()(state.critic, meta.entities[r0], meta.entity_mask[r0],
                             meta.entity2task_mask[r0], props.allocs[r0, 3], props.critic_perm)
    np.testing.assert_allclose(q, props.values[r0, 3], atol=1e-5)
    # Y = seg_r / action_length + gamma (1 - seg_d) V_target(best proposal of the next row).
    sigma = np.sqrt(2.5)
    for r in range(n - 1):
        nxt = r + 1
        best = props.allocs[nxt, props.best[nxt]]
        v = critic_value()(state.target_critic, meta.entities[nxt],
                                 meta.entity_mask[nxt], meta.entity2task_mask[nxt], best, t_perm)
        expected = seg_r[r] + GAMMA * (1 - seg_d[r]) * (0.3 + sigma * float(v))
        np.testing.assert_allclose(y[r], expected, rtol=1e-5, atol=1e-5)


SPEC_LEARNER = AQLLearner(dataclasses.replace(CFG, loss_weighting="spec"))


def test_recency_weights_and_critic_loss_normalisation():
    """E4: the original computes Σ m·w²·δ² / Σ m·w; loss_weighting='spec' is Σ m·w·δ² / Σ m·w."""
    _, _, _, states, meta = setup()
    w = LEARNER.recency(jnp.array([1000, 500, 0, -500]), 1000)
    np.testing.assert_allclose(w, [1.0, 0.5, 0.0, 0.0])  # decay_old = 1000 in CFG
    assert CFG.loss_weighting == "original"
    loss, spec_loss = jax.jit(LEARNER.critic_loss), jax.jit(SPEC_LEARNER.critic_loss)
    critic = seed(states, 0).critic
    z = jnp.linspace(-1.0, 1.0, R)
    weight = jnp.array([1.0, 0.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    perm = jnp.arange(NT)
    # one-hot weights give each row's squared error (Q - Z)^2 in both forms
    per_row = np.array([float(loss(critic, meta, z, jnp.eye(R)[r], perm)) for r in range(4)])
    w4 = np.asarray(weight[:4])
    original = np.dot(w4 ** 2, per_row) / w4.sum()
    spec = np.dot(w4, per_row) / w4.sum()
    assert abs(original - spec) > 1e-3 * abs(spec)  # the batch tells the two apart
    np.testing.assert_allclose(loss(critic, meta, z, weight, perm), original, rtol=1e-5)
    np.testing.assert_allclose(spec_loss(critic, meta, z, weight, perm), spec, rtol=1e-5)
    # Garbage targets on zero-weight rows never leak in.
    z_bad = z.at[2].set(jnp.nan).at[5].set(jnp.inf)
    np.testing.assert_allclose(loss(critic, meta, z_bad, weight, perm), original, rtol=1e-5)


def test_amortisation_loss_weighting():
    """E3: the original weights L_amort's rows by w on every existing row but the last."""
    _, _, _, _, meta = setup()
    assert np.asarray(meta.exists).tolist() == [True] * 6 + [False] * 2
    meta = meta.replace(mask=jnp.array([1, 1, 1, 0, 1, 1, 0, 0], bool),
                        t_added=jnp.array([1000, 500, 250, 0, 750, 0, 0, 0], jnp.int32))
    t_env = 1000  # w = 1, .5, .25, 0, .75, 0 (decay_old = 1000)
    np.testing.assert_allclose(LEARNER.amort_weight(meta, t_env),
                               [1.0, 0.5, 0.25, 0.0, 0.75, 1.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(SPEC_LEARNER.amort_weight(meta, t_env),
                               [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    state = target_state()
    _, _, props, _ = targets_fn()(state, meta, jax.random.key(8))
    amort = jax.jit(lambda rw: LEARNER.policy_loss(state.pi, meta, props, rw)[1][0])
    nll = np.array([float(amort(jnp.eye(R)[r])) for r in range(6)])  # -log pi(best) per row
    rw = LEARNER.amort_weight(meta, t_env)
    want = np.dot(np.asarray(rw[:6]), nll) / float(np.sum(rw))
    np.testing.assert_allclose(amort(rw), want, rtol=1e-5)


def test_proposal_loss_step_increases_best_log_prob():
    _, _, _, _, meta = setup()
    state = target_state()
    _, _, props, _ = targets_fn()(state, meta, jax.random.key(8))

    @jax.jit
    def step(pi, opt):
        (_, (amort, _)), g = jax.value_and_grad(LEARNER.policy_loss, has_aux=True)(
            pi, meta, props)
        upd, opt = LEARNER.optimizer.update(g, opt, pi)
        return jax.tree.map(lambda p, u: p + u, pi, upd), opt, amort

    pi1, opt1, amort0 = step(state.pi, state.pi_opt_state)
    _, _, amort1 = step(pi1, opt1)
    # amort = -mean over loss rows of log pi(best proposal)
    assert amort1 < amort0 - 1e-3, (amort0, amort1)


# ------------------------------------------------------------------------ acting
@functools.cache
def choose_many():
    return jax.jit(jax.vmap(LEARNER.choose, in_axes=(None, 0, None, None)))


def acting_obs():
    """A real observation with agent 4 and subtask 5 padded, subtask 2 finished."""
    obs = jax.tree.map(jnp.asarray, obs_of(0))
    obs = obs.replace(task_mask=obs.task_mask.at[2].set(True))
    assert bool(obs.entity_mask[4]) and bool(obs.task_mask[5])
    prev = jnp.zeros((NA, NT), bool).at[jnp.arange(4), jnp.array([0, 1, 3, 3])].set(True)
    return obs, prev


def test_decide_returns_critic_argmax_without_exploration():
    _, _, _, states, _ = setup()
    state = seed(states, 0)
    obs, prev = acting_obs()
    keys = jax.random.split(jax.random.key(1), N_KEYS)
    params = LEARNER.alloc_params(state, 0.0, 0.0)
    alloc, props = choose_many()(params, keys, obs, prev)
    best = np.argmax(np.asarray(props.values), -1)
    np.testing.assert_array_equal(props.best, best)
    np.testing.assert_array_equal(alloc, np.asarray(props.allocs)[np.arange(N_KEYS), best])
    assert len(set(best.tolist())) > 1  # the choice is not trivially proposal #0
    assert not np.asarray(alloc)[:, 4].any() and not np.asarray(alloc)[:, :, [2, 5]].any()
    np.testing.assert_array_equal(np.asarray(alloc)[:, :4].sum(-1), 1)
    # The critic values are the critic's, with the permutation it was given.
    q = critic_value()(state.critic, obs.entities, obs.entity_mask, obs.entity2task_mask,
                             props.allocs[0, 5], props.critic_perm[0])
    np.testing.assert_allclose(q, props.values[0, 5], atol=1e-5)
    # Ties (a constant critic) go to the first proposal.
    crit = state.critic["params"]
    flat = dict(crit, fc_out=dict(kernel=jnp.zeros_like(crit["fc_out"]["kernel"]),
                                  bias=crit["fc_out"]["bias"]))
    tied = params.replace(critic=dict(state.critic, params=flat))
    alloc_t, props_t = choose_many()(tied, keys, obs, prev)
    np.testing.assert_array_equal(props_t.best, 0)
    np.testing.assert_array_equal(alloc_t, props_t.allocs[:, 0])


def test_decide_exploration():
    _, _, _, states, _ = setup()
    state = seed(states, 0)
    obs, prev = acting_obs()
    keys = jax.random.split(jax.random.key(2), N_KEYS)
    # eps_prop = 1: proposal #0 (an ordinary sample), whatever the critic prefers.
    alloc, props = choose_many()(LEARNER.alloc_params(state, 0.0, 1.0), keys, obs, prev)
    np.testing.assert_array_equal(alloc, props.allocs[:, 0])
    # eps_alloc = 1: every active agent uniformly on an open subtask, inactive rows zero.
    alloc, _ = choose_many()(LEARNER.alloc_params(state, 1.0, 0.0), keys, obs, prev)
    alloc = np.asarray(alloc)
    assert not alloc[:, 4].any()
    counts = alloc[:, :4].sum(0)  # [4 agents, NT]
    assert not counts[:, [2, 5]].any()
    for i in range(4):
        _, p = sps.chisquare(counts[i, [0, 1, 3, 4]])
        assert p > 1e-3, (i, counts[i])
    # Agents explore independently: not all agents on the same subtask as agent 0.
    assert (alloc[:, 1].argmax(-1) != alloc[:, 0].argmax(-1)).mean() > 0.5


def test_keep_open_keeps_agents_on_open_subtasks_only():
    """The evaluation diagnostic keep_open: agents whose previous subtask is open keep it;
    the others (previous subtask finished, or none) get exactly the learned choice."""
    _, _, _, states, _ = setup()
    state = seed(states, 0)
    obs, _ = acting_obs()  # subtask 2 finished, agent 4 padded
    prev = jnp.zeros((NA, NT), bool).at[jnp.array([0, 1, 2]), jnp.array([0, 2, 3])].set(True)
    keys = jax.random.split(jax.random.key(3), N_KEYS)
    params = LEARNER.alloc_params(state, 0.0, 0.0)
    free, _ = choose_many()(params, keys, obs, prev)
    kept, _ = choose_many()(params.replace(keep_open=jnp.float32(1.0)), keys, obs, prev)
    free, kept = np.asarray(free), np.asarray(kept)
    np.testing.assert_array_equal(kept[:, [0, 2]], np.broadcast_to(np.asarray(prev)[[0, 2]],
                                                                   kept[:, [0, 2]].shape))
    np.testing.assert_array_equal(kept[:, [1, 3, 4]], free[:, [1, 3, 4]])
    assert (free[:, [0, 2]] != np.asarray(prev)[[0, 2]]).any()  # the choice would move them


def test_greedy_candidate_is_appended_with_zero_noise():
    learner = AQLLearner(AQLConfig(NA, NT, ED, n_proposals=4, include_greedy_proposal=True))
    g = learner._candidates((3,), jax.random.key(0))
    assert g.shape == (3, 5, NA, NT)
    assert np.all(np.asarray(g[:, -1]) == 0) and np.all(np.asarray(g[:, :-1]) != 0)


# ------------------------------------------------------------------------ update
@pytest.mark.parametrize("n_updates", [2])
def test_update_under_jit_vmap_scan(n_updates):
    w, _, _, states, _ = setup()
    states = states.replace(target_critic_stats=jax.tree.map(
        lambda x: jnp.stack([x, x]), TARGET_STATS))

    def run(state, key):
        def body(s, k):
            s, metrics = LEARNER.update(s, w, k, 1000)
            return s, metrics
        return jax.lax.scan(body, state, jax.random.split(key, n_updates))

    new, metrics = jax.jit(jax.vmap(run))(states, jax.random.split(jax.random.key(3), 2))
    assert set(metrics) == set(METRIC_NAMES)
    for name, v in metrics.items():
        assert v.shape == (2, n_updates) and np.isfinite(v).all(), name
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(new))
    # Both networks moved, the Pop-Art statistics are initialised, targets untouched.
    for net in ("pi", "critic"):
        before, after = jax.tree.leaves(getattr(states, net)), jax.tree.leaves(getattr(new, net))
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), net
    assert np.asarray(new.critic_stats.initialised).all()
    for a, b in zip(jax.tree.leaves(states.target_critic), jax.tree.leaves(new.target_critic)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(new.target_critic_stats.mu, np.float32(0.3))
    m = jax.tree.map(lambda x: x[0, 0], metrics)
    assert 0 < m["alloc_metrics/best_prob"] <= 1
    assert m["losses/alloc_entropy"] > 0
    # The two seeds differ (independent keys and parameters).
    assert not np.allclose(metrics["losses/alloc_q_loss"][0], metrics["losses/alloc_q_loss"][1])
    copied = LEARNER.update_target(seed(new, 0))
    for a, b in zip(jax.tree.leaves(copied.critic), jax.tree.leaves(copied.target_critic)):
        np.testing.assert_array_equal(a, b)
    assert bool(copied.target_critic_stats.initialised)
