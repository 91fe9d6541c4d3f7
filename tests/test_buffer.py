"""Replay buffer, window sampler (spec 4.3) and low-level loss masks (2.7); spec 6.5 test 14."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from alma_jax.buffer import (
    ROW_FIELDS,
    BufferTooLargeError,
    EpisodeBatch,
    alloc_to_index,
    buffer_add,
    buffer_init,
    buffer_nbytes,
    buffer_spec,
    check_buffer_fits,
    decode_rows,
    default_memory_budget,
    describe_memory,
    draw_episodes,
    draw_start_uniforms,
    empty_episodes,
    index_to_onehot,
    last_action_onehot,
    loss_mask,
    prev_alloc_onehot,
    recent_episodes,
    sample_windows,
    storage_dtypes,
    strata_bounds,
    subtask_loss_mask,
    windows_from_draws,
)

NA, NE, NT, NACT, ED = 3, 5, 2, 4, 3
# Few distinct shapes keep compilation (most of this file's run time) low: L = 12, C = 10.
L, C = 12, 10

init_jit = jax.jit(buffer_init, static_argnums=1)
add_jit = jax.jit(buffer_add)
windows_jit = jax.jit(windows_from_draws, static_argnames="max_traj_len")
draw_jit = jax.jit(draw_episodes, static_argnames="batch_size")
sample_jit = jax.jit(sample_windows, static_argnames=("batch_size", "max_traj_len"))
masks_jit = jax.jit(lambda w, a=None: (loss_mask(w), subtask_loss_mask(w, a)))


def make_episodes(lengths, length: int = L, ids=None, seed: int = 0) -> EpisodeBatch:
    """Synthetic episodes [E, L] with the given filled lengths; reward tags id*1000 + row."""
    rng = np.random.default_rng(seed)
    E = len(lengths)
    ids = np.arange(E) if ids is None else np.asarray(ids)
    lengths = np.asarray(lengths)
    r = np.arange(length)
    filled = r[None, :] < lengths[:, None]
    last_row = r[None, :] == lengths[:, None] - 1  # final observation: no transition
    codes = np.array([0, 1] + [2 + k for k in range(NT)] + [1000 + j for j in range(NA)])
    actions = rng.integers(0, NACT, (E, length, NA))
    actions[last_row] = 0
    last_action = np.concatenate([np.full((E, 1, NA), -1), actions[:, :-1]], axis=1)
    reset = r[None, :] == lengths[:, None] - 2
    d = {
        "entities": rng.normal(size=(E, length, NE, ED)).astype(np.float32),
        "obs_mask": rng.random((E, length, NE, NE)) < 0.3,
        "entity_mask": rng.random((E, length, NE)) < 0.3,
        "entity2task_mask": rng.random((E, length, NE, NT)) < 0.5,
        "task_mask": rng.random((E, length, NT)) < 0.3,
        "avail_actions": rng.choice(codes, (E, length, NA, NACT)).astype(np.int32),
        "actions": actions.astype(np.int32),
        "reward": (ids[:, None] * 1000 + r[None, :]).astype(np.float32),
        "task_rewards": rng.normal(size=(E, length, NT)).astype(np.float32),
        "terminated": reset & (rng.random((E, length)) < 0.5),
        "reset": reset,
        "filled": filled,
        "hier_decision": rng.random((E, length)) < 0.3,
        "tasks_terminated": rng.random((E, length, NT)) < 0.3,
        "last_action": last_action.astype(np.int32),
        "prev_alloc": rng.integers(-1, NT, (E, length, NA)).astype(np.int32),
    }
    for k, v in d.items():  # rows past the end are padding; index fields pad with -1
        v[~filled] = -1 if k in ("last_action", "prev_alloc") else 0
    return EpisodeBatch(**{k: jnp.asarray(v) for k, v in d.items()})


def tags(x) -> tuple[np.ndarray, np.ndarray]:
    """(episode id, row) decoded from reward tags."""
    x = np.asarray(x).astype(np.int64)
    return x // 1000, x % 1000


def filled_buffer(lengths, seed: int = 0, eps: EpisodeBatch | None = None):
    """Buffer of C slots holding C episodes (slot i = id i) with t_added = 10 * id."""
    assert len(lengths) == C
    eps = make_episodes(lengths, seed=seed) if eps is None else eps
    return add_jit(init_jit(eps, C), eps, 10 * jnp.arange(C)), eps


# ------------------------------------------------------------------ numpy reference of 4.3
def ref_windows(lengths_all, slots, ok, u, T: int):
    """Slow reference: slot, row, valid [B, T] and (starts, strata bounds) on the long path."""
    B = len(slots)
    lens = [int(lengths_all[s]) if o else 0 for s, o in zip(slots, ok)]
    slot = np.zeros((B, T), int)
    row = np.zeros((B, T), int)
    valid = np.zeros((B, T), bool)
    if max(lens) <= T:
        for b in range(B):
            slot[b], row[b], valid[b] = slots[b], np.arange(T), np.arange(T) < lens[b]
        return slot, row, valid, None
    stream = [(slots[b], i) for b in range(B) for i in range(lens[b])]
    N = len(stream)
    bounds = np.round(np.linspace(0, N - T + 1, B + 1)).astype(int)
    starts = []
    for b in range(B):
        lo, hi = bounds[b], bounds[b + 1]
        off = 0 if hi <= lo else min(int(np.floor(np.float32(u[b]) * np.float32(hi - lo))),
                                      hi - lo - 1)
        starts.append(min(lo + off, N - T))
        for t in range(T):
            slot[b, t], row[b, t] = stream[starts[-1] + t]
            valid[b, t] = True
    return slot, row, valid, (np.array(starts), bounds)


# -------------------------------------------------------------------------------- storage
def test_ring_overwrite_order_and_t_added():
    buf = init_jit(make_episodes([2]), C)
    for step in range(3):  # ids 4s..4s+3 arrive together with t_added 100 * (s+1)
        ids = list(range(4 * step, 4 * step + 4))
        buf = add_jit(buf, make_episodes([3 + i % 5 for i in ids], ids=ids), 100 * (step + 1))
        if step == 0:  # only the 4 stored episodes can be sampled
            w = sample_jit(buf, jax.random.key(0), batch_size=4, max_traj_len=5)
            assert set(np.asarray(w.slot).ravel().tolist()) <= {0, 1, 2, 3}
    # ids 0-3 -> slots 0-3, 4-7 -> 4-7, 8-11 -> 8, 9, 0, 1 (oldest overwritten first)
    ids = [8 + 2, 8 + 3, 2, 3, 4, 5, 6, 7, 8, 9]
    np.testing.assert_array_equal(tags(buf.data.reward[:, 0])[0], ids)
    np.testing.assert_array_equal(buf.t_added, [300, 300, 100, 100, 200, 200, 200, 200, 300, 300])
    np.testing.assert_array_equal(buf.lengths, [3 + i % 5 for i in ids])
    assert int(buf.ptr) == 2 and int(buf.size) == C
    buf = add_jit(buf, make_episodes([2] * 4, ids=[12, 13, 14, 15]), jnp.array([5, 6, 7, 8]))
    np.testing.assert_array_equal(tags(buf.data.reward[:, 0])[0][:6], [10, 11, 12, 13, 14, 15])
    np.testing.assert_array_equal(buf.t_added[:6], [300, 300, 5, 6, 7, 8])
    assert int(buf.ptr) == 6 and int(buf.size) == C
    with pytest.raises(ValueError, match="cannot add"):
        buffer_add(buf, make_episodes([2] * (C + 1)), 0)


def test_compact_dtypes_round_trip_exactly():
    buf, eps = filled_buffer([12, 5, 6, 2, 11, 3, 4, 5, 2, 12])
    d = buf.data
    assert d.avail_actions.dtype == jnp.int16
    assert d.actions.dtype == d.last_action.dtype == d.prev_alloc.dtype == jnp.int8
    for k in ("obs_mask", "entity_mask", "entity2task_mask", "task_mask", "terminated", "reset",
              "filled", "hier_decision", "tasks_terminated"):
        assert getattr(d, k).dtype == jnp.bool_, k
    assert int(jnp.max(d.avail_actions)) >= 1000  # codes 1000+j are present and survive
    dec = jax.jit(decode_rows)(d)
    for k in ROW_FIELDS:
        np.testing.assert_array_equal(getattr(dec, k), getattr(eps, k), err_msg=k)
        assert getattr(dec, k).dtype == getattr(eps, k).dtype, k
    # Short-path windows (no picked episode longer than T) return the stored rows, decoded.
    buf, eps = filled_buffer([5, 4, 2, 5, 3, 3, 3, 3, 3, 3], seed=1)
    w = windows_jit(buf, jnp.array([3, 0, 1, 2]), jnp.ones(4, bool), jnp.zeros(4), max_traj_len=5)
    for k in ROW_FIELDS:
        np.testing.assert_array_equal(getattr(w, k), getattr(eps, k)[jnp.array([3, 0, 1, 2]), :5],
                                      err_msg=k)
    assert w.avail_actions.dtype == w.actions.dtype == w.prev_alloc.dtype == jnp.int32


def test_storage_widens_when_indices_do_not_fit_int8():
    assert storage_dtypes(3, 2, 200)["actions"] == np.int16
    assert storage_dtypes(3, 200, 4)["prev_alloc"] == np.int16
    assert storage_dtypes(40, 6, 12)["avail_actions"] == np.int16


def test_index_helpers():
    alloc = jnp.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    eps = make_episodes([4] * 2)
    idx, onehot, la, pa = jax.jit(lambda a, e: (
        alloc_to_index(a), index_to_onehot(alloc_to_index(a), 3), last_action_onehot(e),
        prev_alloc_onehot(e)))(alloc, eps)
    np.testing.assert_array_equal(idx, [1, -1, 0])
    np.testing.assert_array_equal(onehot, alloc)
    assert la.shape == (2, L, NA, NACT) and pa.shape == (2, L, NA, NT)
    assert float(la[:, 0].sum()) == 0.0
    np.testing.assert_array_equal(la[0, 1:4].argmax(-1), eps.actions[0, :3])
    np.testing.assert_array_equal(pa.sum(-1), eps.prev_alloc >= 0)


# ---------------------------------------------------------------------------------- memory
def test_memory_report_equals_sum_of_leaf_nbytes():
    buf, eps = filled_buffer([3] * C)
    leaf_sum = sum(x.nbytes for x in jax.tree.leaves(buf))
    assert buffer_nbytes(buf) == leaf_sum
    assert buffer_nbytes(buffer_spec(eps, C)) == leaf_sum
    report = describe_memory(buf, budget_bytes=10**6)
    assert f"total {leaf_sum:,} B" in report and f"buffer_size={C}" in report
    field_lines = report.splitlines()[1:-1]
    assert sum(int(line.split()[-2].replace(",", "")) for line in field_lines) == leaf_sum


def test_memory_report_savethecity_sizes():
    env = envs_jax.make("savethecity")
    ex = empty_episodes((), env.episode_limit, env.n_agents, env.n_entities, env.n_tasks,
                        env.n_actions, env.entity_dim)
    spec = buffer_spec(ex, 5000)  # shapes only: nothing is allocated
    rows, na, ne, nt, nact, ed = 151, 5, 11, 6, 12, 58
    per_row = (4 * ne * ed + ne * ne + ne + ne * nt + nt  # entities (f32) and bool masks
               + 2 * na * nact + na  # int16 codes, int8 actions
               + 4 + 4 * nt + 4 + nt  # rewards (f32), 4 bool flags, tasks_terminated
               + na + na)  # int8 last_action, prev_alloc
    assert buffer_nbytes(spec) == 5000 * (rows * per_row + 8) + 8
    assert 2e9 < buffer_nbytes(spec) < 3e9  # spec 4.2: "about 2-3 GB"
    assert f"{buffer_nbytes(spec):,}" in describe_memory(spec)


def test_clear_error_when_budget_too_small():
    ex = make_episodes([3])
    needed = check_buffer_fits(ex, 100, budget_bytes=10**9)
    assert needed == buffer_nbytes(buffer_spec(ex, 100))
    with pytest.raises(BufferTooLargeError, match=r"buffer_size=100") as err:
        check_buffer_fits(ex, 100, budget_bytes=needed - 1)
    assert f"{needed:,}" in str(err.value) and f"{needed - 1:,}" in str(err.value)
    with pytest.raises(MemoryError, match="buffer_size=100 episodes x 4 copies"):
        check_buffer_fits(ex, 100, budget_bytes=2 * needed, n_copies=4)
    budget, source = default_memory_budget()
    assert budget > 0 and source


# -------------------------------------------------------------------------------- sampling
def test_strata_bounds_round_half_to_even():
    M = jnp.arange(1, 200, dtype=jnp.int32)
    for B in (3, 4, 6, 32):
        lo, hi = jax.jit(jax.vmap(lambda m, B=B: strata_bounds(m, B)))(M)
        bounds = np.concatenate([np.asarray(lo), np.asarray(hi[:, -1:])], axis=1)
        for m in range(1, 200):
            exact = [round(Fraction(i * m, B)) for i in range(B + 1)]  # Python rounds half-even
            np.testing.assert_array_equal(bounds[m - 1], exact)
            if B & (B - 1) == 0:  # power of two: numpy's float64 linspace is exact too
                np.testing.assert_array_equal(bounds[m - 1], np.round(np.linspace(0, m, B + 1)))


@pytest.mark.parametrize("B,T,seed", [(4, 5, 0), (4, 5, 1), (8, 3, 2)])
def test_sampler_matches_reference_and_strata(B: int, T: int, seed: int):
    rng = np.random.default_rng(seed)
    buf, _ = filled_buffer(rng.integers(2, L + 1, C), seed=seed)
    lengths = np.asarray(buf.lengths)
    n_long = 0
    for trial in range(8):
        k1, k2 = jax.random.split(jax.random.key(100 * seed + trial))
        elig = jnp.ones(C, bool) if trial < 6 else jnp.arange(C) < B - 1  # one missing pick
        slots, ok = draw_jit(k1, elig, batch_size=B)
        u = draw_start_uniforms(k2, B)
        w = windows_jit(buf, slots, ok, u, max_traj_len=T)
        r_slot, r_row, r_valid, extra = ref_windows(lengths, np.asarray(slots), np.asarray(ok),
                                                    np.asarray(u), T)
        r_filled = r_valid & (r_row < lengths[r_slot])
        r_filled[:, 0] &= r_row[:, 0] != lengths[r_slot[:, 0]] - 1  # opens on a final row
        np.testing.assert_array_equal(w.slot, r_slot)
        np.testing.assert_array_equal(w.row, r_row)
        np.testing.assert_array_equal(w.filled, r_filled)
        ep_id, row = tags(w.reward)
        np.testing.assert_array_equal(ep_id[r_valid], r_slot[r_valid])
        np.testing.assert_array_equal(row[r_valid], r_row[r_valid])
        np.testing.assert_array_equal(w.t_added, 10 * np.asarray(w.slot))
        if extra is None:
            continue
        n_long += 1
        starts, bounds = extra
        # Contiguity in the concatenated stream, and each start inside its own stratum.
        sl = np.asarray(slots)[np.asarray(ok)]
        offset = dict(zip(sl.tolist(), np.cumsum(lengths[sl]) - lengths[sl]))
        pos = np.vectorize(offset.get)(np.asarray(w.slot)) + np.asarray(w.row)
        np.testing.assert_array_equal(pos, pos[:, :1] + np.arange(T))
        np.testing.assert_array_equal(pos[:, 0], starts)
        last = lengths[sl].sum() - T
        empty = bounds[1:] <= bounds[:-1]
        inside = (bounds[:-1] <= starts) & (starts < bounds[1:])
        assert np.all(np.where(empty, starts == np.minimum(bounds[:-1], last), inside))
    assert n_long >= 4


def test_short_path_starts_at_row_zero_and_pads():
    T = 5
    buf, _ = filled_buffer([3, 5, 4, 2, 5, 3, 4, 2, 3, 5])
    w = sample_jit(buf, jax.random.key(0), batch_size=4, max_traj_len=T)
    np.testing.assert_array_equal(w.row, np.broadcast_to(np.arange(T), (4, T)))
    lens = np.asarray(buf.lengths)[np.asarray(w.slot[:, 0])]
    np.testing.assert_array_equal(w.filled, np.arange(T)[None, :] < lens[:, None])
    np.testing.assert_array_equal(tags(w.reward)[1][np.asarray(w.filled)],
                                  np.asarray(w.row)[np.asarray(w.filled)])
    pad = ~np.asarray(w.filled)
    assert pad.any() and np.all(np.asarray(w.entities)[pad] == 0)
    assert np.all(np.asarray(w.last_action)[pad] == -1) and np.all(np.asarray(w.reward)[pad] == 0)
    assert len(set(np.asarray(w.slot[:, 0]).tolist())) == 4


def test_distinct_uniform_episodes_and_eligibility():
    B, n_ok, n = 4, 7, 400
    elig = jnp.arange(C) < n_ok
    # Raw uint32 keys as numpy rows: iterating a typed key array would dispatch n eager slices.
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(1), n)))
    slots = np.stack([np.asarray(draw_jit(k, elig, batch_size=B)[0]) for k in keys])
    assert np.all(slots < n_ok) and all(len(set(s)) == B for s in slots)
    freq = np.bincount(slots.ravel(), minlength=C)[:n_ok] / n
    np.testing.assert_allclose(freq, B / n_ok, atol=0.1)  # about 4 standard deviations
    first = np.bincount(slots[:, 0], minlength=n_ok) / n  # the sampled order is random too
    np.testing.assert_allclose(first, 1 / n_ok, atol=0.07)
    # Only two eligible: those two are picked, the other picks are marked not ok and empty.
    buf, _ = filled_buffer([6] * C)
    s, o = draw_jit(jax.random.key(3), jnp.zeros(C, bool).at[jnp.array([2, 5])].set(True),
                    batch_size=B)
    assert set(np.asarray(s)[np.asarray(o)].tolist()) == {2, 5} and int(o.sum()) == 2
    w = windows_jit(buf, s, o, jnp.full((B,), 0.5), max_traj_len=5)
    assert set(np.asarray(w.slot[w.filled]).tolist()) == {2, 5}
    recent = recent_episodes(buf, 50, 20)  # t_added = 10 * id -> ids 3.. are recent
    np.testing.assert_array_equal(recent, np.arange(C) >= 3)
    buf = buf.replace(size=jnp.int32(6))  # only slots 0-5 stored: 3, 4, 5 qualify
    s, o = draw_jit(jax.random.key(4), recent_episodes(buf, 50, 20), batch_size=B)
    assert set(np.asarray(s)[np.asarray(o)].tolist()) == {3, 4, 5}


def test_jitted_sample_compiles_once_and_matches_factored_draws():
    buf, _ = filled_buffer([12, 3, 9, 8, 2, 7, 4, 4, 5, 6])
    key = jax.random.key(7)
    w = sample_jit(buf, key, batch_size=4, max_traj_len=5)
    n_compiled = sample_jit._cache_size()
    k_ep, k_start = jax.random.split(key)
    slots, ok = draw_jit(k_ep, jnp.ones(C, bool), batch_size=4)
    w2 = windows_jit(buf, slots, ok, draw_start_uniforms(k_start, 4), max_traj_len=5)
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(w2)):
        np.testing.assert_array_equal(a, b)
    sample_jit(buf, jax.random.key(8), batch_size=4, max_traj_len=5)
    buf = add_jit(buf, make_episodes([4] * C, seed=3), 5)
    sample_jit(buf, jax.random.key(9), batch_size=4, max_traj_len=5)
    assert sample_jit._cache_size() == n_compiled


# ------------------------------------------------------------------------------ loss masks
def _hand_windows() -> tuple:
    """Episodes A (len 4), B (len 6), C, D (len 3) in slots 0-3; four windows with T = 5.

    Each episode ends with reset on its last action row and a final-observation row. Stream:
    A0-A3 = 0-3, B0-B5 = 4-9, C0-C2 = 10-12, D0-D2 = 13-15; N = 16, strata [0,3) [3,6) [6,9)
    [9,12); u = (0.7, 0, 0.7, 0) gives starts 2, 3, 8, 9.
    """
    eps = make_episodes([4, 6, 3, 3] + [2] * 6)
    tt = np.zeros((C, L, NT), bool)
    tt[0, 1], tt[0, 2] = [True, False], [True, True]  # A: subtask 0 ends at row 1, 1 at row 2
    tt[1, 2], tt[1, 3], tt[1, 4] = [False, True], [False, True], [True, True]
    buf, _ = filled_buffer([4, 6, 3, 3] + [2] * 6,
                           eps=eps.replace(tasks_terminated=jnp.asarray(tt)))
    u = jnp.array([0.7, 0.0, 0.7, 0.0])
    return windows_jit(buf, jnp.arange(4), jnp.ones(4, bool), u, max_traj_len=5)


def test_loss_mask_drops_boundary_transitions_by_hand():
    w = _hand_windows()
    ep, row = tags(w.reward)
    np.testing.assert_array_equal(ep, [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 2, 2, 2],
                                       [1, 2, 2, 2, 3]])
    np.testing.assert_array_equal(row, [[2, 3, 0, 1, 2], [3, 0, 1, 2, 3], [4, 5, 0, 1, 2],
                                        [5, 0, 1, 2, 0]])
    all_on = jnp.ones((4, 5, NA, NT), bool)  # has_agents everywhere: isolates the time terms
    m, m_k = masks_jit(w, all_on)
    # A2 (terminal transition, kept) | A3 final row (dropped) | B0 B1 B2 ...; windows 1 and 3
    # open on a final row, whose only "transition" would cross into the next episode.
    np.testing.assert_array_equal(m, [[1, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 0, 1, 1, 0],
                                      [0, 1, 1, 0, 1]])
    # A subtask is kept in the transition where it finishes, dropped on the following rows.
    np.testing.assert_array_equal(m_k, [
        [[1, 1], [0, 0], [1, 1], [1, 1], [1, 1]],  # t1 follows A2 (both done) but is masked
        [[0, 0], [1, 1], [1, 1], [1, 1], [1, 0]],  # B3 follows B2 where subtask 1 finished
        [[1, 1], [0, 0], [1, 1], [1, 1], [0, 0]],  # t0 has no previous row in the window
        [[0, 0], [1, 1], [1, 1], [0, 0], [1, 1]],
    ])
    alloc = np.zeros((4, 5, NA, NT), bool)
    alloc[0, 0, :, 1] = True  # t0: everyone on subtask 1
    alloc[0, 1, :, 0] = True  # t1: everyone on subtask 0
    alloc[0, 3, 0, 0] = alloc[0, 3, 1, 1] = True  # t2 nobody; t3 one agent on each
    alloc[0, 4, 2, 1] = True
    _, m_k = masks_jit(w, jnp.asarray(alloc))
    np.testing.assert_array_equal(m_k[0], [[0, 1], [0, 0], [0, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(m_k[1:], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_mask_never_crosses_episodes(seed: int):
    rng = np.random.default_rng(seed)
    buf, _ = filled_buffer(rng.integers(2, L + 1, C), seed=seed)
    lengths = np.asarray(buf.lengths)
    for trial in range(10):
        w = sample_jit(buf, jax.random.key(trial + 50 * seed), batch_size=4, max_traj_len=5)
        m, m_k = (np.asarray(x) for x in masks_jit(w))
        slot, row = np.asarray(w.slot), np.asarray(w.row)
        same_next = (slot[:, 1:] == slot[:, :-1]) & (row[:, 1:] == row[:, :-1] + 1)
        # Every kept transition t -> t+1 stays inside one episode ...
        assert np.all(same_next[m[:, :-1]])
        # ... and every real transition (a row before its episode's final row) is kept.
        np.testing.assert_array_equal(m, np.asarray(w.filled) & (row < lengths[slot] - 1))
        assert np.all(m_k <= m[..., None])
