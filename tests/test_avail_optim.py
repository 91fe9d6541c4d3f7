"""Coded available actions and the optimiser (spec 6.5 items 13 and 17)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alma_jax.avail import parse_avail
from alma_jax.optim import make_optimizer

# ------------------------------------------------------------------ 13: available actions
# Agents 0 and 1 in subtask 1, agent 2 in subtask 2, agent 3 unallocated (argmax -> subtask 0).
ALLOC = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
CODES = np.array(
    [
        [1, 0, 3, 4, 1001, 1002],  # 2+1 own subtask; 2+2 not; ally 1 shares, ally 2 not
        [1, 2, 3, 1000, 1002, 0],  # 2+0 not; 2+1 own; ally 0 shares
        [0, 4, 3, 1002, 1001, 1],  # 2+2 own; self-heal code 1002 shares trivially
        [1, 2, 3, 1000, 0, 1003],  # unallocated reads as subtask 0: 2+0 and ally 3 (itself)
    ]
)
EXPECTED = np.array(
    [
        [1, 0, 1, 0, 1, 0],
        [1, 0, 1, 1, 0, 0],
        [0, 1, 0, 1, 0, 1],
        [1, 1, 0, 0, 0, 1],
    ],
    bool,
)


def test_parse_avail_hand_cases():
    parse = jax.jit(parse_avail, static_argnums=2)
    for alloc in (jnp.asarray(ALLOC), jnp.asarray(ALLOC, bool)):  # int or bool allocations
        out = parse(jnp.asarray(CODES), alloc, True)
        assert out.dtype == jnp.bool_
        np.testing.assert_array_equal(out, EXPECTED)


@pytest.mark.parametrize(
    "alloc,mask_subtask_actions", [(None, True), (None, False), (ALLOC, False)]
)
def test_parse_avail_flat_mode_treats_nonzero_codes_as_available(alloc, mask_subtask_actions):
    alloc = None if alloc is None else jnp.asarray(alloc)
    out = parse_avail(jnp.asarray(CODES), alloc, mask_subtask_actions)
    np.testing.assert_array_equal(out, CODES != 0)


def test_parse_avail_vmaps_over_batch():
    codes = jnp.stack([jnp.asarray(CODES)] * 2)
    alloc = jnp.stack([jnp.asarray(ALLOC), jnp.asarray(ALLOC[[1, 0, 3, 2]])])
    out = jax.jit(jax.vmap(lambda c, a: parse_avail(c, a, True)))(codes, alloc)
    np.testing.assert_array_equal(out[0], EXPECTED)
    assert not out[1, 2, 1]  # agent 2 now unallocated: code 4 (subtask 2) is unavailable


# ------------------------------------------------------------------ 17: optimiser parity
def torch_style_steps(params, grads_seq, lr=5e-4, alpha=0.99, eps=1e-5, max_norm=10.0):
    """torch.nn.utils.clip_grad_norm_ followed by torch.optim.RMSprop (no momentum), numpy."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    square_avg = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for grads in grads_seq:
        grads = {k: g.astype(np.float64) for k, g in grads.items()}
        total_norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
        clip_coef = max_norm / (total_norm + 1e-6)
        if clip_coef < 1:
            grads = {k: g * clip_coef for k, g in grads.items()}
        for k, g in grads.items():
            square_avg[k] = alpha * square_avg[k] + (1 - alpha) * g * g
            params[k] = params[k] - lr * g / (np.sqrt(square_avg[k]) + eps)
        history.append({k: v.copy() for k, v in params.items()})
    return history


def test_optimizer_matches_pytorch_rmsprop():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    grads_seq = []
    for step in range(5):
        g = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
        if step == 1:
            g = {k: 50 * v for k, v in g.items()}  # global norm far above 10: clipped
        g["b"][0] = 3e-5  # tiny gradient: sqrt(v) ~ eps, where eps placement matters
        grads_seq.append({k: v.astype(np.float32) for k, v in g.items()})
    expected = torch_style_steps(params, grads_seq)

    opt = make_optimizer()
    p = jax.tree.map(jnp.asarray, params)
    state = opt.init(p)

    @jax.jit
    def step(p, state, g):
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g, exp in zip(grads_seq, expected):
        p, state = step(p, state, jax.tree.map(jnp.asarray, g))
        for k in params:
            # Compare the accumulated change: float32 parameters, float64 reference.
            np.testing.assert_allclose(
                np.asarray(p[k]) - params[k], exp[k] - params[k], rtol=1e-4, atol=1e-7
            )
