"""The batched auto-resetting step is `jax.vmap(env.step)`, bit for bit (issue 19)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs_jax
from envs_jax.savethecity.policies import uniform_valid


def _same(a, b) -> list[str]:
    """Paths of the leaves that differ (NaN equal to NaN, dtypes and shapes must match)."""
    bad = []
    la = jax.tree_util.tree_flatten_with_path(a)[0]
    lb = jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            bad.append(jax.tree_util.keystr(path))
    return bad


def _compare_random_episodes(env, n: int, max_resets, steps: int) -> set[str]:
    """Step `n` envs with random valid actions through both steppers for `steps` steps,
    asserting identical outputs; returns which branches ran ("some": compacted, "every").
    The batched step is given the observation's availability, as the trainer gives it."""
    vm = jax.jit(jax.vmap(env.step))
    batch = jax.jit(lambda k, s, a, v: env.step_autoreset_batch(k, s, a, max_resets=max_resets,
                                                                avail=v))
    k = max(1, n // 32) if max_resets is None else max_resets
    obs, state = jax.jit(env.reset_batch)(jax.random.split(jax.random.key(3), n))
    key = jax.random.key(4)
    branches = set()
    for _ in range(steps):
        key, ka, ks = jax.random.split(key, 3)
        actions = uniform_valid(ka, obs)
        keys = jax.random.split(ks, n)
        ref = vm(keys, state, actions)
        out = batch(keys, state, actions, obs.avail_actions)
        assert _same(ref, out) == []
        n_done = int(ref[3].sum())
        if n_done:
            branches.add("some" if n_done <= k else "every")
        obs, state = out[0], out[1]
    return branches


@pytest.mark.parametrize("scenario,max_resets", [
    ("2-5a_2-5b", 3), pytest.param("2-8a_2-8b", None, marks=pytest.mark.slow)])
def test_step_autoreset_batch_is_vmapped_step(scenario, max_resets):
    """Whole random episodes, both branches (few done: compacted resets; many: reset all)."""
    env = envs_jax.make("savethecity", scenario=scenario)
    branches = _compare_random_episodes(env, 64, max_resets, env.episode_limit + 40)
    assert branches == {"some", "every"}  # time-outs come together: both paths ran


@pytest.mark.slow  # the same comparison as above, recompiled under x64
def test_step_autoreset_batch_float64():
    """Under x64 (as the reference tests run) the outputs are still identical."""
    with jax.enable_x64(True):
        env = envs_jax.make("savethecity")
        assert "some" in _compare_random_episodes(env, 16, 2, 100)
        obs, state = env.reset_batch(jax.random.split(jax.random.key(0), 2))
        assert state.health.dtype == jnp.float64  # the comparison really ran in float64


def test_step_autoreset_batch_on_a_one_step_game():
    """The traffic junction ends every episode on every step: the reset-all path."""
    env = envs_jax.make("traffic_junction")
    n = 8
    obs, state = env.reset_batch(jax.random.split(jax.random.key(0), n))
    keys = jax.random.split(jax.random.key(1), n)
    actions = jnp.zeros((n, env.n_agents), jnp.int32)
    assert _same(jax.vmap(env.step)(keys, state, actions),
                 env.step_autoreset_batch(keys, state, actions)) == []


def test_step_autoreset_batch_rejects_bad_max_resets():
    env = envs_jax.make("savethecity")
    state = jax.eval_shape(env.reset_batch, jax.random.split(jax.random.key(0), 4))[1]
    with pytest.raises(ValueError, match="max_resets"):
        env.step_autoreset_batch(jax.random.split(jax.random.key(1), 4), state,
                                 jnp.zeros((4, env.n_agents), jnp.int32), max_resets=0)


# ------------------------------------------------ random (unreachable too) states, hypothesis
_N = 32
_ENV = None


def _fns():
    global _ENV
    if _ENV is None:
        env = envs_jax.make("savethecity")
        _ENV = (env, jax.jit(env.reset_batch), jax.jit(jax.vmap(env.step)),
                jax.jit(lambda k, s, a, v: env.step_autoreset_batch(k, s, a, max_resets=2,
                                                                    avail=v)))
    return _ENV


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), late=st.floats(0.0, 1.0))
def test_step_autoreset_batch_on_random_states(seed, late):
    """Random health, fire, timers and clocks (a share `late` of the envs one step from the
    time limit, so both the compacted and the reset-all branch occur) and random actions,
    including unavailable ones: every output leaf is identical to the vmapped step's, with
    the batched step reading availability from the observation of the state (issue 19)."""
    env, reset, vm, batch = _fns()
    rng = np.random.default_rng(seed)
    _, state = reset(jax.random.split(jax.random.key(seed % 1000), _N))
    b = state.health.shape
    t = np.where(rng.random(_N) < late, env.episode_limit - 1,
                 rng.integers(0, env.episode_limit, _N))
    state = state.replace(
        health=jnp.where(state.bld_valid, jnp.asarray(rng.choice(
            [0.0, 0.5, 0.999, 1.0], b) * rng.random(b) ** 0.1, jnp.float32), state.health),
        fire=jnp.where(state.bld_valid, jnp.asarray(rng.random(b) * (rng.random(b) < 0.5),
                                                      jnp.float32), state.fire),
        ttnf=jnp.where(state.bld_valid, jnp.asarray(rng.integers(0, 4, b), jnp.int32),
                       state.ttnf),
        t=jnp.asarray(t, jnp.int32),
    )
    actions = jnp.asarray(rng.integers(0, env.n_actions, (_N, env.n_agents)), jnp.int32)
    keys = jax.random.split(jax.random.key(seed), _N)
    avail = jax.vmap(env.get_obs)(state).avail_actions
    assert _same(vm(keys, state, actions), batch(keys, state, actions, avail)) == []
