"""Exploration schedules and hard target updates (spec 4.5, 4.8; spec 6.5 test 15)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alma_jax.schedules import (
    ALLOC_EPS_ANNEAL_TIME,
    EPSILON_ANNEAL_TIME,
    PROP_ALLOC_EPS_ANNEAL_TIME,
    LinearSchedule,
    make_schedules,
    maybe_update_target,
)

T_MAX = 15_000_000  # SaveTheCity


@jax.jit
def _values(scheds, t):
    return scheds(t)


def test_three_schedules_at_zero_mid_horizon_and_beyond():
    scheds = make_schedules()
    # (name, horizon, start, finish): epsilon over 2e6, alloc_eps over 750k, prop over 3M
    cases = [
        ("annealing/epsilon", 2_000_000, 1.0, 0.05),
        ("annealing/alloc_eps", 750_000, 1.0, 0.0),
        ("annealing/prop_alloc_eps", 3_000_000, 1.0, 0.05),
    ]
    for name, horizon, start, finish in cases:
        t = jnp.array([0, horizon // 2, horizon, horizon + 1, 4 * horizon, T_MAX])
        got = np.asarray(_values(scheds, t)[name])
        want = [start, (start + finish) / 2, finish, finish, finish, finish]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
        quarter = float(_values(scheds, horizon // 4)[name])
        assert quarter == pytest.approx(start + 0.25 * (finish - start), abs=1e-6)
    assert EPSILON_ANNEAL_TIME["starcraft"] == 500_000
    sc2 = make_schedules(epsilon_anneal_time=EPSILON_ANNEAL_TIME["starcraft"],
                         alloc_eps_anneal_time=ALLOC_EPS_ANNEAL_TIME["starcraft"],
                         prop_alloc_eps_anneal_time=PROP_ALLOC_EPS_ANNEAL_TIME["starcraft"])
    assert float(sc2.epsilon(250_000)) == pytest.approx(0.525, abs=1e-6)
    assert float(sc2.alloc_eps(250_000)) == pytest.approx(0.5, abs=1e-6)


def test_schedule_edge_cases():
    assert float(LinearSchedule(1.0, 0.05, 0.0)(0)) == pytest.approx(0.05)  # no horizon
    rising = LinearSchedule(0.0, 2.0, 100.0)
    np.testing.assert_allclose(rising(jnp.array([-5, 0, 50, 100, 1000])), [0, 0, 1, 2, 2])
    assert rising(3).dtype == jnp.float32 and rising(jnp.zeros((2, 3))).shape == (2, 3)


@pytest.mark.parametrize("step,interval", [(1, 200), (8, 200), (1, 50), (3, 7)])
def test_target_update_fires_every_interval_episodes(step: int, interval: int):
    n = 1000

    def body(carry, i):
        target, last = carry
        params = {"w": jnp.full((2,), i, jnp.float32), "b": i}  # params change every step
        episode = i * step
        target, last, fired = maybe_update_target(params, target, episode, last, interval)
        return (target, last), (fired, target["w"][0], target["b"])

    target0 = {"w": jnp.full((2,), -1.0), "b": jnp.int32(-1)}
    _, (fired, tw, tb) = jax.jit(lambda: jax.lax.scan(body, (target0, jnp.int32(0)),
                                                      jnp.arange(n)))()
    episodes = np.arange(n) * step
    fired = np.asarray(fired)
    if interval % step == 0:  # rollouts tile the interval: fires exactly at its multiples
        np.testing.assert_array_equal(fired, (episodes % interval == 0) & (episodes > 0))
    # Original rule: fire when episode - last >= interval, then last = episode.
    last, want = 0, []
    for e in episodes:
        want.append(e - last >= interval)
        last = e if want[-1] else last
    np.testing.assert_array_equal(fired, want)
    # The target holds the params of the last firing step and never changes in between.
    idx = np.where(fired, np.arange(n), -1)
    held = np.maximum.accumulate(idx)
    np.testing.assert_array_equal(np.asarray(tw), held.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(tb), held)


def test_target_update_python_scalars():
    p, t = {"a": jnp.ones(3)}, {"a": jnp.zeros(3)}
    new, last, fired = maybe_update_target(p, t, 199, 0, 200)
    assert not bool(fired) and int(last) == 0 and float(new["a"].sum()) == 0.0
    new, last, fired = maybe_update_target(p, t, 200, 0, 200)
    assert bool(fired) and int(last) == 200 and float(new["a"].sum()) == 3.0
