"""The shared rollout: rows, decision timing, allocation writing (spec 1.3, 3.7, 4.1)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import envs_jax
from alma_jax.allocation import env_heuristic_allocation, random_allocation
from alma_jax.buffer import alloc_to_index, stored_alloc
from alma_jax.rollout import make_rollout
from envs_jax.core import Observation
from envs_jax.savethecity import heuristic_allocation
from envs_jax.savethecity.policies import uniform_valid

N_ENVS, ACTION_LENGTH = 6, 5


def _random_act(params, key, obs, last_action, alloc, eps):
    return jax.vmap(uniform_valid)(jax.random.split(key, obs.entities.shape[0]), obs)


@pytest.fixture(scope="module")
def env():
    return envs_jax.make("savethecity")


@pytest.fixture(scope="module", params=["heuristic", "random", "flat"])
def run(request, env):
    alloc = {"heuristic": env_heuristic_allocation(heuristic_allocation),
             "random": random_allocation, "flat": None}[request.param]
    rollout = jax.jit(make_rollout(env, N_ENVS, _random_act, alloc, ACTION_LENGTH))
    ep, stats, steps = rollout(None, None, jax.random.key(3), 1.0)
    return request.param, jax.tree.map(np.asarray, ep), jax.tree.map(np.asarray, stats), int(steps)


def test_rows_and_episode_ends(run):
    _, ep, stats, steps = run
    lengths = stats.episode_length
    assert steps == lengths.sum()
    for e, n in enumerate(lengths):
        np.testing.assert_array_equal(ep.filled[e], np.arange(ep.filled.shape[1]) <= n)
        assert ep.reset[e].sum() == 1 and ep.reset[e, n - 1]
        # the final-observation row has no action and no post-transition fields
        assert np.all(ep.actions[e, n] == 0) and ep.reward[e, n] == 0
        assert not ep.terminated[e, n:].any() and not ep.tasks_terminated[e, n:].any()
        # rows after it are padding
        assert np.all(ep.entities[e, n + 1:] == 0) and np.all(ep.last_action[e, n + 1:] == -1)
        # timeouts are not terminations
        assert ep.terminated[e, n - 1] == (not bool(stats.info["episode_limit"][e]))
    np.testing.assert_allclose(ep.reward.sum(1), stats.episode_return, rtol=1e-5, atol=1e-5)


def test_actions_are_available_and_last_action_shifts(run):
    _, ep, stats, _ = run
    for e, n in enumerate(stats.episode_length):
        a = ep.actions[e, :n]
        codes = np.take_along_axis(ep.avail_actions[e, :n], a[..., None], -1)[..., 0]
        assert np.all(codes >= 1)
        np.testing.assert_array_equal(ep.last_action[e, 0], -1)
        np.testing.assert_array_equal(ep.last_action[e, 1 : n + 1], a)


def test_decision_timing_and_held_allocation(run, env):
    kind, ep, stats, _ = run
    if kind == "flat":
        assert not ep.hier_decision.any()
        assert np.all(ep.entity2task_mask[ep.filled][:, : env.n_agents])  # nobody allocated
        return
    alloc = alloc_to_index(stored_alloc(ep))
    for e, n in enumerate(stats.episode_length):
        dec = ep.hier_decision[e]
        assert dec[0] and not dec[n:].any()
        timer = 0
        for t in range(1, n):
            timer += 1
            changed = np.any(ep.tasks_terminated[e, t - 1] != ep.task_mask[e, t - 1])
            expect = timer >= ACTION_LENGTH or changed
            assert dec[t] == expect, (e, t)
            if dec[t]:
                timer = 0
            else:  # held between decisions
                np.testing.assert_array_equal(alloc[e, t], alloc[e, t - 1])
            np.testing.assert_array_equal(ep.prev_alloc[e, t], alloc[e, t - 1])
        # active agents are allocated to active subtasks; padded agents to nothing
        for t in range(n):
            active = ~ep.entity_mask[e, t, : env.n_agents]
            assert np.all(alloc[e, t][~active] == -1)
            live = ~ep.task_mask[e, t]
            if live.any():
                assert np.all(live[alloc[e, t][active]])
    if kind == "heuristic":
        # every decision row carries the env's heuristic for that row's observation
        rows = np.argwhere(ep.hier_decision)
        for e, t in rows[:: max(1, len(rows) // 40)]:
            obs = Observation(ep.entities[e, t], ep.avail_actions[e, t], ep.obs_mask[e, t],
                              ep.entity_mask[e, t], ep.entity2task_mask[e, t], ep.task_mask[e, t])
            expected = alloc_to_index(np.asarray(heuristic_allocation(obs)))
            np.testing.assert_array_equal(alloc[e, t], expected)


def test_sampled_windows_line_states_actions_and_rewards_up():
    """Through the trainer's rollout, buffer and window sampling: on the one-agent scenario
    (no collisions) the position at row t+1 is the position at row t moved by the action of
    row t, last_action(t+1) = action(t), and every taken action was available at row t."""
    import dataclasses

    from alma_jax import buffer as bf
    from alma_jax.config import load_config
    from alma_jax.trainer import make_train
    from envs_jax.savethecity.env import MOVE_DELTA, decode_entities

    cfg = load_config(["alg=heuristic", "env_args.scenario=1a_1b", "embed_dim=8", "hyper_dim=8",
                       "hidden_dim=8", "mix_dim=4", "n_heads=2", "num_envs=4",
                       "rollouts_per_chunk=2", "buffer_size=8", "batch_size=4", "progress=false"])
    fns = make_train(dataclasses.replace(cfg, updates_per_rollout=0))
    state, _ = jax.jit(fns.chunk)(fns.init(jax.random.PRNGKey(0)))
    w = jax.device_get(bf.sample_windows(state.buffer, jax.random.PRNGKey(1), 4, 64))
    pos = np.asarray(decode_entities(w.entities)[1][..., 0, :])  # the agent's cell
    m = np.asarray(bf.loss_mask(w))
    pairs = m[:, :-1] & ~w.reset[:, :-1] & w.filled[:, 1:]
    assert pairs.sum() > 100
    b, t = np.nonzero(pairs)
    a = w.actions[b, t, 0]
    np.testing.assert_array_equal(pos[b, t] + MOVE_DELTA[a], pos[b, t + 1])
    np.testing.assert_array_equal(w.last_action[b, t + 1, 0], a)
    bt = np.nonzero(m)
    assert (w.avail_actions[bt][:, 0][np.arange(len(bt[0])), w.actions[bt][:, 0]] >= 1).all()
