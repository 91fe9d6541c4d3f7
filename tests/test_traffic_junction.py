"""The 1-step traffic junction acceptance tests of LICA (lica.md 14, 16 item 31).

TJ-toy replicates the original study (sigmoid policies, payoff-table critic regression) with
seeds vmapped; TJ-full drives the real `LicaLearner` on `TrafficJunction` with a jitted loop.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs_jax
from alma_jax.buffer import EpisodeBatch, episodes_as_window
from alma_jax.learners.lica import LicaConfig, LicaLearner
from alma_jax.nn.init import dense
from alma_jax.rollout import make_rollout
from envs_jax.traffic_junction import TrafficJunction

# joint actions as pass indicators (agent 0, agent 1) and their team payoff
JOINT = jnp.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
PAYOFF = jnp.array([0.0, 1.0, 1.0, 0.0])


# ------------------------------------------------------------------------------ environment
def test_env_payoff_and_contract():
    env = envs_jax.make("traffic_junction")
    assert (env.n_agents, env.n_actions, env.n_tasks, env.episode_limit) == (2, 2, 1, 1)
    obs, state = env.reset(jax.random.key(0))
    assert obs.entities.shape == (env.n_entities, env.entity_dim)
    assert not obs.entity2task_mask.any() and not obs.task_mask.any()  # both agents in task 0
    for a, want in zip(np.asarray(JOINT, np.int32), np.asarray(PAYOFF)):
        _, _, r, done, info = env.step_env(jax.random.key(1), state, jnp.asarray(a))
        assert float(r) == want and bool(done) and not bool(info["episode_limit"])
        assert float(info["task_rewards"][0]) == want and bool(info["tasks_terminated"][0])
        assert info["tasks_changed"].dtype == jnp.bool_
    ids = TrafficJunction(agent_ids=True).reset(jax.random.key(0))[0].entities
    assert ids.shape == (2, 3) and not np.allclose(ids[0], ids[1])


# --------------------------------------------------------------------------------- TJ-toy
class _MLP(nn.Module):
    """in -> 32 -> ReLU -> 1 with PyTorch-default init (the study's nets)."""

    @nn.compact
    def __call__(self, x):
        return dense(1)(nn.relu(dense(32)(x)))[..., 0]


def toy_run(key: jax.Array, n_iter: int, method: str = "lica") -> jax.Array:
    """One seed of the TJ-toy study -> recorded p [n_iter, 2] (P(pass) of agent 0, 1)."""
    net = _MLP()
    k_pi, k_q, k_loop = jax.random.split(key, 3)
    ids = jnp.array([[0.0], [1.0]])
    pi = net.init(k_pi, ids)
    q = net.init(k_q, JOINT)
    q_tx, pi_tx = optax.adam(0.02), optax.adam(0.01)
    q_opt, pi_opt = q_tx.init(q), pi_tx.init(pi)
    flipped = jnp.stack([JOINT.at[:, 0].set(1 - JOINT[:, 0]), JOINT.at[:, 1].set(1 - JOINT[:, 1])])

    def critic_step(c, _):
        q, q_opt = c
        g = jax.grad(lambda q: jnp.mean((net.apply(q, JOINT) - PAYOFF) ** 2))(q)
        u, q_opt = q_tx.update(g, q_opt, q)
        return (optax.apply_updates(q, u), q_opt), None

    def policy_loss(pi, q, key):
        p_pass = jax.nn.sigmoid(net.apply(pi, ids))  # [2]
        if method == "lica":
            return -net.apply(q, p_pass[None])[0]
        # COMA baseline of the study: for agent i and joint action u, one row with advantage
        # Q(u) - Q(u with i's action flipped) and one with advantage 0; random 15 of 16 rows.
        adv = jax.lax.stop_gradient(net.apply(q, JOINT)[None] - net.apply(q, flipped))  # [2, 4]
        rows_adv = jnp.concatenate([adv.reshape(-1), jnp.zeros(8)])
        rows_logp = jnp.concatenate([jnp.repeat(jnp.log(p_pass), 4)] * 2)
        keep = jax.random.permutation(key, 16) < 15
        return -jnp.sum(keep * rows_adv * rows_logp) / 15.0

    def iteration(c, key):
        q, q_opt, pi, pi_opt = c
        (q, q_opt), _ = jax.lax.scan(critic_step, (q, q_opt), None, length=5)
        p = jax.nn.sigmoid(net.apply(pi, ids))
        g = jax.grad(policy_loss)(pi, q, key)
        u, pi_opt = pi_tx.update(g, pi_opt, pi)
        return (q, q_opt, optax.apply_updates(pi, u), pi_opt), p

    _, ps = jax.lax.scan(iteration, (q, q_opt, pi, pi_opt), jax.random.split(k_loop, n_iter))
    return ps


def toy_summary(p: np.ndarray) -> dict[str, float]:
    """p [seeds, 2] last recorded probabilities -> success, outcome shares, mean R."""
    out = np.round(p).astype(int)
    n = len(p)
    r = p[:, 0] * (1 - p[:, 1]) + p[:, 1] * (1 - p[:, 0])
    return {
        "success": float(np.mean(out[:, 0] != out[:, 1])),
        "10": float(np.mean((out[:, 0] == 1) & (out[:, 1] == 0))),
        "01": float(np.mean((out[:, 0] == 0) & (out[:, 1] == 1))),
        "00": float(np.sum((out == 0).all(1)) / n),
        "11": float(np.sum((out == 1).all(1)) / n),
        "mean_R": float(np.mean(r)),
    }


N_TOY_SEEDS = 2000


def test_tj_toy_lica_and_coma():
    keys = jax.random.split(jax.random.key(2020), N_TOY_SEEDS)
    ps = np.asarray(jax.jit(jax.vmap(lambda k: toy_run(k, 200)))(keys))
    at60, at200 = toy_summary(ps[:, 59]), toy_summary(ps[:, 199])
    print("TJ-toy LICA 60:", at60, "200:", at200)
    assert at60["success"] >= 0.90
    assert at200["success"] >= 0.97
    assert at60["mean_R"] >= 0.80
    assert at60["10"] >= 0.35 and at60["01"] >= 0.35  # no symmetry bias
    coma = toy_summary(np.asarray(jax.jit(jax.vmap(lambda k: toy_run(k, 60, "coma")))(keys))[:, -1])
    print("TJ-toy COMA 60:", coma)
    assert coma["success"] <= 0.40
    assert at60["success"] - coma["success"] >= 0.5


# --------------------------------------------------------------------------------- TJ-full
def tj_episodes(obs, obs2, actions, reward, done, info) -> EpisodeBatch:
    """One step of E environments -> whole episodes [E, 2] in the buffer's row layout."""
    E, NA = actions.shape
    NT = info["task_rewards"].shape[-1]
    none = jnp.full((E, NA), -1, jnp.int32)
    term = done & ~info["episode_limit"]

    def row(o, act, rew, task_r, terminated, reset, tasks_term, last_action):
        return EpisodeBatch(
            entities=o.entities, obs_mask=o.obs_mask, entity_mask=o.entity_mask,
            entity2task_mask=o.entity2task_mask, task_mask=o.task_mask,
            avail_actions=o.avail_actions, actions=act, reward=rew, task_rewards=task_r,
            terminated=terminated, reset=reset,
            filled=jnp.ones((E,), bool), hier_decision=jnp.zeros((E,), bool),
            tasks_terminated=tasks_term, last_action=last_action, prev_alloc=none,
        )

    first = row(obs, actions, reward, info["task_rewards"], term, done,
                info["tasks_terminated"], none)
    no = jnp.zeros_like(done)
    final = row(obs2, jnp.zeros_like(actions), jnp.zeros_like(reward), jnp.zeros((E, NT)), no, no,
                jnp.zeros((E, NT), bool), actions)
    return jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), first, final)


def make_tj_full(n_envs: int = 32, **cfg_kw):
    """`run(key, n_iter) -> per-iteration metrics` of LICA on TJ-full for one seed."""
    env = TrafficJunction(agent_ids=cfg_kw.pop("agent_ids", False))
    cfg = LicaConfig(n_agents=2, n_actions=2, n_tasks=1, **{"agent": "gru", **cfg_kw})
    learner = LicaLearner(cfg)
    E, NA, NT = n_envs, env.n_agents, env.n_tasks

    def play(params, key, eps):
        k_reset, k_act, k_step = jax.random.split(key, 3)
        obs, st = env.reset_batch(jax.random.split(k_reset, E))
        actions, _ = learner.act(params, k_act, obs, jnp.full((E, NA), -1, jnp.int32),
                                 jnp.zeros((E, NA, NT), bool), eps, learner.init_carry(E))
        obs2, _, reward, done, info = env.step_batch(jax.random.split(k_step, E), st, actions)
        return obs, obs2, actions, reward, done, info

    def iteration(state, key):
        k_play, k_upd, k_test = jax.random.split(key, 3)
        obs, obs2, actions, reward, done, info = play(state.params, k_play, 1.0)
        w = episodes_as_window(tj_episodes(obs, obs2, actions, reward, done, info), 0)
        state, m = learner.update(state, w, k_upd)
        greedy_reward = play(state.params, k_test, 0.0)[3]
        nan = jnp.any(jnp.stack([jnp.any(jnp.isnan(v)) for v in m.values()]))
        return state, {"train_return": jnp.mean(reward), "entropy": m["train_metrics/entropy"],
                       "greedy_optimal": greedy_reward[0] == 1.0, "nan": nan}

    def run(key, n_iter):
        k_init, k_loop = jax.random.split(key)
        state = learner.init(k_init, env.reset(k_init)[0])
        return jax.lax.scan(iteration, state, jax.random.split(k_loop, n_iter))[1]

    return run


def test_tj_full_rollout_integration():
    """The shared rollout records TJ episodes in the layout the learner expects."""
    env = TrafficJunction()
    learner = LicaLearner(LicaConfig(n_agents=2, n_actions=2, n_tasks=1, agent="gru"))
    rollout = make_rollout(env, 8, learner.act, None, 1, learner.init_carry)

    @jax.jit
    def go(key):
        state = learner.init(key, env.reset(key)[0])
        episodes, stats, steps = rollout(state.params, None, key, 0.5)
        state, m = learner.update(state, episodes_as_window(episodes, 0), key)
        return episodes, stats, steps, m

    episodes, stats, steps, m = go(jax.random.key(3))
    assert int(steps) == 8 and episodes.filled.shape == (8, 2) and bool(episodes.filled.all())
    assert bool(episodes.terminated[:, 0].all()) and not bool(episodes.terminated[:, 1].any())
    np.testing.assert_array_equal(episodes.last_action[:, 1], episodes.actions[:, 0])
    np.testing.assert_allclose(stats.episode_return, episodes.reward[:, 0])
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values())


@pytest.mark.slow
def test_tj_full_64_seeds_500_iterations():
    run = make_tj_full()
    out = jax.jit(jax.vmap(lambda k: run(k, 500)))(jax.random.split(jax.random.key(14), 64))
    out = {k: np.asarray(v) for k, v in out.items()}
    greedy = out["greedy_optimal"].mean(0)
    ent = out["entropy"].mean(0)
    print("TJ-full greedy-optimal at 1/50/100/200/500:", greedy[[0, 49, 99, 199, 499]],
          "train return (last 50):", out["train_return"][:, -50:].mean(),
          "entropy at 500:", ent[-1])
    assert not out["nan"].any()
    assert greedy[-1] >= 0.85
    assert out["train_return"][:, -50:].mean() >= 0.75
    assert np.all((ent[-50:] > 0.05) & (ent[-50:] < 0.6))
