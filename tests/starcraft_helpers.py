"""Shared check of the StarCraft envs' batch-written steps."""

from __future__ import annotations

import jax
import numpy as np

from envs_jax.savethecity.policies import uniform_valid


def assert_batch_step_equals_vmap(env, n_envs: int, n_steps: int, seed: int) -> None:
    """`env.step_batch` (battle axis last) against `jax.vmap(env.step_env)` over `n_steps`
    steps of random available actions from the same states: integers and booleans equal,
    floats to 1e-5 (sums over units may round differently in the two layouts). The batched
    step gets the observation's availability, as the trainer's rollout gives it."""
    obs, s_b = env.reset_batch(jax.random.split(jax.random.PRNGKey(seed), n_envs))
    s_v = s_b
    batch, vm = jax.jit(env.step_batch), jax.jit(jax.vmap(env.step_env))
    for t in range(n_steps):
        k = jax.random.PRNGKey(seed * 1000 + t)
        acts = uniform_valid(k, obs)
        keys = jax.random.split(k, n_envs)
        out_b, out_v = batch(keys, s_b, acts, obs.avail_actions), vm(keys, s_v, acts)
        for a, b in zip(jax.tree.leaves(out_b), jax.tree.leaves(out_v)):
            a, b = np.asarray(a), np.asarray(b)
            if np.issubdtype(a.dtype, np.floating):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
            else:
                np.testing.assert_array_equal(a, b)
        obs, s_b, s_v = out_b[0], out_b[1], out_v[1]
    # the battles did fight: some unit died
    assert int(np.sum(np.asarray(s_b.units.valid) & ~np.asarray(s_b.units.alive))) > 0
