"""Low-level QMIX learner on hand-built batches (spec 2.2, 2.5-2.7, 6.5 items 10, 11).

A tiny window (B=2, T=4) is written field by field; a slow reimplementation of spec 2.6 calls
the learner's own per-row networks (`agent_q`, `mix`) row by row and is compared with the
batched `targets` / `update`. The networks themselves are tested in test_nn_*.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from alma_jax import buffer as bf
from alma_jax.learners.qmix import QMixConfig, QMixLearner, nstep_targets
from alma_jax.optim import make_optimizer
from alma_jax.popart import ALPHA, PopArtStats, popart_update

NA, NB, NT, NACT, ED = 2, 2, 2, 4, 3  # agents, buildings (non-agent entities), subtasks, ...
NE = NA + NB
B, T = 2, 4
SIZES = dict(n_agents=NA, n_actions=NACT, n_tasks=NT, embed_dim=8, n_heads=2, hidden_dim=8,
             mix_dim=4, hyper_dim=8)
# subtask index held by each agent at each row: [B, T, NA]
ALLOC_IDX = np.array([[[0, 1], [1, 0], [1, 0], [1, 1]],   # decision at row 1 (agents swap)
                      [[0, 1], [0, 1], [1, 1], [1, 0]]])  # new episode at row 2, nobody on 0
TARGET_STATS = PopArtStats(jnp.float32(0.3), jnp.float32(2.5), jnp.bool_(True))
ONLINE_STATS = PopArtStats(jnp.float32(-0.4), jnp.float32(0.6), jnp.bool_(True))


# ------------------------------------------------------------------------ hand-built data
def make_window(seed: int = 0) -> bf.Window:
    """Two windows of T=4 rows.

    b=0: one episode; subtask 0 finishes at transition 1 (tasks_terminated[1, 0]); the episode
         terminates at transition 2 (all subtasks finished); row 3 is its final observation.
    b=1: an episode that times out at transition 0 (reset, not terminated, nothing finished),
         its final-observation row 1, then rows 0-1 of the next episode (rows 2-3).
    """
    rng = np.random.default_rng(seed)
    ep = bf.empty_episodes((B,), T - 1, NA, NE, NT, NACT, ED)
    alloc = ALLOC_IDX[..., None] == np.arange(NT)  # [B, T, NA, NT]
    e2t = np.ones((B, T, NE, NT), bool)
    e2t[:, :, :NA] = ~alloc
    for j in range(NB):  # building j belongs to subtask j
        e2t[:, :, NA + j, j] = False
    actions = rng.integers(0, NACT, (B, T, NA))
    last_action = np.concatenate([np.full((B, 1, NA), -1), actions[:, :-1]], 1)
    last_action[1, 2] = -1  # first row of the second episode in window 1
    codes = rng.integers(0, 4, (B, T, NA, NACT))  # 0, 1 and the subtask codes 2, 3
    codes[..., 0] = 1  # the no-op is always available
    tt = np.zeros((B, T, NT), bool)
    tt[0, 1, 0] = True
    tt[0, 2:] = True
    task_mask = np.zeros((B, T, NT), bool)
    task_mask[0, 2, 0] = True
    task_mask[0, 3] = True
    reset = np.zeros((B, T), bool)
    reset[0, 2] = reset[1, 0] = True
    terminated = np.zeros((B, T), bool)
    terminated[0, 2] = True
    fields = dict(
        entities=rng.normal(size=(B, T, NE, ED)).astype(np.float32),
        obs_mask=np.zeros((B, T, NE, NE), bool),
        entity_mask=np.zeros((B, T, NE), bool),
        entity2task_mask=e2t,
        task_mask=task_mask,
        avail_actions=codes.astype(np.int32),
        actions=actions.astype(np.int32),
        reward=rng.normal(size=(B, T)).astype(np.float32),
        task_rewards=rng.normal(size=(B, T, NT)).astype(np.float32),
        terminated=terminated,
        reset=reset,
        filled=np.ones((B, T), bool),
        hier_decision=np.zeros((B, T), bool),
        tasks_terminated=tt,
        last_action=last_action.astype(np.int32),
        prev_alloc=np.full((B, T, NA), -1, np.int32),
    )
    fields = {k: jnp.asarray(v, getattr(ep, k).dtype) for k, v in fields.items()}
    zeros = jnp.zeros((B, T), jnp.int32)
    return bf.Window(**fields, t_added=zeros, slot=zeros, row=jnp.tile(jnp.arange(T), (B, 1)))


def set_popart(params, a, b):
    p = jax.tree.map(lambda x: x, params)
    p["mixer"]["params"] = dict(p["mixer"]["params"], popart_a=jnp.asarray(a, jnp.float32),
                                popart_b=jnp.asarray(b, jnp.float32))
    return p


def make_state(learner, w):
    """Online and target nets from different keys, non-trivial Pop-Art affines and statistics."""
    row0 = jax.tree.map(lambda x: x[0, 0], w)
    state = learner.init(jax.random.PRNGKey(1), row0)
    target = learner.init(jax.random.PRNGKey(2), row0)
    k = NT if learner.cfg.subtask_cond else 1
    params = set_popart(state.params, np.linspace(0.8, 1.3, k), np.linspace(-0.2, 0.3, k))
    tparams = set_popart(target.params, np.linspace(1.5, 0.6, k), np.linspace(0.4, -0.1, k))
    return state.replace(params=params, opt_state=learner.optimizer.init(params),
                         target_params=tparams, target_stats=TARGET_STATS)


# ----------------------------------------------------------------- slow reference of 2.6
def parse_avail_ref(codes, alloc, mask_subtask_actions):
    """Spec 1.5 by hand: codes [NA, NACT], alloc [NA, NT] -> available [NA, NACT]."""
    if not mask_subtask_actions:
        return codes >= 1
    tau = alloc.argmax(-1)
    out = np.zeros(codes.shape, bool)
    for i in range(codes.shape[0]):
        for a, c in enumerate(codes[i]):
            out[i, a] = c == 1 or (2 <= c < 1000 and c - 2 == tau[i]) or (
                c >= 1000 and tau[c - 1000] == tau[i])
    return out


class Reference:
    """Spec 2.6/2.7 transition by transition, with switches that break one rule at a time."""

    def __init__(self, learner):
        self.learner = learner
        self.agent_q = jax.jit(learner.agent_q)
        self.mix = jax.jit(learner.mix)

    def row(self, w, b, t):
        return {f: np.asarray(getattr(w, f)[b, t]) for f in bf.ROW_FIELDS}

    def alloc(self, r):
        if self.learner.cfg.subtask_cond is None:
            return np.zeros((NA, NT), bool)
        return ~r["entity2task_mask"][:NA]

    def q(self, agent_params, r, alloc):
        return np.asarray(self.agent_q(agent_params, r["entities"], r["obs_mask"],
                                       r["entity_mask"], r["entity2task_mask"],
                                       r["last_action"], alloc))

    def mixed(self, mixer_params, q, r, alloc):
        y, qtot = self.mix(mixer_params, jnp.asarray(q, jnp.float32), r["entities"],
                           r["entity_mask"], r["entity2task_mask"], r["last_action"], alloc)
        return np.asarray(y), np.asarray(qtot)

    def targets(self, state, w, select_with="online", target_alloc="prev", stats="target"):
        cfg = self.learner.cfg
        subtask = cfg.subtask_cond is not None
        K = NT if subtask else 1
        Y = np.zeros((B, T - 1, K))
        M = np.zeros((B, T - 1, K), bool)
        tstats = state.target_stats if stats == "target" else state.stats
        for b in range(B):
            for t in range(T - 1):
                cur, nxt = self.row(w, b, t), self.row(w, b, t + 1)
                alloc_t, alloc_u = self.alloc(cur), self.alloc(nxt)
                # greedy action at t+1 from the ONLINE utilities (computed with row t+1's
                # allocation, F3), among actions available under row t's allocation
                sel = state.params if select_with == "online" else state.target_params
                q_sel = self.q(sel["agent"], nxt, alloc_u)
                avail = parse_avail_ref(nxt["avail_actions"], alloc_t,
                                        subtask and cfg.mask_subtask_actions)
                a_star = np.where(avail, q_sel, -np.inf).argmax(-1)
                # evaluated by the TARGET nets run with row t's allocation
                run_alloc = alloc_t if target_alloc == "prev" else alloc_u
                q_tgt = self.q(state.target_params["agent"], nxt, run_alloc)
                q_next = q_tgt[np.arange(NA), a_star]
                _, qtot = self.mixed(state.target_params["mixer"], q_next, nxt, run_alloc)
                v = (np.sqrt(float(tstats.sigma2)) * qtot + float(tstats.mu)
                     if bool(tstats.initialised) else qtot)
                if subtask:
                    r, d = cur["task_rewards"], cur["tasks_terminated"]
                else:
                    r, d = cur["reward"][None], cur["terminated"][None]
                Y[b, t] = r + cfg.gamma * (1.0 - d) * v
                m = bool(cur["filled"]) and (t == 0 or not bool(w.reset[b, t - 1]))
                for k in range(K):
                    M[b, t, k] = m
                    if subtask:
                        prev_done = t > 0 and bool(w.tasks_terminated[b, t - 1, k])
                        M[b, t, k] = m and not prev_done and bool(alloc_t[:, k].any())
        return Y, M

    def pre_affine(self, params, w):
        """Online pre-affine mixer outputs y [B, T-1, K] for the executed actions."""
        out = []
        for b in range(B):
            for t in range(T - 1):
                cur = self.row(w, b, t)
                alloc = self.alloc(cur)
                q = self.q(params["agent"], cur, alloc)
                chosen = q[np.arange(NA), cur["actions"]]
                out.append(self.mixed(params["mixer"], chosen, cur, alloc)[0])
        return np.stack(out).reshape(B, T - 1, -1)


def popart_ref(stats, y, m):
    """Spec 2.5 steps 1-5, 7 in numpy: -> (mu, sigma2, mu_old, sigma2_old)."""
    mm = lambda x: (x * m).sum() / (m.sum() + 1e-8)  # noqa: E731
    init = bool(stats.initialised)
    mu = float(stats.mu) if init else mm(y)
    d = y - mu
    mu = mu + ALPHA * mm(d)
    s2 = float(stats.sigma2) if init else mm(d**2)
    s2 = max((1 - ALPHA) * (s2 + ALPHA * mm(d**2)), 1e-8)
    old = (float(stats.mu), float(stats.sigma2)) if init else (mu, s2)
    return mu, s2, *old


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def window():
    return make_window()


@pytest.fixture(scope="module", params=["flat", "mask"])
def setup(request, window):
    """(name, learner, state, reference, jitted targets, jitted update) per learner mode."""
    if request.param == "flat":
        learner = QMixLearner(QMixConfig(subtask_cond=None, **SIZES))
    else:
        learner = QMixLearner(QMixConfig(subtask_cond="mask", mask_subtask_actions=True, **SIZES))
    state = make_state(learner, window)
    return (request.param, learner, state, Reference(learner), jax.jit(learner.targets),
            jax.jit(learner.update))


@pytest.fixture(scope="module")
def ref_targets(setup, window):
    _, _, state, ref, _, _ = setup
    return ref.targets(state, window)


# --------------------------------------------------------------------------------- targets
def test_targets_match_reference(setup, window, ref_targets):
    name, _, state, ref, targets, _ = setup
    y, mask, _ = targets(state, window)
    Y, M = ref_targets
    np.testing.assert_array_equal(np.asarray(mask), M)
    np.testing.assert_allclose(np.asarray(y), Y, rtol=1e-5, atol=1e-5)
    # the hand-built layout gives these masks (spec 2.7)
    if name == "flat":
        expected = [[1, 1, 1], [1, 0, 1]]  # row after the timeout's final observation dropped
    else:
        expected = [[[1, 1], [1, 1], [0, 1]],  # subtask 0 finished at transition 1
                    [[1, 1], [0, 0], [0, 1]]]  # after the reset; nobody on subtask 0 at row 2
    got = np.asarray(mask)
    np.testing.assert_array_equal(got[..., 0] if name == "flat" else got, expected)


def test_terminations_stop_bootstrapping(setup, window):
    """Per-subtask (or global) termination gives Y = r exactly; a timeout bootstraps."""
    name, _, state, _, targets, _ = setup
    y = np.asarray(targets(state, window)[0])
    w = jax.tree.map(np.asarray, window)
    g = state.target_stats
    if name == "flat":
        assert y[0, 2, 0] == w.reward[0, 2]  # terminated
        assert abs(y[1, 0, 0] - w.reward[1, 0]) > 1e-3  # time-out: bootstraps
    else:
        assert y[0, 1, 0] == w.task_rewards[0, 1, 0]  # subtask 0 finished, subtask 1 goes on
        assert abs(y[0, 1, 1] - w.task_rewards[0, 1, 1]) > 1e-3
        np.testing.assert_array_equal(y[0, 2], w.task_rewards[0, 2])  # all finished
        assert np.all(np.abs(y[1, 0] - w.task_rewards[1, 0]) > 1e-3)  # time-out bootstraps
    assert bool(g.initialised)


def nstep_brute(r, d, v, m, gamma, n):
    """Per-transition n-step return by walking forward (the obvious loop)."""
    B_, T1, K_ = r.shape
    out = np.zeros_like(r)
    for b in range(B_):
        for t in range(T1):
            for k in range(K_):
                g, disc, u = 0.0, 1.0, t
                for j in range(n):
                    g += disc * r[b, u, k]
                    disc *= gamma * (1.0 - d[b, u, k])
                    last = j == n - 1 or u + 1 >= T1 or not m[b, u + 1, k]
                    if last:
                        g += disc * v[b, u, k]
                        break
                    u += 1
                out[b, t, k] = g
    return out


@pytest.mark.parametrize("n", [1, 2, 4])
def test_nstep_targets_match_forward_loop(n):
    rng = np.random.default_rng(n)
    shape = (3, 7, 2)
    r, v = rng.normal(size=shape), rng.normal(size=shape)
    d = (rng.random(shape) < 0.2).astype(np.float64)
    m = rng.random(shape) < 0.7
    got = np.asarray(nstep_targets(jnp.asarray(r), jnp.asarray(d), jnp.asarray(v),
                                   jnp.asarray(m), 0.9, n))
    np.testing.assert_allclose(got, nstep_brute(r, d, v, m, 0.9, n), rtol=1e-5, atol=1e-5)
    if n > 1:  # the loop is not the 1-step target
        assert np.max(np.abs(got - nstep_brute(r, d, v, m, 0.9, 1))) > 1e-2


def test_learner_two_step_targets_chain_one_step_ones(setup, window):
    """n_step=2: Y2(t) = r(t) + g(1-d(t)) Y1(t+1) where transition t+1 continues, else Y1(t)."""
    name, learner, state, _, targets, _ = setup
    y1, mask, _ = targets(state, window)
    two = QMixLearner(dataclasses.replace(learner.cfg, n_step=2))
    y2, mask2, _ = jax.jit(two.targets)(state, window)
    y1, y2, mask = np.asarray(y1), np.asarray(y2), np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(mask2), mask)
    w = jax.tree.map(np.asarray, window)
    r = w.task_rewards[:, :-1] if name == "mask" else w.reward[:, :-1, None]
    d = w.tasks_terminated[:, :-1] if name == "mask" else w.terminated[:, :-1, None]
    cont = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1)
    later = np.concatenate([y1[:, 1:], np.zeros_like(y1[:, :1])], 1)
    want = np.where(cont, r + 0.99 * (1.0 - d) * later, y1)
    np.testing.assert_allclose(y2, want, rtol=1e-5, atol=1e-5)
    assert np.any(cont & (d == 0)) and np.max(np.abs(y2 - y1)[mask]) > 1e-4


@pytest.mark.parametrize("variant", [
    dict(select_with="target"),  # greedy action from the target utilities (not double Q)
    dict(target_alloc="next"),  # target nets run with row t+1's allocation
    dict(stats="online"),  # denormalised with the online Pop-Art statistics
])
def test_reference_variants_are_distinguishable(setup, window, ref_targets, variant):
    """Each broken rule changes some unmasked target: the comparison above can fail."""
    name, _, state, ref, _, _ = setup
    if name == "flat" and "target_alloc" in variant:
        pytest.skip("flat methods carry no allocation")
    Y, M = ref_targets
    Yv, _ = ref.targets(state, window, **variant)
    assert np.max(np.abs(Y - Yv)[M]) > 1e-3


def test_target_denormalisation_identity_before_first_copy(setup, window):
    """With uninitialised target statistics the target mixer output is used raw (2.5)."""
    _, _, state, ref, targets, _ = setup
    fresh = state.replace(target_stats=state.target_stats.replace(initialised=jnp.bool_(False)))
    Y, M = ref.targets(fresh, window)
    y, mask, _ = targets(fresh, window)
    np.testing.assert_allclose(np.asarray(y)[M], Y[M], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- update
@pytest.mark.parametrize("initialised", [False, True])
def test_update_popart_first_then_loss(setup, window, ref_targets, initialised):
    """Pop-Art statistics follow 2.5 on the masked targets, the affine is rescaled (only once
    initialised) BEFORE the loss, and the loss is the masked MSE against (Y - mu) / sigma."""
    _, _, state, ref, _, update = setup
    state = state.replace(stats=ONLINE_STATS if initialised else state.stats)
    assert bool(state.stats.initialised) == initialised
    Y, M = ref_targets
    m = M.astype(np.float64)
    new, metrics = update(state, window)
    mu, s2, mu_old, s2_old = popart_ref(state.stats, Y, m)
    assert bool(new.stats.initialised)
    np.testing.assert_allclose(float(new.stats.mu), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(new.stats.sigma2), s2, rtol=1e-5, atol=1e-6)

    mixer = state.params["mixer"]["params"]
    a, b = np.asarray(mixer["popart_a"], np.float64), np.asarray(mixer["popart_b"], np.float64)
    sigma, sigma_old = np.sqrt(s2), np.sqrt(s2_old)
    a_new, b_new = a * sigma_old / sigma, (sigma_old * b + mu_old - mu) / sigma
    if not initialised:
        np.testing.assert_allclose(a_new, a)  # the first call does not rescale
    qtot = a_new * ref.pre_affine(state.params, window) + b_new
    z = (Y - mu) / sigma
    loss = (m * (qtot - z) ** 2).sum() / m.sum()
    np.testing.assert_allclose(float(metrics["losses/q_loss"]), loss, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["train_metrics/target_mean"]),
                               (Y * m).sum() / m.sum(), rtol=1e-5, atol=1e-6)
    # targets untouched by the step
    for x, y in zip(jax.tree.leaves(new.target_params), jax.tree.leaves(state.target_params)):
        np.testing.assert_array_equal(x, y)


def test_loss_and_grads_is_the_gradient_at_the_rescaled_affine(setup, window):
    """The one-pass step (targets and Pop-Art inside the differentiated function) gives the
    gradient of the plain two-pass recipe: targets from their own online pass, statistics
    updated, then the loss differentiated at the rescaled affine (a', b')."""
    _, learner, state, _, _, _ = setup
    state = state.replace(stats=ONLINE_STATS)  # initialised: the affine really is rescaled

    def two_pass(state, w, rescale=True):
        y, mask, alloc = learner.targets(state, w)
        m = mask.astype(jnp.float32)
        mixer = state.params["mixer"]["params"]
        _, a, b, z = popart_update(state.stats, mixer["popart_a"], mixer["popart_b"], y, m)
        params = jax.tree.map(lambda x: x, state.params)
        if rescale:
            params["mixer"]["params"] = dict(mixer, popart_a=a, popart_b=b)
        cur = jax.tree.map(lambda x: x[:, :-1], w)

        def loss(p):
            q = learner._utilities(p["agent"], cur, alloc[:, :-1])
            q = jnp.take_along_axis(q, cur.actions[..., None], -1)[..., 0]
            _, qtot = learner._mixed(p["mixer"], q, cur, alloc[:, :-1])
            return jnp.sum(((qtot - z) * m) ** 2) / jnp.maximum(jnp.sum(m), 1.0)

        return jax.grad(loss)(params), a, b

    grads, out = jax.jit(learner.loss_and_grads)(state, window)
    want, a, b = jax.jit(two_pass)(state, window)
    np.testing.assert_allclose(np.asarray(out.popart_a), np.asarray(a), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.popart_b), np.asarray(b), rtol=1e-6, atol=1e-7)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)
    # the affine's gradient at the old (a, b) is another one: the comparison can fail
    old = jax.jit(lambda s, w: two_pass(s, w, rescale=False)[0])(state, window)
    g_a = np.asarray(grads["mixer"]["params"]["popart_a"])
    assert np.max(np.abs(g_a - np.asarray(old["mixer"]["params"]["popart_a"]))) > 1e-4


def test_update_without_popart_fits_raw_targets(setup, window, ref_targets):
    """popart=False: statistics stay uninitialised (target denormalisation is the identity),
    the loss is the masked MSE of the pre-affine output y against the raw targets Y, and the
    unused affine gets no gradient."""
    name, learner, state, _, _, _ = setup
    off = QMixLearner(dataclasses.replace(learner.cfg, popart=False))
    fresh = state.replace(target_stats=state.target_stats.replace(initialised=jnp.bool_(False)),
                          stats=state.stats.replace(initialised=jnp.bool_(False)))
    ref = Reference(off)
    Y, M = ref.targets(fresh, window)
    m = M.astype(np.float64)
    new, metrics = jax.jit(off.update)(fresh, window)
    assert not bool(new.stats.initialised)
    y = ref.pre_affine(fresh.params, window)
    loss = (m * (y - Y) ** 2).sum() / m.sum()
    np.testing.assert_allclose(float(metrics["losses/q_loss"]), loss, rtol=1e-4)
    mixer_old, mixer_new = fresh.params["mixer"]["params"], new.params["mixer"]["params"]
    for k in ("popart_a", "popart_b"):
        np.testing.assert_array_equal(mixer_new[k], mixer_old[k])
    # control: the same step with Pop-Art on gives a different loss (normalised targets)
    on = jax.jit(learner.update)(fresh, window)[1]["losses/q_loss"]
    assert abs(float(on) - loss) > 1e-3


def _perturb(w, **changes):
    out = {}
    for field, entries in changes.items():
        x = np.array(getattr(w, field))
        for idx in entries:
            x[idx] += 7.0
        out[field] = jnp.asarray(x)
    return w.replace(**out)


def test_masked_rows_do_not_contribute(setup, window):
    """Rewards of masked transitions (spec 2.7) change neither the loss nor the step."""
    name, _, state, _, _, update = setup
    # flat: the final-observation row after the time-out; subtask mode additionally: subtask 0
    # after it finished, and subtask 0 while nobody is allocated to it.
    masked = _perturb(window, reward=[(1, 1)],
                      task_rewards=[(1, 1, 0), (1, 1, 1), (0, 2, 0), (1, 2, 0)])
    new_a, met_a = update(state, window)
    new_b, met_b = update(state, masked)
    assert float(met_a["losses/q_loss"]) == float(met_b["losses/q_loss"])
    for x, y in zip(jax.tree.leaves(new_a), jax.tree.leaves(new_b)):
        np.testing.assert_array_equal(x, y)
    # control: an unmasked reward does change the loss
    field = "reward" if name == "flat" else "task_rewards"
    live = _perturb(window, **{field: [(0, 0)] if name == "flat" else [(0, 0, 0)]})
    assert float(update(state, live)[1]["losses/q_loss"]) != float(met_a["losses/q_loss"])


def test_optimiser_decreases_loss_on_fixed_batch(setup, window):
    _, _, state, _, _, update = setup
    losses = []
    for _ in range(40):
        state, metrics = update(state, window)
        losses.append(float(metrics["losses/q_loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 30, losses


def test_update_target_copies_params_and_stats(setup, window):
    _, learner, state, _, _, update = setup
    new, _ = update(state, window)
    tgt = learner.update_target(new)
    for x, y in zip(jax.tree.leaves(tgt.target_params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(x, y)
    assert float(tgt.target_stats.mu) == float(new.stats.mu)
    assert float(tgt.target_stats.sigma2) == float(new.stats.sigma2)


# ------------------------------------------------------------------------------------- act
N_SAMPLES = 4000


@pytest.fixture(scope="module")
def acting(setup, window):
    """Observation batch of N_SAMPLES copies of one row whose best action is unavailable.

    Agent 0 (allocated to subtask 1): its best action has code 0, the second best code 2
    (subtask 0 only), the third code 3 (subtask 1), the worst code 1. Agent 1: one action.
    """
    name, learner, state, ref, _, _ = setup
    r = ref.row(window, 0, 0)
    alloc = np.array([[False, True], [True, False]])
    q = ref.q(state.params["agent"], r, alloc if name == "mask" else np.zeros_like(alloc))
    order = np.argsort(-q[0])
    codes = np.zeros((NA, NACT), np.int32)
    codes[0, order] = [0, 2, 3, 1]
    codes[1, 2] = 1
    e2t = r["entity2task_mask"].copy()
    e2t[:NA] = ~alloc
    row = {k: np.broadcast_to(v, (N_SAMPLES,) + v.shape) for k, v in dict(
        entities=r["entities"], avail_actions=codes, obs_mask=r["obs_mask"],
        entity_mask=r["entity_mask"], entity2task_mask=e2t, task_mask=r["task_mask"]).items()}
    from envs_jax.core import Observation

    obs = Observation(**{k: jnp.asarray(v) for k, v in row.items()})
    last = jnp.asarray(np.broadcast_to(r["last_action"], (N_SAMPLES, NA)))
    allocs = jnp.asarray(np.broadcast_to(alloc, (N_SAMPLES, NA, NT)))
    act = jax.jit(learner.act)

    def run(eps, seed=0):
        return np.asarray(act(state.params, jax.random.PRNGKey(seed), obs, last, allocs,
                              jnp.float32(eps)))

    # available: mask mode parses codes with the allocation (subtask 1 -> codes 1 and 3)
    avail0 = order[[2, 3]] if name == "mask" else order[[1, 2, 3]]
    return run, order, set(avail0.tolist())


def test_act_greedy_is_best_available(setup, acting):
    name, *_ = setup
    run, order, _ = acting
    a = run(0.0)
    best = order[2] if name == "mask" else order[1]
    assert np.all(a[:, 0] == best) and np.all(a[:, 1] == 2)


def test_act_uniform_among_available(acting):
    run, _, avail0 = acting
    a = run(1.0)
    assert set(np.unique(a[:, 0]).tolist()) == avail0  # never an unavailable action
    assert np.all(a[:, 1] == 2)
    counts = np.array([np.sum(a[:, 0] == k) for k in sorted(avail0)])
    assert sps.chisquare(counts).pvalue > 1e-3, counts


def test_act_epsilon_mixes(setup, acting):
    """eps=0.5: the greedy action has probability 0.5 + 0.5/n_available (per agent, iid)."""
    name, *_ = setup
    run, order, avail0 = acting
    a = run(0.5, seed=1)
    best = order[2] if name == "mask" else order[1]
    p = 0.5 + 0.5 / len(avail0)
    frac = np.mean(a[:, 0] == best)
    assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / N_SAMPLES), frac
    assert set(np.unique(a[:, 0]).tolist()) <= avail0


def test_vdn_mixer_sums_each_subtasks_utilities(setup, window):
    """mixer='vdn' (diagnostic baseline): y is the sum of the chosen utilities of each group
    (all agents flat, the subtask's members in 'mask' mode), with no hypernetworks at all."""
    name, learner, _, ref, _, _ = setup
    vdn = QMixLearner(dataclasses.replace(learner.cfg, mixer="vdn", popart=False))
    state = vdn.init(jax.random.PRNGKey(3), jax.tree.map(lambda x: x[0, 0], window))
    assert set(state.params["mixer"]["params"]) == {"popart_a", "popart_b"}
    mix = jax.jit(vdn.mix)
    for b, t in [(0, 0), (0, 1), (1, 3)]:
        r = ref.row(window, b, t)
        alloc = ref.alloc(r)
        q = np.random.default_rng(b * T + t).normal(size=NA).astype(np.float32)
        y, qtot = mix(state.params["mixer"], q, r["entities"], r["entity_mask"],
                      r["entity2task_mask"], r["last_action"], alloc)
        groups = alloc.astype(np.float32) if name == "mask" else np.ones((NA, 1), np.float32)
        np.testing.assert_allclose(np.asarray(y), groups.T @ q, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(qtot), np.asarray(y))  # popart=False
    new, metrics = jax.jit(vdn.update)(state, window)
    assert np.isfinite(float(metrics["losses/q_loss"]))
    moved = jax.tree.map(lambda a, b_: float(jnp.abs(a - b_).max()), new.params["agent"],
                         state.params["agent"])
    assert max(jax.tree.leaves(moved)) > 0.0


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_optimizer_option_first_step_size(setup, window, kind):
    """The first step of Adam moves each parameter by lr·|g|/(|g| + eps) with the original's
    eps = 1e-5 (alma.md E8): lr for all but the tiniest gradients; PyTorch-convention
    RMSProp (decay 0.99, eps 1e-5 outside the root) by lr·|g|/(0.1·|g| + eps) < 10·lr, close
    to 10·lr for the largest gradients."""
    _, learner, state, _, _, _ = setup
    lrn = QMixLearner(dataclasses.replace(learner.cfg, optimizer=kind, popart=False, lr=1e-3))
    fresh = state.replace(opt_state=lrn.optimizer.init(state.params))
    new, _ = jax.jit(lrn.update)(fresh, window)
    step = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        jax.tree.leaves(new.params["agent"]), jax.tree.leaves(fresh.params["agent"]))])
    step = step[step > 0]
    assert step.size > 100
    step = step / 1e-3
    if kind == "adam":
        assert 0.9 < np.median(step) <= 1.0 + 1e-3 and step.max() < 1.0 + 1e-3
        # eps itself, on known gradients: a gradient of exactly eps moves by lr / 2
        opt = make_optimizer(lr=1e-3, kind="adam")
        g = {"w": jnp.array([1e-5, 1.0, -3.0])}
        upd, _ = opt.update(g, opt.init(g), g)
        np.testing.assert_allclose(upd["w"] / 1e-3, [-0.5, -1.0 / (1 + 1e-5), 1.0],
                                   rtol=1e-4)
    else:
        assert 9.0 < step.max() < 10.0 + 1e-3 and np.median(step) > 2.0


def test_update_splits_give_the_same_step(setup, window):
    """The window batch in two independent pieces (update_splits=2): same targets, loss,
    Pop-Art affine and gradients as one piece, to float reassociation."""
    name, learner, state, _, _, _ = setup
    if name == "flat":
        pytest.skip("the split is the same code in both modes: tested once, per subtask")
    split = QMixLearner(dataclasses.replace(learner.cfg, update_splits=2))
    state = state.replace(stats=ONLINE_STATS)
    grads, out = jax.jit(learner.loss_and_grads)(state, window)
    grads2, out2 = jax.jit(split.loss_and_grads)(state, window)
    for a, b in [(out.loss, out2.loss), (out.qtot, out2.qtot), (out.y, out2.y),
                 (out.popart_a, out2.popart_a), (out.popart_b, out2.popart_b)]:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    for g, r in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
    assert float(np.max(np.abs(np.asarray(out.qtot)))) > 0  # a real comparison
