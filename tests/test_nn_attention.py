"""Masked attention and group masks (spec 6.5 items 1 and 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import fast_init

from alma_jax.nn import MaskedMHA, TorchDense, both_active_block, group_block, membership

N, NQ, DIN, D, DOUT, H = 7, 4, 5, 8, 6, 2


# ------------------------------------------------------------------ 1: group masks
def brute_group_block(member: np.ndarray) -> np.ndarray:
    n, k = member.shape
    out = np.ones((n, n), bool)
    for i in range(n):
        for j in range(n):
            for c in range(k):
                if member[i, c] and member[j, c]:
                    out[i, j] = False
    return out


@pytest.mark.parametrize("n,k,seed", [(7, 3, 0), (5, 1, 1), (4, 6, 2), (9, 2, 3)])
def test_group_block_matches_brute_force(n, k, seed):
    member = np.random.default_rng(seed).random((n, k)) < 0.4
    member[0] = False  # no membership at all
    member[1, 0] = True
    out = np.asarray(group_block(jnp.asarray(member)))
    np.testing.assert_array_equal(out, brute_group_block(member))
    # An entity with no membership is blocked from everything, itself included.
    assert out[0].all() and out[:, 0].all()
    assert not out[1, 1]


def test_single_column_is_both_active():
    entity_mask = np.array([False, True, False, False, True, False])
    active = ~entity_mask
    both = active[:, None] & active[None, :]
    np.testing.assert_array_equal(np.asarray(group_block(jnp.asarray(active[:, None]))), ~both)
    np.testing.assert_array_equal(
        np.asarray(both_active_block(jnp.asarray(entity_mask), 3)), ~both[:3]
    )


def test_membership_takes_agent_rows_from_allocation():
    e2t = jnp.array([[False, True], [True, False], [True, True], [False, True], [True, True]])
    alloc = jnp.array([[0, 1], [0, 0], [1, 0]])  # agent 1 inactive
    member = np.asarray(membership(e2t, alloc))
    expected = np.array(
        [[False, True], [False, False], [True, False], [True, False], [False, False]]
    )
    np.testing.assert_array_equal(member, expected)


# ------------------------------------------------------------------ init
def test_torch_dense_init_bounds():
    fan_in, feats = 25, 64
    params = jax.jit(TorchDense(feats).init)(jax.random.key(0), jnp.zeros((3, fan_in)))["params"]
    bound = 1 / np.sqrt(fan_in)
    for name, shape in [("kernel", (fan_in, feats)), ("bias", (feats,))]:
        p = np.asarray(params[name])
        assert p.shape == shape
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound
    no_bias = jax.eval_shape(TorchDense(4, use_bias=False).init, jax.random.key(0), jnp.zeros(3))
    assert set(no_bias["params"]) == {"kernel"}


@pytest.mark.parametrize("fan_in", [1, 2, 3])
def test_torch_dense_is_affine_on_narrow_inputs(fan_in):
    """Inputs up to SMALL_FAN_IN wide take the broadcast-product path, wider ones the dot:
    both give the values and gradients of x·W + b."""
    x = jax.random.normal(jax.random.key(1), (4, 3, fan_in))
    module = TorchDense(5)
    params = module.init(jax.random.key(0), x)

    def ref(p, x):
        return x @ p["params"]["kernel"] + p["params"]["bias"]

    np.testing.assert_allclose(module.apply(params, x), ref(params, x), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x))))(params)
    g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(ref(p, x))))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ 2: attention
@pytest.fixture(scope="module")
def mha():
    module = MaskedMHA(D, DOUT, H)
    x = jax.random.normal(jax.random.key(1), (N, DIN))
    params = fast_init(module, x, jnp.zeros((NQ, N), bool), jnp.ones(NQ, bool))
    return jax.jit(module.apply), params


def random_case(seed: int, p_block: float = 0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, DIN)).astype(np.float32)
    blocked = rng.random((NQ, N)) < p_block
    blocked[2] = True  # a fully blocked query
    qvalid = np.array([True, True, True, False])
    return jnp.asarray(x), jnp.asarray(blocked), jnp.asarray(qvalid)


def reference_attention(params, x, blocked, qvalid):
    """The original's arithmetic in numpy: -inf logits, NaN rows -> 0, then the output dense."""
    p = jax.tree.map(np.asarray, params)["params"]
    x = np.asarray(x, np.float64)
    qkv = x @ p["qkv"]["kernel"]
    q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    hd = D // H
    out = np.zeros((NQ, D))
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        logits = q[:NQ, sl] @ k[:, sl].T / np.sqrt(hd)
        logits = np.where(blocked, -np.inf, logits)
        with np.errstate(invalid="ignore"):
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w = w / w.sum(-1, keepdims=True)
        w = np.nan_to_num(w, nan=0.0)
        out[:, sl] = w @ v[:, sl]
    y = out @ p["out"]["kernel"] + p["out"]["bias"]
    return np.where(np.asarray(qvalid)[:, None], y, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_matches_reference(mha, seed):
    apply, params = mha
    x, blocked, qvalid = random_case(seed)
    out = apply(params, x, blocked, qvalid)
    assert out.shape == (NQ, DOUT)
    np.testing.assert_allclose(out, reference_attention(params, x, blocked, qvalid), atol=1e-5)


def test_blocked_keys_do_not_change_query_output(mha):
    apply, params = mha
    x, blocked, qvalid = random_case(3, p_block=0.4)
    base = np.asarray(apply(params, x, blocked, qvalid))
    noise = 10 * jax.random.normal(jax.random.key(5), (DIN,))
    n_blocked_checked = n_open_checked = 0
    for i in range(NQ):
        if not qvalid[i]:
            continue
        for j in range(N):
            if j == i:  # a query's own features always matter
                continue
            out = np.asarray(apply(params, x.at[j].add(noise), blocked, qvalid))
            if blocked[i, j]:
                np.testing.assert_allclose(out[i], base[i], atol=1e-5)
                n_blocked_checked += 1
            else:
                assert np.abs(out[i] - base[i]).max() > 1e-4
                n_open_checked += 1
    assert n_blocked_checked > 3 and n_open_checked > 3


def test_fully_blocked_query_outputs_bias_and_invalid_query_zero(mha):
    apply, params = mha
    x, blocked, _ = random_case(4)
    qvalid = jnp.array([True, True, True, False])
    blocked = blocked.at[3].set(True)
    out = np.asarray(apply(params, x, blocked, qvalid))
    bias = np.asarray(params["params"]["out"]["bias"])
    np.testing.assert_allclose(out[2], bias, atol=1e-6)  # fully blocked, valid
    np.testing.assert_array_equal(out[3], 0.0)  # invalid
    assert np.abs(out[0] - bias).max() > 1e-4


def test_gradients_finite_with_fully_blocked_rows(mha):
    apply, params = mha
    x, blocked, qvalid = random_case(5)
    blocked = blocked.at[0].set(True).at[3].set(True)

    def loss(p, x):
        return jnp.sum(apply(p, x, blocked, qvalid) ** 2)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for leaf in jax.tree.leaves((g_params, g_x)):
        assert np.isfinite(np.asarray(leaf)).all()
    assert np.abs(np.asarray(g_params["params"]["qkv"]["kernel"])).max() > 0
