"""Allocation proposal network and critic (spec 3.2-3.5, 6.5 items 3, 4, 7).

Slow numpy references of the encoder and of the autoregressive decoder are written from the
spec and compared with the scan implementation; sampling frequencies are compared with the
enumerated distribution; padding, permutations and NaN-safety are checked on small cases.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import fast_init
from scipy import stats as sps

from alma_jax.nn import (
    AllocCritic,
    AllocPolicy,
    CountEmbed,
    Decoded,
    MaskedMHA,
    decode,
    encode,
)

NA, NN, NT, ED, D = 4, 4, 4, 5, 16
NE = NA + NN
PADDED_AGENT, FINISHED = 2, 1  # agent slot 2 is padding, subtask 1 is finished
ACTIVE_AGENTS = [0, 1, 3]
OPEN_TASKS = [0, 2, 3]
C = 0.2  # count normalisation
NO_PERM = jnp.arange(NT)
N_CHI2 = 20000


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Compile with most XLA optimisations off: these tests check values, not speed."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


class Case(NamedTuple):
    """One decision row in stored polarity (True = padded / finished / not a member)."""

    entities: jax.Array  # [NE, ED]
    entity_mask: jax.Array  # [NE]
    e2t: jax.Array  # [NE, NT]
    task_mask: jax.Array  # [NT]
    last_alloc: jax.Array  # [NA, NT]


def make_case(seed: int = 0) -> Case:
    """Agents 0, 1, 3 active, slot 2 padded; non-agents: one per subtask 0 and 1 (finished),
    one in both 2 and 3, the last slot padded; subtask 1 finished."""
    rng = np.random.default_rng(seed)
    entity_mask = np.zeros(NE, bool)
    entity_mask[[PADDED_AGENT, NE - 1]] = True
    entities = rng.normal(size=(NE, ED)).astype(np.float32) * ~entity_mask[:, None]
    e2t = np.ones((NE, NT), bool)
    e2t[NA + 0, 0] = e2t[NA + 1, 1] = e2t[NA + 2, 2] = e2t[NA + 2, 3] = False
    task_mask = np.zeros(NT, bool)
    task_mask[FINISHED] = True
    last_alloc = np.zeros((NA, NT), bool)
    last_alloc[0, 0] = last_alloc[1, 3] = last_alloc[3, 2] = True
    return Case(*map(jnp.asarray, (entities, entity_mask, e2t, task_mask, last_alloc)))


def active(c: Case) -> jax.Array:
    return ~c.entity_mask[:NA]


@functools.cache
def nets(autoreg=True, sel_task_upd=True, subtask_mask=True, pi_ag_attn=False):
    """Policy, critic and parameters scaled up so the distribution is far from uniform."""
    policy = AllocPolicy(NA, D, 2, pi_autoreg=autoreg, sel_task_upd=sel_task_upd,
                         subtask_mask=subtask_mask, pi_ag_attn=pi_ag_attn)
    critic = AllocCritic(NA, D, 2)
    c = make_case()
    pp = fast_init(policy, c.entities, c.entity_mask, c.e2t, c.last_alloc, c.task_mask, NO_PERM,
                   seed=1)
    pp = jax.tree.map(lambda x: 2.5 * x, pp)
    pc = fast_init(critic, c.entities, c.entity_mask, c.e2t, c.last_alloc, NO_PERM, seed=2)
    return policy, critic, pp, pc


class Out(NamedTuple):
    scored: Decoded  # teacher forcing of the given allocations [M]
    sampled: Decoded  # one proposal per Gumbel draw [S]
    rescored: Decoded  # teacher forcing of the sampled allocations [S]
    q: jax.Array  # critic values (normalised scale) of the given allocations [M]


@functools.cache
def runner(policy: AllocPolicy, critic: AllocCritic):
    """One jitted program per network pair (and input shapes), shared by the tests."""

    @jax.jit
    def run(pp, pc, c: Case, allocs, gumbel, perm) -> Out:
        enc = encode(policy, pp, c.entities, c.entity_mask, c.e2t, c.last_alloc, perm)

        def score_all(a):
            return jax.vmap(lambda x: decode(policy, pp, enc, c.task_mask, active(c),
                                             alloc=x))(a)

        sampled = jax.vmap(lambda g: decode(policy, pp, enc, c.task_mask, active(c),
                                            gumbel=g))(gumbel)
        q = jax.vmap(lambda a: critic.apply(pc, c.entities, c.entity_mask, c.e2t, a, perm)[1])(
            allocs)
        return Out(score_all(allocs), sampled, score_all(sampled.alloc), q)

    return run


def run(flags: dict | None = None, c: Case | None = None, allocs=None, perm=NO_PERM,
        n_samples: int = N_CHI2, seed: int = 0) -> Out:
    """Score / sample / evaluate on case `c` (allocs default: all 64 over every subtask)."""
    policy, critic, pp, pc = nets(**(flags or {}))
    allocs = ALL_ALLOCS if allocs is None else allocs
    g = jax.random.gumbel(jax.random.key(seed), (n_samples, NA, NT))
    return runner(policy, critic)(pp, pc, c, jnp.asarray(allocs), g, jnp.asarray(perm))


def enumerate_allocs(agents=ACTIVE_AGENTS, tasks=OPEN_TASKS, na=NA, nt=NT) -> np.ndarray:
    """Every allocation of `agents` to `tasks` (others zero rows) -> [M, na, nt] bool."""
    out = []
    for choice in itertools.product(tasks, repeat=len(agents)):
        a = np.zeros((na, nt), bool)
        a[agents, choice] = True
        out.append(a)
    return np.stack(out)


ALL_ALLOCS = enumerate_allocs(tasks=range(NT))  # 64 allocations, some use the finished task
OPEN = ~ALL_ALLOCS[:, :, FINISHED].any(-1)  # the 27 that can have probability


# --------------------------------------------------------------- slow numpy references
def ref_group_block(member: np.ndarray) -> np.ndarray:
    n = member.shape[0]
    return np.array([[not any(member[i] & member[j]) for j in range(n)] for i in range(n)])


def ref_encode(pp, c: Case, perm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spec 3.3 encoder steps 1-6 written out; the attention layer itself is MaskedMHA."""
    p = pp["params"]
    member = np.concatenate([np.asarray(c.last_alloc), ~np.asarray(c.e2t)[NA:]])
    w_in, b_in = np.asarray(p["fc_in"]["kernel"]), np.asarray(p["fc_in"]["bias"])
    w_task = np.asarray(p["task_embed"]["fc"]["kernel"])
    x1 = (np.asarray(c.entities) @ w_in + b_in
          + member[:, np.asarray(perm)].astype(np.float32) @ w_task)
    blocked = ref_group_block(member[NA:])
    n2 = np.asarray(MaskedMHA(D, D, 2).apply(
        {"params": p["attn"]}, jnp.maximum(x1[NA:], 0.0), blocked, ~np.asarray(c.entity_mask[NA:])))
    U = np.zeros((NT, D))
    for e in range(NN):
        for k in range(NT):
            if member[NA + e, k]:
                U[k] += n2[e]
    cN = C * member[NA:].sum(0)
    return x1[:NA], U, cN


def ref_decode(pp, A, U, cN, task_mask, active_ag, choices):
    """Spec 3.3 decoder one agent at a time in float64 -> (factors [NA], entropies [NA], maxp)."""
    p = pp["params"]
    wc, bc = (np.asarray(p["count_embed"][n], float) for n in ("kernel", "bias"))
    wu, bu = (np.asarray(p["fc_upd"][n], float) for n in ("kernel", "bias"))
    U = np.array(U, float)
    cA = np.zeros(NT)
    open_ = [k for k in range(NT) if not task_mask[k]]
    factors, ents, maxps = np.zeros(NA), np.zeros(NA), np.zeros(NA)
    for i in range(NA):
        if not active_ag[i]:
            continue
        logits = {}
        for k in open_:
            key = U[k] + np.array([cN[k], cA[k]]) @ wc + bc
            logits[k] = key @ np.asarray(A[i], float) / np.sqrt(D)
        lse = np.log(sum(np.exp(v) for v in logits.values()))
        logp = {k: v - lse for k, v in logits.items()}
        k_i = choices[i]
        factors[i] = logp[k_i]
        ents[i] = -sum(np.exp(v) * v for v in logp.values())
        maxps[i] = max(np.exp(v) for v in logp.values())
        U[k_i] = U[k_i] + np.maximum(np.concatenate([U[k_i], A[i]]), 0) @ wu + bu
        cA[k_i] += C
    return factors, ents, maxps


# ------------------------------------------------------------------------------ tests
def test_encoder_matches_reference():
    policy, _, pp, _ = nets()
    c = make_case(3)
    perm = jnp.array([2, 0, 3, 1])
    enc = jax.jit(functools.partial(encode, policy))(
        pp, c.entities, c.entity_mask, c.e2t, c.last_alloc, perm)
    A, U, cN = ref_encode(pp, c, perm)
    np.testing.assert_allclose(enc.agents, A, atol=1e-5)
    np.testing.assert_allclose(enc.subtasks, U, atol=1e-5)
    np.testing.assert_allclose(enc.counts, cN, atol=1e-6)


def test_sampled_logprob_is_sum_of_reference_factors_and_equals_teacher_forcing():
    _, _, pp, _ = nets()
    c = make_case(4)
    perm = jnp.array([1, 3, 0, 2])
    out = run(c=c, perm=perm, seed=1)
    dec = out.sampled
    A, U, cN = ref_encode(pp, c, perm)
    for s in range(16):
        choices = np.asarray(dec.alloc[s]).argmax(-1)
        f, h, maxp = ref_decode(pp, A, U, cN, np.asarray(c.task_mask), np.asarray(active(c)),
                                choices)
        np.testing.assert_allclose(dec.step_log_prob[s], f, atol=1e-5)
        np.testing.assert_allclose(dec.log_prob[s], f.sum(), atol=2e-5)
        np.testing.assert_allclose(dec.step_entropy[s], h, atol=1e-5)
        np.testing.assert_allclose(dec.entropy[s], h.sum(), atol=2e-5)
        np.testing.assert_allclose(dec.best_prob[s], maxp.sum() / len(ACTIVE_AGENTS), atol=1e-6)
    # Same scan body: sampling and teacher forcing agree bit for bit.
    np.testing.assert_array_equal(out.rescored.log_prob, dec.log_prob)
    np.testing.assert_array_equal(out.rescored.entropy, dec.entropy)
    np.testing.assert_array_equal(out.rescored.alloc, dec.alloc)


def test_padded_agents_and_finished_subtasks_get_no_probability():
    c = make_case(5)
    out = run(c=c, seed=2)
    alloc = np.asarray(out.sampled.alloc)
    assert not alloc[:, PADDED_AGENT].any()
    assert not alloc[:, :, FINISHED].any()
    np.testing.assert_array_equal(alloc[:, ACTIVE_AGENTS].sum(-1), 1)
    assert np.all(out.sampled.step_log_prob[:, PADDED_AGENT] == 0)
    assert np.all(out.sampled.step_entropy[:, PADDED_AGENT] == 0)
    # Every allocation that uses the finished subtask has probability exactly 0.
    lp = np.asarray(out.scored.log_prob)
    uses_finished = ALL_ALLOCS[:, :, FINISHED].any(-1)
    assert np.all(np.exp(lp[uses_finished]) == 0.0)
    np.testing.assert_allclose(np.exp(lp[~uses_finished]).sum(), 1.0, atol=1e-5)
    # A (garbage) row given for the padded agent is ignored by the scorer.
    garbage = ALL_ALLOCS.copy()
    garbage[:, PADDED_AGENT, 0] = True
    lp_g = np.asarray(run(c=c, allocs=garbage, seed=2).scored.log_prob)
    np.testing.assert_array_equal(lp_g, lp)


def test_sampling_frequencies_match_enumerated_probabilities():
    c = make_case(6)
    out = run(c=c, perm=[3, 2, 1, 0], seed=3)
    probs = np.exp(np.asarray(out.scored.log_prob, float))[OPEN]  # 3 agents x 3 subtasks
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    assert probs.max() > 3 * probs.min()  # a non-trivial distribution
    weights = NT ** np.arange(NA)[::-1]
    cell = {int(code): i for i, code in enumerate(ALL_ALLOCS[OPEN].argmax(-1) @ weights)}
    codes = np.asarray(out.sampled.alloc).argmax(-1) @ weights
    counts = np.bincount([cell[int(x)] for x in codes], minlength=len(probs))
    _, p_value = sps.chisquare(counts, probs / probs.sum() * N_CHI2)
    assert p_value > 1e-3, p_value


def permute_agents(c: Case, perm_a) -> Case:
    perm_e = np.r_[perm_a, np.arange(NA, NE)]
    return c._replace(entities=c.entities[perm_e], entity_mask=c.entity_mask[perm_e],
                      e2t=c.e2t[perm_e], last_alloc=c.last_alloc[np.asarray(perm_a)])


def test_agent_slot_permutation():
    """Independent factorisation: any agent permutation permutes the distribution. The
    autoregressive decoder factorises in slot order, so its joint is equivariant only to
    permutations that keep the order of the deciding agents (moving padded slots around);
    its encoder and the critic are equivariant / invariant to every agent permutation."""
    c = make_case(7)
    perm = [2, 3, 0, 1]
    for flags, perm_a in [({"autoreg": False}, [3, 0, 2, 1]), ({}, [2, 0, 1, 3])]:
        out = run(flags, c, perm=perm)
        out_p = run(flags, permute_agents(c, perm_a), allocs=ALL_ALLOCS[:, perm_a], perm=perm)
        np.testing.assert_allclose(out_p.scored.log_prob, out.scored.log_prob, atol=1e-5)
    policy, _, pp, _ = nets()
    perm_a = [3, 0, 2, 1]
    cp = permute_agents(c, perm_a)
    enc = encode(policy, pp, c.entities, c.entity_mask, c.e2t, c.last_alloc, jnp.asarray(perm))
    enc_p = encode(policy, pp, cp.entities, cp.entity_mask, cp.e2t, cp.last_alloc,
                   jnp.asarray(perm))
    np.testing.assert_allclose(enc_p.agents, enc.agents[np.asarray(perm_a)], atol=1e-5)
    np.testing.assert_allclose(enc_p.subtasks, enc.subtasks, atol=1e-5)
    q = run(c=c, perm=perm).q
    q_p = run(c=cp, allocs=ALL_ALLOCS[:, perm_a], perm=perm).q
    np.testing.assert_allclose(q_p, q, atol=1e-5)
    assert np.ptp(np.asarray(q)) > 1e-4  # the critic does distinguish allocations


def test_nonagent_permutation_and_padding_invariance():
    c = make_case(8)
    perm = [1, 0, 3, 2]
    out = run(c=c, perm=perm)
    perm_e = np.r_[np.arange(NA), NA + np.array([2, 3, 0, 1])]
    cp = c._replace(entities=c.entities[perm_e], entity_mask=c.entity_mask[perm_e],
                    e2t=c.e2t[perm_e])
    n_pad = 3
    cpad = c._replace(
        entities=jnp.concatenate([c.entities, jnp.zeros((n_pad, ED))]),
        entity_mask=jnp.concatenate([c.entity_mask, jnp.ones(n_pad, bool)]),
        e2t=jnp.concatenate([c.e2t, jnp.ones((n_pad, NT), bool)]))
    for other in (cp, cpad):
        out_o = run(c=other, perm=perm)
        np.testing.assert_allclose(out_o.scored.log_prob, out.scored.log_prob, atol=1e-5)
        np.testing.assert_allclose(out_o.q, out.q, atol=1e-5)


def test_count_embed_matches_loops():
    c = make_case(9)
    member = jnp.concatenate([c.last_alloc, ~c.e2t[NA:]])
    mod = CountEmbed(D, NA)
    p = fast_init(mod, member, seed=4)
    out = np.asarray(mod.apply(p, member))
    w, b = np.asarray(p["params"]["fc"]["kernel"]), np.asarray(p["params"]["fc"]["bias"])
    m = np.asarray(member)
    ref = np.zeros((NE, D))
    for k in range(NT):
        n_ag = sum(m[i, k] for i in range(NA))
        n_nn = sum(m[e, k] for e in range(NA, NE))
        ck = C * (np.array([n_ag, n_nn]) @ w + b)
        for e in range(NE):
            if m[e, k]:
                ref[e] += ck
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("flags", [dict(sel_task_upd=False), dict(subtask_mask=False),
                                   dict(pi_ag_attn=True), dict(autoreg=False)])
def test_flag_variants_are_distributions(flags):
    out = run(flags, make_case(10))
    lp = np.asarray(out.scored.log_prob, float)
    np.testing.assert_allclose(np.exp(lp[OPEN]).sum(), 1.0, atol=1e-5)
    assert np.all(np.exp(lp[~OPEN]) == 0.0)
    # Separately fused programs may differ in the last bit when the logits need no carry.
    np.testing.assert_allclose(out.rescored.log_prob, out.sampled.log_prob, rtol=1e-6)


def test_pi_ag_attn_looks_only_at_later_agents():
    policy, _, pp, _ = nets(pi_ag_attn=True)
    c = make_case(11)
    enc = encode(policy, pp, c.entities, c.entity_mask, c.e2t, c.last_alloc, NO_PERM)
    c2 = c._replace(entities=c.entities.at[1].add(1.0))  # perturb agent 1
    enc2 = encode(policy, pp, c2.entities, c2.entity_mask, c2.e2t, c2.last_alloc, NO_PERM)
    diff = np.abs(np.asarray(enc2.agents - enc.agents)).max(-1)
    assert diff[0] > 1e-4  # agent 0 attends to agent 1 (decided later)
    assert diff[3] == 0.0  # agent 3 does not (decided earlier)


def test_subtask_mask_restricts_nonagent_attention_to_the_subtask():
    """Perturbing the non-agent of subtask 0 moves only U_0 with subtask_mask, more without."""
    c = make_case(13)
    c2 = c._replace(entities=c.entities.at[NA + 0].add(1.0))
    moved = {}
    for flag in (True, False):
        policy, _, pp, _ = nets(subtask_mask=flag)
        u = [encode(policy, pp, x.entities, x.entity_mask, x.e2t, x.last_alloc, NO_PERM).subtasks
             for x in (c, c2)]
        moved[flag] = np.abs(np.asarray(u[1] - u[0])).max(-1) > 1e-6
    np.testing.assert_array_equal(moved[True], [True, False, False, False])
    assert moved[False][[0, 2, 3]].all()  # non-agents of 1, 2, 3 now attend to it


@functools.cache
def nan_check_grads():
    policy, critic, _, _ = nets()

    def pi_obj(p, c: Case, g):
        enc = encode(policy, p, c.entities, c.entity_mask, c.e2t, c.last_alloc, NO_PERM)
        dec = decode(policy, p, enc, c.task_mask, active(c), gumbel=g)
        forced = decode(policy, p, enc, c.task_mask, active(c), alloc=dec.alloc)
        return forced.log_prob + forced.entropy + dec.best_prob, dec

    def q_obj(p, c: Case, alloc):
        return critic.apply(p, c.entities, c.entity_mask, c.e2t, alloc, NO_PERM)[1]

    @jax.jit
    def grads(pp, pc, c: Case, g):
        (val, dec), gp = jax.value_and_grad(pi_obj, has_aux=True)(pp, c, g)
        q, gq = jax.value_and_grad(q_obj)(pc, c, dec.alloc)
        return val, dec, gp, q, gq

    return grads


@pytest.mark.parametrize("all_padded", [True, False])
def test_no_nan_with_all_padded_rows(all_padded):
    """All slots padded, or live agents with every subtask finished: zero rows, finite grads."""
    _, _, pp, pc = nets()
    c = make_case(12)._replace(task_mask=jnp.ones(NT, bool))
    if all_padded:
        c = c._replace(entities=jnp.zeros_like(c.entities), entity_mask=jnp.ones(NE, bool),
                       e2t=jnp.ones((NE, NT), bool), last_alloc=jnp.zeros((NA, NT), bool))
    g = jax.random.gumbel(jax.random.key(5), (NA, NT))
    val, dec, gp, q, gq = nan_check_grads()(pp, pc, c, g)
    assert not np.asarray(dec.alloc).any()
    assert np.isfinite(val) and np.isfinite(q)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((gp, gq)))
