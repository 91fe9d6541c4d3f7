"""`split_map` (alma_jax/batching.py): the batch in pieces gives the batch's result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alma_jax.batching import split_map


def f(x, y, none):
    assert none is None
    return {"s": x @ jnp.ones((3, 2)) + y[:, None], "t": (x.sum(-1), jnp.cumsum(y))}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_pieces_concatenate_to_the_whole(n):
    x = jnp.arange(15.0).reshape(5, 3)
    y = jnp.arange(5.0) * 10
    want = f(x, y, None)
    got = split_map(f, n)(x, y, None)
    np.testing.assert_array_equal(got["s"], want["s"])
    np.testing.assert_array_equal(got["t"][0], want["t"][0])
    if n == 1:
        np.testing.assert_array_equal(got["t"][1], want["t"][1])
    else:  # cumsum is not row-wise: each piece restarts it, which shows the pieces are separate
        assert not np.array_equal(np.asarray(got["t"][1]), np.asarray(want["t"][1]))


def test_pieces_are_independent_subgraphs():
    """n pieces = n copies of the product in the compiled program (what lets cores overlap)."""
    w = jnp.ones((3, 4))
    x = jnp.ones((8, 3))
    for n in (1, 2, 4):
        hlo = jax.jit(split_map(lambda a: a @ w, n)).lower(x).as_text()
        assert hlo.count("dot_general") == n


def test_bad_split_count():
    with pytest.raises(ValueError, match="n_splits"):
        split_map(f, 0)
