"""Pop-Art statistics and output preservation (spec 6.5 item 11, spec 2.5 with F2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alma_jax.popart import (
    ALPHA,
    PopArtStats,
    denormalise,
    masked_mean,
    popart_init,
    popart_update,
)

K = 3
update = jax.jit(popart_update)


class ReferencePopArt:
    """The original's ExponentialMeanStd + FlexQMixer.popart_update in numpy (plus the F2 floor)."""

    def __init__(self):
        self.mean = self.var = None

    @staticmethod
    def mmean(x, m):
        return (x * m).sum() / (m.sum() + 1e-8)

    def _update_stats(self, x, m):
        if self.mean is None:
            self.mean = self.mmean(x, m)
        d = x - self.mean
        self.mean = self.mean + ALPHA * self.mmean(d, m)
        if self.var is None:
            self.var = self.mmean(d**2, m)
        self.var = max((1 - ALPHA) * (self.var + ALPHA * self.mmean(d**2, m)), 1e-8)

    def update(self, a, b, y, m):
        if self.mean is not None:
            old_mean, old_var = self.mean, self.var
            self._update_stats(y, m)
        else:
            self._update_stats(y, m)
            old_mean, old_var = self.mean, self.var
        ratio = np.sqrt(old_var) / np.sqrt(self.var)
        b = b * ratio + (old_mean - self.mean) / np.sqrt(self.var)
        return a * ratio, b, (y - self.mean) / np.sqrt(self.var)


def stream(seed: int, n: int):
    """Batches [6, K] of targets with a drifting mean and scale and random masks."""
    rng = np.random.default_rng(seed)
    for t in range(n):
        y = rng.normal(5 + 0.5 * t, 1 + 0.2 * t, size=(6, K))
        yield y.astype(np.float32), rng.random((6, K)) < 0.7


def test_ema_recursion_matches_numpy_loop():
    ref = ReferencePopArt()
    stats = popart_init()
    a, b = jnp.ones(K), jnp.zeros(K)
    a_ref, b_ref = np.ones(K), np.zeros(K)
    for y, m in stream(0, 25):
        # Masked-out targets (here NaN, e.g. bootstraps from padded rows) must not leak in.
        y_holes = jnp.asarray(np.where(m, y, np.nan))
        stats, a, b, z = update(stats, a, b, y_holes, jnp.asarray(m))
        a_ref, b_ref, z_ref = ref.update(a_ref, b_ref, y.astype(np.float64), m)
        assert bool(stats.initialised)
        np.testing.assert_allclose(stats.mu, ref.mean, rtol=1e-5)
        np.testing.assert_allclose(stats.sigma2, ref.var, rtol=1e-5)
        np.testing.assert_allclose(a, a_ref, rtol=1e-5)
        np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.where(m, z, 0), np.where(m, z_ref, 0), rtol=1e-4, atol=1e-5)
    assert abs(float(stats.mu)) > 1  # the stream actually moved the statistics


def test_first_call_sets_statistics_without_rescaling():
    y, m = next(stream(1, 1))
    a, b = jnp.array([0.5, 1.0, 2.0]), jnp.array([0.1, -0.2, 0.3])
    stats = popart_init()
    np.testing.assert_array_equal(denormalise(stats, jnp.arange(3.0)), jnp.arange(3.0))
    stats, a1, b1, z = update(stats, a, b, jnp.asarray(y), jnp.asarray(m))
    np.testing.assert_array_equal(a1, a)
    np.testing.assert_array_equal(b1, b)
    mean = y[m].mean()
    var = ((y[m] - mean) ** 2).mean()
    np.testing.assert_allclose(stats.mu, mean, rtol=1e-5)  # the α·mmean(δ) step is ~0 here
    np.testing.assert_allclose(stats.sigma2, (1 - ALPHA) * (1 + ALPHA) * var, rtol=1e-5)
    np.testing.assert_allclose(z, (y - stats.mu) / np.sqrt(stats.sigma2), rtol=1e-5)


def test_update_preserves_denormalised_outputs():
    rng = np.random.default_rng(2)
    stats = popart_init()
    a, b = jnp.asarray(rng.uniform(0.5, 2, K)), jnp.asarray(rng.normal(size=K))
    for y, m in stream(3, 3):
        stats, a, b, _ = update(stats, a, b, jnp.asarray(y), jnp.asarray(m))
    preds = jnp.asarray(rng.normal(size=(10, K)), jnp.float32)  # pre-affine mixer outputs
    before = denormalise(stats, a * preds + b)
    for y, m in stream(4, 5):
        y = 10 * y - 40  # a very different target scale
        new_stats, a2, b2, _ = update(stats, a, b, jnp.asarray(y), jnp.asarray(m))
        assert abs(float(new_stats.sigma2) / float(stats.sigma2) - 1) > 1e-3  # it did rescale
        after = denormalise(new_stats, a2 * preds + b2)
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)
        stats, a, b = new_stats, a2, b2


def test_variance_floor_and_empty_masks():
    a, b = jnp.ones(K), jnp.zeros(K)  # the stream's shapes: reuses the compiled update
    const, full = jnp.full((6, K), 3.0), jnp.ones((6, K), bool)
    stats, _, _, z = update(popart_init(), a, b, const, full)
    assert float(stats.sigma2) == np.float32(1e-8)
    np.testing.assert_allclose(z, 0.0)
    stats, a2, b2, _ = update(stats, a, b, const + 1, full)
    assert np.isfinite(np.asarray([a2, b2])).all()
    # An empty mask cannot initialise anything: the statistics stay untouched.
    fresh, a3, b3, _ = update(popart_init(), a, b, const, jnp.zeros((6, K), bool))
    assert not bool(fresh.initialised)
    np.testing.assert_array_equal(np.asarray([a3, b3]), np.asarray([a, b]))
    np.testing.assert_array_equal(denormalise(fresh, const), const)


def test_masked_out_nan_targets_do_not_leak_eagerly():
    # Under jit XLA may turn x·mask into a select by itself; op-by-op it does not.
    y = jnp.array([[1.0, jnp.nan], [3.0, jnp.inf]])
    m = jnp.array([[True, False], [True, False]])
    np.testing.assert_allclose(masked_mean(y, m), 2.0, rtol=1e-6)


def test_stats_are_a_pytree_that_jits_and_vmaps():
    stats = jax.tree.map(lambda x: jnp.stack([x, x]), popart_init())
    ys = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, K)), jnp.float32)
    out = jax.jit(jax.vmap(popart_update, in_axes=(0, None, None, 0, None)))(
        stats, jnp.ones(K), jnp.zeros(K), ys, jnp.ones((4, K), bool)
    )
    assert isinstance(out[0], PopArtStats) and out[0].mu.shape == (2,)
