"""LICA learner and networks, one property per test (lica.md 16; items named in each test).

Flat tests use the GRU agent with the hypernetwork mixing critic on a hand-built window holding
a terminated, a full-length time-limit, a terminated-at-the-limit and a padded short episode.
ALMA-variant tests (lica.md 13) use the entity-attention agent and per-subtask critic.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from nn_helpers import fast_init
from scipy import stats as sps

from alma_jax import buffer as bf
from alma_jax.learners.lica import (
    LicaConfig,
    LicaLearner,
    LicaState,
    global_norm,
    lambda_returns,
    mask_full,
    td_lambda_targets,
)
from alma_jax.nn.agent import entity_inputs
from alma_jax.nn.attention import membership
from alma_jax.nn.lica import (
    NEG_LOGIT,
    EntityCritic,
    MixingCritic,
    TorchGRUCell,
    critic_key_mask,
    flat_observation,
    gru_inputs,
    gumbel_straight_through,
    mask_logits,
    policy_entropy,
    policy_probs,
)
from envs_jax.core import Observation

# ------------------------------------------------------------------------ flat fixtures
FNA, FNE, FED, FACT = 2, 3, 2, 3
FB, FT = 4, 5
# (transitions, terminated): terminated early, time limit filling all rows, terminated at the
# limit, and a short non-terminated episode (only valid for the general TD form)
FLAT_EPISODES = [(2, True), (4, False), (4, True), (1, False)]
FLAT_CFG = LicaConfig(n_agents=FNA, n_actions=FACT, n_tasks=1, agent="gru", hidden_dim=8,
                      mix_dim=4)


def flat_window(seed: int = 0, episodes=FLAT_EPISODES, T: int = FT) -> bf.Window:
    """Whole episodes [B, T] in the rollout's row layout; agent 1 of episode 2 dies at row 2."""
    rng = np.random.default_rng(seed)
    B = len(episodes)
    ep = jax.tree.map(np.array, bf.empty_episodes((B,), T - 1, FNA, FNE, 1, FACT, FED))
    for b, (n, term) in enumerate(episodes):
        rows = slice(0, n + 1)
        ep.filled[b, rows] = True
        ep.entities[b, rows] = rng.normal(size=(n + 1, FNE, FED))
        ep.obs_mask[b, rows] = rng.random((n + 1, FNE, FNE)) < 0.2
        codes = (rng.random((n + 1, FNA, FACT)) < 0.6).astype(np.int32)
        codes[..., 0] = 1
        ep.avail_actions[b, rows] = codes
        acts = np.argmax(codes * rng.random(codes.shape), -1)  # available actions only
        ep.actions[b, :n] = acts[:n]
        ep.last_action[b, 1:n + 1] = acts[:n]
        ep.last_action[b, 0] = -1
        ep.reward[b, :n] = rng.normal(size=n)
        ep.terminated[b, n - 1] = term
        ep.reset[b, n - 1] = True
        ep.entity2task_mask[b, rows] = False
    ep.entity_mask[2, 2:5, 1] = True
    ep.avail_actions[2, 2:5, 1] = [1, 0, 0]
    ep.actions[2, 2:4, 1] = 0
    ep.last_action[2, 3:5, 1] = 0
    return bf.episodes_as_window(jax.tree.map(jnp.asarray, ep), 0)


def example_obs(w: bf.Window) -> Observation:
    return Observation(w.entities[0, 0], w.avail_actions[0, 0], w.obs_mask[0, 0],
                       w.entity_mask[0, 0], w.entity2task_mask[0, 0], w.task_mask[0, 0])


def fast_state(learner: LicaLearner, example: Observation, seed: int = 0):
    """A fresh LicaState with numpy-drawn parameters in PyTorch-like ranges.

    Compiling flax's RNG `init` costs seconds per network on the CI CPUs; the values only need
    to be generic, the optimiser states and counters are the real ones.
    """
    shapes = jax.eval_shape(learner.init, jax.random.key(0), example).params
    rng = np.random.default_rng(seed)

    def draw(s):
        bound = 1 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.3
        return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

    params = jax.tree.map(draw, shapes)
    zero = jnp.zeros((), jnp.int32)
    return LicaState(params=params, actor_opt=learner.actor_tx.init(params["agent"]),
                     critic_opt=learner.critic_tx.init(params["critic"]),
                     target_critic=params["critic"], critic_steps=zero, last_target_copy=zero,
                     target_updates=zero)


class Fns:
    """Jitted learner functions, compiled at most once per configuration and shape."""

    def __init__(self, learner: LicaLearner, example: Observation):
        self.learner = learner
        self.state = fast_state(learner, example)
        self.update = jax.jit(learner.update)
        self.critic_step = jax.jit(learner.critic_step)
        self.actor_step = jax.jit(learner.actor_step)
        self.prepare = jax.jit(learner.prepare)
        self.actor_vg = jax.jit(jax.value_and_grad(learner.actor_loss, has_aux=True))
        self.agent_row = jax.jit(learner.agent_row)
        self.act = jax.jit(learner.act)
        self.eval = jax.jit(self._eval)

    def _eval(self, agent, critic, target, w, key) -> dict:
        """Everything the loss tests read, in one compilation (separate jits cost CI time)."""
        L = self.learner
        b = L.prepare(w)
        y = L.critic_targets(target, w, b)
        (lc, caux), gc = jax.value_and_grad(L.critic_loss, has_aux=True)(critic, y, b)
        g_target = jax.grad(lambda t: L.critic_loss(critic, L.critic_targets(t, w, b), b)[0])(
            target)
        (la, aaux), ga = jax.value_and_grad(L.actor_loss, has_aux=True)(agent, critic, b, key)
        masked, avail = L.unroll(agent, b.cur, b.alloc[:, :-1])
        return dict(b=b, y=y, lc=lc, err=caux["err"], gc=gc, g_target=g_target, la=la,
                    aaux=aaux, ga=ga, masked=masked, avail=avail)

    def run_eval(self, w, key=None, agent=None, critic=None, target=None) -> dict:
        """`eval` with this fixture's parameters unless others are given."""
        p = self.state.params
        return self.eval(p["agent"] if agent is None else agent,
                         p["critic"] if critic is None else critic,
                         self.state.target_critic if target is None else target,
                         w, jax.random.key(0) if key is None else key)


@functools.cache
def flat(**kw) -> Fns:
    learner = LicaLearner(dataclasses.replace(FLAT_CFG, **kw))
    return Fns(learner, example_obs(flat_window()))


# --------------------------------------------------------------------------- agent / acting
def test_gru_input_layout():
    """16.1: [obs || last-action one-hot || agent id], size O+A+N; hidden entities zeroed."""
    ent = jnp.arange(FNE * FED, dtype=jnp.float32).reshape(FNE, FED) + 1
    blocked = jnp.array([[False, True, False], [False, False, False]])
    obs = flat_observation(ent, blocked)
    assert obs.shape == (FNA, FNE * FED)
    np.testing.assert_array_equal(obs[0], [1, 2, 0, 0, 5, 6])
    la = bf.index_to_onehot(jnp.array([2, -1]), FACT)
    x = gru_inputs(obs, la)
    assert x.shape == (FNA, FNE * FED + FACT + FNA)
    np.testing.assert_array_equal(x[:, 6:9], [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(x[:, 9:], np.eye(FNA))
    # the window's last_action at row t is the action recorded at row t-1 of the same episode
    w = flat_window()
    acted = np.asarray(bf.loss_mask(w))[:, :-1]
    np.testing.assert_array_equal(np.asarray(w.last_action[:, 1:])[acted],
                                  np.asarray(w.actions[:, :-1])[acted])


def test_gru_cell_matches_pytorch_equations():
    """16.2: GRU cell == NumPy PyTorch equations (r, z, n gates, separate biases)."""
    cell = TorchGRUCell(5)
    x, h = np.random.default_rng(0).normal(size=(2, 3, 4)), np.random.default_rng(1).normal(
        size=(3, 5))
    x = x[0]
    p = cell.init(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.asarray(h, jnp.float32))
    q = jax.tree.map(np.asarray, p["params"])
    bound = 1 / np.sqrt(5)
    assert all(np.abs(v).max() <= bound for v in q.values())
    gi, gh = x @ q["w_ih"] + q["b_ih"], h @ q["w_hh"] + q["b_hh"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sig(gi[:, :5] + gh[:, :5])
    z = sig(gi[:, 5:10] + gh[:, 5:10])
    n = np.tanh(gi[:, 10:] + r * gh[:, 10:])
    want = (1 - z) * n + z * h
    got = cell.apply(p, jnp.asarray(x, jnp.float32), jnp.asarray(h, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_masked_logits_softmax_exact_zero():
    """16.3: unavailable -> -1e10; softmax exactly 0 there and sums to 1."""
    logits = jnp.array([[0.3, 2.0, -1.0, 5.0]])
    avail = jnp.array([[True, False, True, False]])
    m = mask_logits(logits, avail)
    assert float(m[0, 1]) == NEG_LOGIT and float(m[0, 3]) == NEG_LOGIT
    p = jax.nn.softmax(m)
    assert float(p[0, 1]) == 0.0 and float(p[0, 3]) == 0.0
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(policy_probs(m, avail), p, rtol=1e-6)


def test_sampling_matches_masked_softmax_and_test_mode():
    """16.4, 16.5: sampled actions follow the masked softmax, never unavailable; eps only
    switches to test mode (argmax) at exactly 0."""
    F = flat()
    learner, state = F.learner, F.state
    w = flat_window()
    E = 50_000
    obs = Observation(*(jnp.broadcast_to(x[2, 1], (E,) + x.shape[2:]) for x in (
        w.entities, w.avail_actions, w.obs_mask, w.entity_mask, w.entity2task_mask,
        w.task_mask)))
    la = jnp.broadcast_to(w.last_action[2, 1], (E, FNA))
    alloc = jnp.zeros((E, FNA, 1), bool)
    h = learner.init_carry(E) + 0.1
    act = F.act
    key = jax.random.key(7)
    a, h2 = act(state.params, key, obs, la, alloc, 0.5, h)
    a_other, _ = act(state.params, key, obs, la, alloc, 0.05, h)
    np.testing.assert_array_equal(a, a_other)  # eps never changes a sampled action
    masked, avail, _ = F.agent_row(state.params["agent"], *(x[0] for x in (
        obs.entities, obs.obs_mask, obs.entity_mask, obs.entity2task_mask, obs.avail_actions,
        la, alloc, h)))
    probs = np.asarray(policy_probs(masked, avail), np.float64)
    a = np.asarray(a)
    for i in range(FNA):
        counts = np.bincount(a[:, i], minlength=FACT)
        assert np.all(counts[~np.asarray(avail[i])] == 0)
        ok = np.asarray(avail[i])
        if ok.sum() > 1:
            p_chi = sps.chisquare(counts[ok], E * probs[i][ok] / probs[i][ok].sum()).pvalue
            assert p_chi > 1e-3
    greedy, _ = act(state.params, key, obs, la, alloc, 0.0, h)
    np.testing.assert_array_equal(greedy[0], np.argmax(np.asarray(masked), -1))
    assert h2.shape == h.shape and not np.allclose(h2, h)


def test_unroll_equals_step_by_step_acting():
    """16.6: scan unroll == acting row by row, hidden state zero at every episode start."""
    F = flat()
    state = F.state
    w = flat_window()
    # two episodes back to back in one window row: row 3 starts the second one
    w2 = jax.tree.map(lambda x: x.at[0, 3:].set(x[3, :2]) if x.ndim >= 2 else x, w)
    masked = F.run_eval(w2)["masked"]  # rows 0..T-2
    act = F.agent_row
    acted = np.asarray(bf.loss_mask(w2))
    for b in range(FB):
        h = jnp.zeros((FNA, FLAT_CFG.hidden_dim))
        for t in range(FT - 1):
            if t == 0 or (b == 0 and t == 3):  # the rollout's fresh carry per episode
                h = jnp.zeros_like(h)
            row = [x[b, t] for x in (w2.entities, w2.obs_mask, w2.entity_mask,
                                     w2.entity2task_mask, w2.avail_actions, w2.last_action)]
            m_t, _, h = act(state.params["agent"], *row, jnp.zeros((FNA, 1), bool), h)
            if acted[b, t]:  # final-observation rows never act
                np.testing.assert_allclose(masked[b, t], m_t, rtol=1e-5, atol=1e-5)
    assert acted[0, 3]


# ----------------------------------------------------------------------------- batch layout
def test_onehot_and_mask_full_layout():
    """16.0: one-hot actions are zero on final / padded rows; mask_full per lica.md 3."""
    w = flat_window()
    b = flat().prepare(w)
    onehot = np.asarray(b.onehot)
    for i, (n, _) in enumerate(FLAT_EPISODES):
        assert np.all(onehot[i, :n].sum(-1) == 1)
        assert np.all(onehot[i, n:] == 0)
    m = np.asarray(mask_full(w.filled, w.terminated))
    np.testing.assert_array_equal(m, [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0],
                                      [1, 1, 0, 0, 0]])
    # equal to lica.md 3 wherever its layout assumption holds; the short time-out drops its
    # final-observation row as well
    np.testing.assert_array_equal(b.m[:3, :, 0], m[:3, :-1])
    np.testing.assert_array_equal(b.m[3, :, 0], [1, 0, 0, 0])


# ---------------------------------------------------------------------------------- critic
def _mix_params(S=2, N=2, A=2, E=3, seed=0):
    critic = MixingCritic(N, A, E)
    return critic, fast_init(critic, jnp.zeros((N, A)), jnp.zeros((S,)), seed=seed)


def _numpy_mix(p, x, s, N, A, E):
    q = jax.tree.map(lambda v: np.asarray(v, np.float64), p["params"])
    d = lambda name, v: v @ q[name]["kernel"] + q[name]["bias"]  # noqa: E731
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    W1 = d("hyper_w1_out", relu(d("hyper_w1_in", s))).reshape(N * A, E)
    b1 = d("hyper_b1", s)
    wf = d("hyper_wf_out", relu(d("hyper_wf_in", s)))
    b2 = d("hyper_b2_out", relu(d("hyper_b2_in", s)))
    h = relu(x.reshape(-1) @ W1 + b1)
    return h @ wf + b2[0], W1, b1


def test_mixing_critic_forward_matches_numpy():
    """16.7, 16.11: tiny dims forward == NumPy; one-hots and probabilities both accepted."""
    critic, p = _mix_params()
    rng = np.random.default_rng(0)
    s = rng.normal(size=2)
    for x in (np.eye(2)[[1, 0]], rng.dirichlet(np.ones(2), size=2)):
        want, _, _ = _numpy_mix(p, x, s, 2, 2, 3)
        got = critic.apply(p, jnp.asarray(x, jnp.float32), jnp.asarray(s, jnp.float32))
        assert got.shape == (1,)
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    batch = critic.apply(p, jnp.zeros((4, 5, 2, 2)), jnp.zeros((4, 5, 2)))
    assert batch.shape == (4, 5, 1)


def test_mixing_critic_layout_and_agent_swap():
    """16.8: input (i, a) reads W1 row i*A+a; swapping agent blocks with W1 rows keeps Q."""
    N, A, E = 2, 2, 3
    critic, p = _mix_params(N=N, A=A, E=E)
    s = np.array([0.4, -1.2])
    for i in range(N):
        for a in range(A):
            x = np.zeros((N, A))
            x[i, a] = 1
            _, W1, b1 = _numpy_mix(p, x, s, N, A, E)
            h = np.maximum(W1[i * A + a] + b1, 0)
            q = jax.tree.map(np.asarray, p["params"])
            wf = np.maximum(s @ q["hyper_wf_in"]["kernel"] + q["hyper_wf_in"]["bias"], 0) @ q[
                "hyper_wf_out"]["kernel"] + q["hyper_wf_out"]["bias"]
            b2 = np.maximum(s @ q["hyper_b2_in"]["kernel"] + q["hyper_b2_in"]["bias"], 0) @ q[
                "hyper_b2_out"]["kernel"] + q["hyper_b2_out"]["bias"]
            got = critic.apply(p, jnp.asarray(x, jnp.float32), jnp.asarray(s, jnp.float32))
            np.testing.assert_allclose(got[0], h @ wf + b2[0], rtol=1e-5, atol=1e-6)
    perm_f = np.array([2, 3, 0, 1])  # agent 0's rows <-> agent 1's rows
    cols = (perm_f[:, None] * E + np.arange(E)[None]).reshape(-1)
    out = p["params"]["hyper_w1_out"]
    swapped = jax.tree.map(lambda v: v, p)
    swapped["params"]["hyper_w1_out"] = {"kernel": out["kernel"][:, cols],
                                         "bias": out["bias"][cols]}
    x = np.random.default_rng(1).dirichlet(np.ones(A), size=N).astype(np.float32)
    s = jnp.asarray(s, jnp.float32)
    q0 = critic.apply(p, jnp.asarray(x), s)
    q1 = critic.apply(swapped, jnp.asarray(x[::-1].copy()), s)
    np.testing.assert_allclose(q0, q1, rtol=1e-5, atol=1e-6)


def test_mixing_critic_is_unconstrained():
    """16.9: negative generated weights and input gradients; Q can decrease in an input."""
    N, A, E, S = 2, 3, 8, 4
    critic, p = _mix_params(S=S, N=N, A=A, E=E, seed=3)
    rng = np.random.default_rng(0)
    s = rng.normal(size=S)
    _, W1, _ = _numpy_mix(p, np.ones((N, A)) / A, s, N, A, E)
    assert (W1 < 0).any() and (W1 > 0).any()
    g = jax.grad(lambda x: critic.apply(p, x, jnp.asarray(s, jnp.float32))[0])(
        jnp.full((N, A), 1 / A))
    assert (np.asarray(g) < 0).any()
    # hand-set hypernets: every kernel 0, biases generate W1 with a negative row for input 0
    hand = jax.tree.map(jnp.zeros_like, p)
    w1 = np.full((N * A, E), 0.5)
    w1[0] = -1.0
    hand["params"]["hyper_w1_out"]["bias"] = jnp.asarray(w1.reshape(-1), jnp.float32)
    hand["params"]["hyper_b1"]["bias"] = jnp.full((E,), 2.0)
    hand["params"]["hyper_wf_out"]["bias"] = jnp.ones((E,))
    x = jnp.full((N, A), 0.3)
    q = [float(critic.apply(hand, x.at[0, 0].add(d), jnp.asarray(s, jnp.float32))[0])
         for d in (0.0, 0.1, 0.2)]
    assert q[0] > q[1] > q[2]


def test_mixing_critic_parameter_count():
    """16.10: parameter count of the 2-layer hypernetwork critic."""
    S, N, A, E = 5, 2, 3, 4
    _, p = _mix_params(S=S, N=N, A=A, E=E)
    K = E * N * A
    want = (S * K + K + K * K + K + (S * E + E) + (S * E + E + E * E + E)
            + (S * E + E + E + 1))
    assert sum(x.size for x in jax.tree.leaves(p)) == want


# -------------------------------------------------------------------------------- TD(lambda)
def brute_lambda(r, q, n, term, gamma, lam):
    """Lambda-returns of one episode by definition: r [n], q [n+1] -> G [n] (lica.md 5.3)."""
    out = []
    for t in range(n):
        N = n - t

        def nstep(k, t=t):
            ret = sum(gamma**j * r[t + j] for j in range(k))
            if not (term and t + k == n):
                ret += gamma**k * q[t + k]
            return ret

        g = (1 - lam) * sum(lam ** (k - 1) * nstep(k) for k in range(1, N)) + lam ** (N - 1) * \
            nstep(N)
        out.append(g)
    return np.array(out)


def _td_batch(seed, episodes, T):
    """Spec-layout arrays r, d, m, q [B, T] for (transitions, terminated) episodes."""
    rng = np.random.default_rng(seed)
    B = len(episodes)
    r, q = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    d, filled = np.zeros((B, T)), np.zeros((B, T))
    for b, (n, term) in enumerate(episodes):
        filled[b, :n + 1] = 1
        r[b, n:] = 0
        d[b, n - 1] = term
    m = np.asarray(mask_full(jnp.asarray(filled, bool), jnp.asarray(d, bool)))
    return r, d, m, q


@pytest.mark.parametrize("lam", [0.0, 0.8, 1.0])
def test_td_lambda_matches_brute_force(lam):
    """16.12, 16.13: the original recursion == brute force on terminated and full-length
    episodes; rows after termination are 0; lambda 0 = one-step, lambda 1 = Monte Carlo."""
    T, gamma = 6, 0.9
    eps = [(2, True), (5, False), (5, True), (4, True)]
    r, d, m, q = _td_batch(0, eps, T)
    y = np.asarray(td_lambda_targets(*(jnp.asarray(v, jnp.float32) for v in (r, d, m, q)),
                                     gamma, lam))
    for b, (n, term) in enumerate(eps):
        np.testing.assert_allclose(y[b, :n], brute_lambda(r[b], q[b], n, term, gamma, lam),
                                   rtol=1e-5, atol=1e-5)
        assert np.all(y[b, n:] == 0)
        if lam == 0.0:
            np.testing.assert_allclose(y[b, :n], r[b, :n] + gamma * (1 - d[b, :n]) * q[b, 1:n + 1],
                                       rtol=1e-5, atol=1e-5)
        if lam == 1.0 and term:
            mc = [sum(gamma**j * r[b, t + j] for j in range(n - t)) for t in range(n)]
            np.testing.assert_allclose(y[b, :n], mc, rtol=1e-5, atol=1e-5)


def test_td_lambda_general_form():
    """16.14: general == original on full-length episodes, == brute force on truncated ones."""
    T, gamma, lam = 6, 0.95, 0.8
    full = [(5, False), (3, True), (5, True)]
    args = [jnp.asarray(v, jnp.float32) for v in _td_batch(1, full, T)]
    np.testing.assert_allclose(td_lambda_targets(*args, gamma, lam, general=True),
                               td_lambda_targets(*args, gamma, lam), rtol=1e-5, atol=1e-5)
    short = [(2, False), (3, False)]
    r, d, m, q = _td_batch(2, short, T)
    args = [jnp.asarray(v, jnp.float32) for v in (r, d, m, q)]
    y_gen = np.asarray(td_lambda_targets(*args, gamma, lam, general=True))
    y_orig = np.asarray(td_lambda_targets(*args, gamma, lam))
    for b, (n, term) in enumerate(short):
        want = brute_lambda(r[b], q[b], n, term, gamma, lam)
        np.testing.assert_allclose(y_gen[b, :n], want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(y_orig[b, :n], want)
        assert y_gen[b, n] == pytest.approx(q[b, n])  # bootstrap value at the last row


# ---------------------------------------------------------------------- critic loss / target
def test_critic_loss_masks_and_value():
    """16.15, 16.16: masked rows change neither the loss nor its gradient; loss = masked mean;
    targets carry no gradient."""
    F = flat()
    w = flat_window()
    target = jax.tree.map(lambda x: x * 0.7, F.state.params["critic"])
    ev = F.run_eval(w, target=target)
    m = np.asarray(ev["b"].m)
    np.testing.assert_allclose(ev["lc"], np.sum(np.asarray(ev["err"]) ** 2) / m.sum(), rtol=1e-6)
    assert m.sum() == 2 + 4 + 4 + 1
    # garbage on the row after a termination and on padding (episode 0, rows 2..4)
    rng = np.random.default_rng(5)
    w2 = w.replace(
        entities=w.entities.at[0, 2:].set(rng.normal(size=(3, FNE, FED)) * 50),
        reward=w.reward.at[0, 2:].set(99.0),
        actions=w.actions.at[0, 2:].set(2),
        avail_actions=w.avail_actions.at[0, 3:].set(1),
    )
    ev2 = F.run_eval(w2, target=target)
    np.testing.assert_allclose(ev2["lc"], ev["lc"], rtol=1e-6)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7), ev["gc"],
                 ev2["gc"])
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(ev["g_target"]))


def test_target_copy_every_200_critic_steps():
    """16.17: hard copies exactly after critic steps 200, 400; copy == online at that moment."""
    F = flat()
    w = flat_window()
    b = F.prepare(w)
    st = F.state
    same, copies = [], []
    for _ in range(401):
        st, _ = F.critic_step(st, w, b)
        same.append(all(np.array_equal(x, y) for x, y in zip(
            jax.tree.leaves(st.target_critic), jax.tree.leaves(st.params["critic"]))))
        copies.append(int(st.target_updates))
    assert np.flatnonzero(same).tolist() == [199, 399]  # index i = after critic step i+1
    assert copies[198] == 0 and copies[199] == 1 and copies[399] == 2 and copies[-1] == 2
    assert int(st.critic_steps) == 401 and int(st.last_target_copy) == 400


# ----------------------------------------------------------------------------------- actor
def test_actor_uses_updated_critic_and_leaves_critic_alone():
    """16.18: actor loss through the critic after this iteration's step (manual two stages);
    the actor step leaves critic params and critic optimiser state bit-identical."""
    F = flat()
    state = F.state
    w = flat_window()
    key = jax.random.key(1)
    b = F.prepare(w)
    mid, _ = F.critic_step(state, w, b)
    after, metrics = F.actor_step(mid, b, key)
    # stage 1 by hand
    ev0 = F.run_eval(w, key)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(5e-4))
    u, _ = tx.update(ev0["gc"], tx.init(state.params["critic"]), state.params["critic"])
    critic1 = optax.apply_updates(state.params["critic"], u)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7), critic1,
                 mid.params["critic"])
    # stage 2 by hand, through critic1 (not the pre-step critic)
    loss1 = F.run_eval(w, key, critic=critic1)["la"]
    np.testing.assert_allclose(metrics["losses/mix_loss"], loss1, rtol=1e-5)
    assert abs(float(loss1) - float(ev0["la"])) > 1e-6
    for a, c in zip(jax.tree.leaves((mid.params["critic"], mid.critic_opt, mid.target_critic)),
                    jax.tree.leaves((after.params["critic"], after.critic_opt,
                                     after.target_critic))):
        np.testing.assert_array_equal(a, c)
    assert not np.allclose(jax.tree.leaves(after.params["agent"])[0],
                           jax.tree.leaves(mid.params["agent"])[0])


def test_adaptive_entropy_gradient_and_value():
    """16.19: grad[-(xi/sg(H)) H] == (xi/H) grad[-H]; the entropy part's value is -xi."""
    F = flat()
    learner, state = F.learner, F.state
    xi = learner.cfg.entropy_coef
    w = flat_window()
    b = F.prepare(w)
    agent, critic, key = state.params["agent"], state.params["critic"], jax.random.key(0)

    def parts(a):
        loss, aux = learner.actor_loss(a, critic, b, key)
        return jnp.stack([loss, aux["entropy"], aux["q_probs_mean"]])

    ev = F.run_eval(w, key)
    H, q_bar = float(ev["aaux"]["entropy"]), float(ev["aaux"]["q_probs_mean"])
    np.testing.assert_allclose(ev["la"] + q_bar, -xi, rtol=1e-5)
    jac = jax.jit(jax.jacrev(parts))(agent)
    jax.tree.map(lambda j: np.testing.assert_allclose(
        j[0] + j[2], xi / H * -j[1], rtol=1e-4, atol=1e-7), jac)


def test_entropy_masking():
    """16.20: uniform over k available actions has entropy log k; unavailable actions add
    nothing; H is the masked mean over rows of the mean over all N agents."""
    avail = jnp.array([[True, True, False, True], [True, False, False, False]])
    m = mask_logits(jnp.zeros((2, 4)), avail)
    np.testing.assert_allclose(policy_entropy(m, avail), [np.log(3), 0.0], atol=1e-6)
    ev = flat().run_eval(flat_window())
    ent = np.asarray(policy_entropy(ev["masked"], ev["avail"]))  # [B, T-1, N]
    rows = np.asarray(ev["b"].acted[:, :-1])
    want = np.sum(ent.mean(-1) * rows) / rows.sum()  # the dead agent (entropy 0) counts
    np.testing.assert_allclose(ev["aaux"]["entropy"], want, rtol=1e-5)
    assert ent[2, 2, 1] == 0.0


def test_padded_rows_are_nan_free():
    """16.21: padded rows (nothing available) give finite losses/grads and zero probabilities."""
    w = flat_window()
    for F in (flat(), flat(action_input="gumbel_st")):
        state = F.state
        b = F.prepare(w)
        (loss, aux), g = F.actor_vg(state.params["agent"], state.params["critic"], b,
                                    jax.random.key(0))
        assert np.isfinite(float(loss))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
        p = np.asarray(aux["p"])
        assert np.all(p[0, 3:] == 0) and np.all(p[3, 2:] == 0)  # padding rows
    F = flat()
    b = F.prepare(w)
    mid, mc = F.critic_step(F.state, w, b)
    _, ma = F.actor_step(mid, b, jax.random.key(0))
    assert all(np.isfinite(np.asarray(v)).all() for v in {**mc, **ma}.values())


def test_gradient_ascends_a_linear_critic():
    """16.22: frozen Q = w.x, xi = 0, one SGD step raises the best available action's prob."""
    F = flat()
    w = flat_window()
    w = w.replace(avail_actions=jnp.where(w.filled[..., None, None], 1, w.avail_actions))
    b = F.prepare(w)
    weights = jnp.array([[0.1, 2.0, -1.0], [0.1, 2.0, -1.0]])  # the same block per agent
    linear = LicaLearner(dataclasses.replace(F.learner.cfg, entropy="none"))
    linear.critic_values = lambda c, p, rows, alloc: jnp.einsum("btna,na->bt", p, weights)[
        ..., None]
    agent = F.state.params["agent"]
    g = jax.jit(jax.grad(lambda a: linear.actor_loss(a, None, b, jax.random.key(0))[0]))(agent)
    agent2 = jax.tree.map(lambda p, d: p - 0.01 * d, agent, g)
    p0, p1 = (np.asarray(policy_probs(ev["masked"], ev["avail"])) for ev in (
        F.run_eval(w), F.run_eval(w, agent=agent2)))
    ok = np.broadcast_to(np.asarray(b.acted[:, :-1, None]), p0.shape[:-1])
    assert ok.sum() > 3
    assert np.all(p1[..., 1][ok] > p0[..., 1][ok])


def test_gradient_clipping_and_logged_norms():
    """16.23: each optimiser clips its own grads to norm 10; logged norms are pre-clip."""
    F = flat()
    learner, state = F.learner, F.state
    w = flat_window()
    w = w.replace(reward=w.reward * 1e4)  # huge critic gradients
    key = jax.random.key(0)
    b = F.prepare(w)
    mid, mc = F.critic_step(state, w, b)
    _, ma = F.actor_step(mid, b, key)
    g = F.run_eval(w, key)["gc"]
    norm = float(global_norm(g))
    assert norm > 10.0
    np.testing.assert_allclose(mc["train_metrics/critic_grad_norm"], norm, rtol=1e-4)
    g_actor = F.run_eval(w, key, critic=mid.params["critic"])["ga"]
    np.testing.assert_allclose(ma["train_metrics/agent_grad_norm"], global_norm(g_actor),
                               rtol=1e-4)
    for tx, lr in ((learner.critic_tx, 5e-4), (learner.actor_tx, 2.5e-3)):
        # two steps: Adam's second step depends on the gradient scale the clip produced
        adam = optax.adam(lr)
        s_tx, s_ad = tx.init(g), adam.init(g)
        for grads in (g, jax.tree.map(lambda x: 0.05 * x, g)):
            u_tx, s_tx = tx.update(grads, s_tx)
            c = min(1.0, 10.0 / float(global_norm(grads)))
            u_ad, s_ad = adam.update(jax.tree.map(lambda x, c=c: x * c, grads), s_ad)
            jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-9),
                         u_tx, u_ad)


def test_gumbel_straight_through():
    """16.24: one-hot forward on available actions, frequencies ~ pi, soft-sample gradient."""
    logits = jnp.array([0.5, -0.3, 1.2, 0.0])
    avail = jnp.array([True, False, True, True])
    masked = mask_logits(logits, avail)
    keys = jax.random.split(jax.random.key(0), 50_000)
    y = jax.vmap(lambda k: gumbel_straight_through(k, masked, avail))(keys)
    y = np.asarray(y)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.isclose(y, 0, atol=1e-6) | np.isclose(y, 1, atol=1e-6))
    counts = np.round(y).sum(0)
    assert counts[1] == 0
    pi = np.asarray(policy_probs(masked, avail), np.float64)
    ok = np.asarray(avail)
    assert sps.chisquare(counts[ok], len(keys) * pi[ok] / pi[ok].sum()).pvalue > 1e-3
    c = jnp.array([1.0, 2.0, -1.0, 0.5])
    k = keys[3]
    g_st = jax.grad(lambda z: jnp.sum(c * gumbel_straight_through(k, mask_logits(z, avail),
                                                                   avail)))(logits)
    g = jax.random.gumbel(k, (4,))
    g_soft = jax.grad(lambda z: jnp.sum(c * policy_probs(mask_logits(z, avail) + g, avail)))(
        logits)
    np.testing.assert_allclose(g_st, g_soft, rtol=1e-5, atol=1e-7)


def test_update_compiles_once_and_is_deterministic():
    """16.32: one compilation per padded shape; same key, same result."""
    F = flat()
    a, _ = F.update(F.state, flat_window(0), jax.random.key(3))
    b, _ = F.update(F.state, flat_window(0), jax.random.key(3))
    F.update(F.state, flat_window(1), jax.random.key(4))
    assert F.update._cache_size() == 1
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ ALMA variant (lica.md 13)
NA, NN, NT, ACT, ED = 3, 2, 2, 3, 3
NE = NA + NN
T = 5
MASK_CFG = LicaConfig(n_agents=NA, n_actions=ACT, n_tasks=NT, subtask_cond="mask",
                      embed_dim=8, n_heads=2, hidden_dim=8, mix_dim=4, hyper_dim=8)
# subtask index per agent and row (-1 = none / inactive)
ALLOC = np.array([[[0, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, -1], [0, 1, -1]],
                  [[1, 1, -1], [1, 1, -1], [1, 1, -1], [-1, -1, -1], [-1, -1, -1]]])


def mask_window(seed: int = 0) -> bf.Window:
    """b=0: 4 transitions, terminated; agent 1 moves to subtask 1 at row 2; subtask 0 finishes
    at transition 2; agent 2 dies at row 3. b=1: time-out after 2 transitions, agent slot 2
    padded, subtask 0 without agents."""
    rng = np.random.default_rng(seed)
    ep = jax.tree.map(np.array, bf.empty_episodes((2,), T - 1, NA, NE, NT, ACT, ED))
    for b, n in ((0, 4), (1, 2)):
        rows = slice(0, n + 1)
        ep.filled[b, rows] = True
        ep.entities[b, rows] = rng.normal(size=(n + 1, NE, ED))
        codes = np.ones((n + 1, NA, ACT), np.int32)
        codes[:, :, 2] = rng.random((n + 1, NA)) < 0.5
        ep.avail_actions[b, rows] = codes
        acts = rng.integers(0, 2, (n + 1, NA))
        ep.actions[b, :n] = acts[:n]
        ep.last_action[b, 0] = -1
        ep.last_action[b, 1:n + 1] = acts[:n]
        ep.task_rewards[b, :n] = rng.normal(size=(n, NT))
        ep.reward[b, :n] = ep.task_rewards[b, :n].sum(-1)
        ep.reset[b, n - 1] = True
        alloc = ALLOC[b, rows, :, None] == np.arange(NT)
        e2t = np.ones((n + 1, NE, NT), bool)
        e2t[:, :NA] = ~alloc
        e2t[:, NA:] = ~np.eye(NT, dtype=bool)[None]  # building j belongs to subtask j
        ep.entity2task_mask[b, rows] = e2t
    ep.terminated[0, 3] = True
    ep.tasks_terminated[0, 2:4, 0] = True
    ep.tasks_terminated[0, 3, 1] = True
    ep.task_mask[0, 3:5, 0] = True
    ep.task_mask[0, 4, 1] = True
    ep.entity_mask[0, 3:5, 2] = True
    ep.entity_mask[1, :3, 2] = True
    for b, rows in ((0, slice(3, 5)), (1, slice(0, 3))):  # inactive: no-op only, zero features
        ep.avail_actions[b, rows, 2] = [1, 0, 0]
        ep.entities[b, rows, 2] = 0.0
        ep.actions[b, rows, 2] = 0
    ep.last_action[0, 4, 2] = 0
    ep.last_action[1, :3, 2] = -1
    return bf.episodes_as_window(jax.tree.map(jnp.asarray, ep), 0)


@functools.cache
def mask() -> Fns:
    return Fns(LicaLearner(MASK_CFG), example_obs(mask_window()))


@functools.cache
def mask_eval():
    """jit(w, shift) -> (y, qn, critic loss, actor loss with masked heads shifted by shift)."""
    F = mask()
    learner, state = F.learner, F.state
    shifted = LicaLearner(learner.cfg)

    @jax.jit
    def run(w, shift):
        b = learner.prepare(w)
        y = learner.critic_targets(state.target_critic, w, b)
        qn = learner.bootstrap_values(state.target_critic, b)
        lc = learner.critic_loss(state.params["critic"], y, b)[0]
        shifted.critic_values = lambda *a: learner.critic_values(*a) + shift * (1.0 - b.m)
        la = shifted.actor_loss(state.params["agent"], state.params["critic"], b,
                                jax.random.key(0))[0]
        return y, qn, lc, la

    return run


def _critic_inputs(seed=0, pad=False):
    """One row for EntityCritic: agents 0, 1 in subtask 0, agent 2 in subtask 1, agent 3 dead;
    building j in subtask j; `pad` appends a padded agent slot and a padded entity slot."""
    rng = np.random.default_rng(seed)
    na, ne = 4, 4 + NN
    ent = rng.normal(size=(ne, ED)).astype(np.float32)
    emask = np.zeros(ne, bool)
    emask[3] = True
    ent[3] = 0.0
    alloc = np.zeros((na, NT), bool)
    alloc[[0, 1], 0] = True
    alloc[2, 1] = True
    e2t = np.ones((ne, NT), bool)
    e2t[:na] = ~alloc
    e2t[na:] = ~np.eye(NT, dtype=bool)
    la = np.zeros((na, ACT), np.float32)
    la[np.arange(3), rng.integers(0, ACT, 3)] = 1
    p = rng.dirichlet(np.ones(ACT), size=na).astype(np.float32)
    p[3] = [1, 0, 0]
    if pad:  # slot order: agents, padded agent, buildings, padded entity
        def ins(x, fill):
            extra = np.full((1,) + x.shape[1:], fill, x.dtype)
            return np.concatenate([x[:na], extra, x[na:], extra])

        ent, emask, e2t = ins(ent, 0), ins(emask, True), ins(e2t, True)
        alloc = np.concatenate([alloc, np.zeros((1, NT), bool)])
        la = np.concatenate([la, np.zeros((1, ACT), np.float32)])
        p = np.concatenate([p, np.array([[1, 0, 0]], np.float32)])
        na += 1
    return dict(p=p, ent=ent, emask=emask, alloc=alloc, e2t=e2t, la=la, na=na)


def _critic_args(c, p=None):
    na = c["na"]
    member = membership(jnp.asarray(c["e2t"]), jnp.asarray(c["alloc"]))
    blocked = critic_key_mask(jnp.asarray(c["emask"]), member, na)
    x = entity_inputs(jnp.asarray(c["ent"]), jnp.asarray(c["la"]))
    return (jnp.asarray(c["p"] if p is None else p), x, blocked, ~jnp.asarray(c["emask"][:na]),
            jnp.asarray(c["alloc"]))


ENTITY_CRITIC = EntityCritic(ACT, embed_dim=4, hyper_dim=8, n_heads=2)


@functools.cache
def critic_params():
    return fast_init(ENTITY_CRITIC, *_critic_args(_critic_inputs()))


@jax.jit
def apply_critic(params, args):
    return ENTITY_CRITIC.apply(params, *args)


@jax.jit
def apply_critic_capture(params, args):
    return ENTITY_CRITIC.apply(params, *args, capture_intermediates=True)


def test_entity_critic_block_sum_form_and_permutation():
    """16.25: single subtask with all agents: Q = relu(sum_i p_i W1_i + mean b1) . mean wF +
    mean v (block-sum form); invariant to permuting agent slots."""
    params = critic_params()
    c = _critic_inputs()
    c["emask"][3] = False  # everyone active, everyone in subtask 0
    c["p"][3] = [0.2, 0.5, 0.3]
    c["alloc"][:] = False
    c["alloc"][:, 0] = True
    c["e2t"][:4] = ~c["alloc"]
    c["e2t"][4:] = False
    q, inter = apply_critic_capture(params, _critic_args(c))
    u = {k: np.asarray(inter["intermediates"][k]["__call__"][0]) for k in (
        "hyper_w1", "hyper_b1", "hyper_wf", "hyper_v")}
    W1 = u["hyper_w1"].reshape(4, ACT, 4)
    h = np.maximum(np.einsum("ia,iae->e", c["p"], W1) + u["hyper_b1"].mean(0), 0)
    want = h @ u["hyper_wf"].mean(0) + u["hyper_v"].mean()
    np.testing.assert_allclose(q[0], want, rtol=1e-5, atol=1e-6)
    perm = np.array([2, 0, 3, 1])
    c2 = dict(c, p=c["p"][perm], la=c["la"][perm], alloc=c["alloc"][perm])
    order = np.concatenate([perm, np.arange(4, 4 + NN)])
    c2.update(ent=c["ent"][order], emask=c["emask"][order], e2t=c["e2t"][order])
    np.testing.assert_allclose(apply_critic(params, _critic_args(c2)), q, rtol=1e-5, atol=1e-6)


def test_entity_critic_subtask_isolation_and_padding():
    """16.26: Q_k ignores agents/entities outside k and inactive ones; dQ_k/dp_i = 0 for i
    not in k; extra padded agent and entity slots change no output."""
    params = critic_params()
    c = _critic_inputs()
    q = np.asarray(apply_critic(params, _critic_args(c)))
    # perturb agent 2 and building 1 (subtask 1) and dead agent 3: Q_0 unchanged
    c2 = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    c2["ent"][[2, 3, 5]] += 3.0
    c2["p"][2] = [0.0, 0.0, 1.0]
    c2["p"][3] = [0.3, 0.3, 0.4]
    c2["la"][2] = np.roll(c2["la"][2], 1)
    q2 = np.asarray(apply_critic(params, _critic_args(c2)))
    assert q2[0] == pytest.approx(q[0], rel=1e-5, abs=1e-6)
    assert abs(q2[1] - q[1]) > 1e-6
    args = _critic_args(c)
    jac = np.asarray(jax.jit(jax.jacobian(lambda p: ENTITY_CRITIC.apply(params, p, *args[1:])))(
        args[0]))  # [K, NA, A]
    assert np.all(jac[0, 2:] == 0) and np.all(jac[1, [0, 1, 3]] == 0)
    assert np.abs(jac[0, :2]).max() > 0 and np.abs(jac[1, 2]).max() > 0
    np.testing.assert_allclose(apply_critic(params, _critic_args(_critic_inputs(pad=True))), q,
                               rtol=1e-5, atol=1e-6)


def test_subtask_loss_masks_and_entropy_weights():
    """16.27, 16.30: per-subtask masks follow 13.4; finished subtasks and subtasks without
    agents contribute nothing to either loss; entropy counts active agents with a subtask."""
    F = mask()
    w = mask_window()
    b = F.prepare(w)
    want_m = np.zeros((2, T - 1, NT))
    want_m[0, :3, 0] = 1  # subtask 0 finished at transition 2
    want_m[0, :4, 1] = 1  # subtask 1 has agent 2 (rows 0-2) then agent 1 (rows 2-3)
    want_m[1, :2, 1] = 1  # b=1: nobody on subtask 0; final row 2 has no action
    np.testing.assert_array_equal(b.m, want_m)
    want_w = np.zeros((2, T - 1, NA))
    want_w[0, :3, :] = 1
    want_w[0, 3, :2] = 1  # agent 2 dead at row 3
    want_w[1, :2, :2] = 1  # agent slot 2 padded
    np.testing.assert_array_equal(b.ent_w, want_w)
    run = mask_eval()

    def losses(w, shift):
        return run(w, shift)[2:]

    base = losses(w, 0.0)
    # rewards of subtask 0 after it finished and of subtask 0 in b=1 (no agents) are ignored
    w2 = w.replace(task_rewards=w.task_rewards.at[0, 3, 0].set(50.0).at[1, :2, 0].set(-50.0))
    np.testing.assert_allclose(losses(w2, 100.0), base, rtol=1e-6)
    w3 = w.replace(task_rewards=w.task_rewards.at[0, 1, 1].add(5.0))
    assert abs(float(losses(w3, 0.0)[0]) - float(base[0])) > 1e-4


def test_trace_cut_and_bootstrap_allocation():
    """16.28, 16.29: membership change at t+1 -> one-step target from qn(t); constant
    membership -> general lambda-return; qn(t) uses alloc_t (alloc_{t+1} alone changes
    nothing in it)."""
    w = mask_window()
    g, lam = MASK_CFG.gamma, MASK_CFG.td_lambda

    def targets(w):
        return mask_eval()(w, 0.0)[:2]

    y, qn = map(np.asarray, targets(w))
    r, d = np.asarray(w.task_rewards), np.asarray(w.tasks_terminated | w.terminated[..., None])
    # b=0: agent 1 joins subtask 1 at row 2 (leaves subtask 0): both traces cut at t=1
    for k in range(NT):
        np.testing.assert_allclose(y[0, 1, k], r[0, 1, k] + g * (1 - d[0, 1, k]) * qn[0, 1, k],
                                   rtol=1e-5, atol=1e-6)
    # b=1, subtask 1: constant membership, ends at the time-out (bootstrap from qn at row 1)
    g1 = r[1, 1, 1] + g * qn[1, 1, 1]
    g0 = r[1, 0, 1] + g * ((1 - lam) * qn[1, 0, 1] + lam * g1)
    np.testing.assert_allclose(y[1, :2, 1], [g0, g1], rtol=1e-5, atol=1e-6)
    # same as the general recursion of lica.md 5.3 on that episode
    gen = lambda_returns(jnp.asarray(r[1:, :-1, 1]), jnp.asarray(d[1:, :-1, 1]),
                         jnp.asarray(qn[1:, :, 1]), jnp.asarray([[1, 0, 0, 0]]), g, lam)
    np.testing.assert_allclose(y[1, :2, 1], np.asarray(gen)[0, :2], rtol=1e-5)
    # changing the allocation stored at row 2 of b=0 leaves qn(1) (row 2 valued with alloc_1)
    e2t = w.entity2task_mask.at[0, 2, 1].set(jnp.array([False, True]))  # agent 1 back on 0
    _, qn2 = map(np.asarray, targets(w.replace(entity2task_mask=e2t)))
    np.testing.assert_allclose(qn2[0, 1], qn[0, 1], rtol=1e-6)
    assert np.abs(qn2[0, 2] - qn[0, 2]).max() > 1e-6  # row 2's own allocation did change


def test_mask_mode_update_runs_and_acts():
    """Subtask mode end to end: finite metrics, attention acting with allocations."""
    F = mask()
    w = mask_window()
    new, m = F.update(F.state, w, jax.random.key(0))
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values())
    assert F.learner.init_carry(4) is None
    obs = Observation(w.entities[:, 0], w.avail_actions[:, 0], w.obs_mask[:, 0],
                      w.entity_mask[:, 0], w.entity2task_mask[:, 0], w.task_mask[:, 0])
    alloc = bf.stored_alloc(w)[:, 0]
    a, carry = F.act(new.params, jax.random.key(1), obs, w.last_action[:, 0], alloc, 0.0, None)
    assert a.shape == (2, NA) and carry is None
    assert int(a[1, 2]) == 0  # the padded agent slot can only take the no-op


VARIANTS = [
    ("flat", dict(agent="attention", embed_dim=8, n_heads=2)),
    ("flat", dict(critic="mlp", mlp_hidden=(16, 16))),
    ("flat", dict(critic="entity", hyper_dim=8, n_heads=2)),
    ("flat", dict(hypernet_layers=1, td_general=True, entropy="vanilla")),
    ("flat", dict(action_input="gumbel_st", entropy="none", entropy_over_active=True)),
    ("mask", dict(agent="gru")),
    ("mask", dict(action_input="gumbel_st", critic_activity_mask=False)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kw"), VARIANTS)
def test_variants_update(mode, kw):
    """Every configuration switch of lica.md 11 / 13 trains without NaN and changes params."""
    base, w = (FLAT_CFG, flat_window()) if mode == "flat" else (MASK_CFG, mask_window())
    F = Fns(LicaLearner(dataclasses.replace(base, **kw)), example_obs(w))
    new, m = F.update(F.state, w, jax.random.key(0))
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values())
    for part in ("agent", "critic"):
        moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(F.state.params[part]),
                                                      jax.tree.leaves(new.params[part]))]
        assert any(moved)
