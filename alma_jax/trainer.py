"""`make_train(config)`: the jitted training loop shared by every method (PureJaxRL style).

`make_train` returns pure functions of arrays only:
- `init(key) -> TrainState` for one seed;
- `chunk(state) -> (state, metrics)` runs `rollouts_per_chunk` iterations of
  collect (one episode per env) -> store -> `updates_per_rollout` gradient steps -> maybe copy
  targets, entirely under `jit` with `lax.scan`;
- `evaluate(state, key) -> metrics`, greedy test episodes (epsilon 0, not stored).
Seeds are a `vmap` of these functions; the host loop in `alma_jax.train` only logs, evaluates
and checkpoints between chunks.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

import envs_jax
from alma_jax import buffer as bf
from alma_jax.allocation import env_heuristic_allocation, random_allocation
from alma_jax.config import Config
from alma_jax.learners.qmix import LowState, QMixConfig, QMixLearner
from alma_jax.rollout import make_rollout, with_allocation
from alma_jax.schedules import LinearSchedule, maybe_update_target


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: learner, replay, RNG and counters."""

    low: LowState
    buffer: bf.Buffer
    key: jax.Array  # raw uint32[2] key data (checkpoint friendly)
    t_env: jax.Array
    episode: jax.Array
    last_target_episode: jax.Array
    updates: jax.Array


class TrainFns(NamedTuple):
    init: Any
    chunk: Any
    evaluate: Any
    env: Any
    learner: QMixLearner
    example_episode: bf.EpisodeBatch
    evaluate_params: Any  # evaluate from the low-level parameters alone (checkpoint evaluation)
    act_one: Any  # acting in ONE environment outside the rollout (see `make_act_one`)


END_STATS = ("solved", "prop_buildings_completed", "buildings_completed", "buildings_burned",
             "fires_extinguished", "buildings_health_delta")


def _allocation_policy(cfg: Config, env):
    if cfg.allocation is None:
        return None
    if cfg.allocation == "random":
        return random_allocation
    if cfg.allocation == "heuristic":
        from envs_jax.savethecity import heuristic_allocation

        return env_heuristic_allocation(heuristic_allocation)
    raise ValueError(f"allocation={cfg.allocation!r} is not implemented")


def make_act_one(learner: QMixLearner, alloc_fn) -> Any:
    """The rollout's acting step for ONE environment, for host loops (evaluation, GIFs).

    `act_one(params, key, obs, held, decide, last_action, eps) -> (alloc [NA, NT], actions [NA])`:
    at a decision row (`decide`, timing as in `alma_jax.rollout`) a fresh allocation from the
    method's allocation policy replaces `held`; it is written into the agent rows of
    `entity2task_mask` (spec 1.3) and the learner acts epsilon-greedily (spec 2.2).
    """

    def act_one(params, key, obs, held, decide, last_action, eps):
        k_alloc, k_act = jax.random.split(key)
        if alloc_fn is None:
            alloc, obs_row = held, obs
        else:
            alloc = jnp.where(decide, alloc_fn(None, k_alloc, obs, held), held)
            obs_row = with_allocation(obs, alloc)
        one = jax.tree.map(lambda x: x[None], (obs_row, last_action, alloc))
        return alloc, learner.act(params, k_act, *one, eps)[0]

    return act_one


def episode_metrics(stats, prefix: str) -> dict[str, jax.Array]:
    """Means over a rollout's episodes: return, length and the env's end statistics."""
    out = {
        f"{prefix}/return_mean": jnp.mean(stats.episode_return),
        f"{prefix}/return_std": jnp.std(stats.episode_return),
        f"{prefix}/ep_length_mean": jnp.mean(stats.episode_length.astype(jnp.float32)),
    }
    for k in END_STATS:
        if k in stats.info:
            out[f"{prefix}/{k}_mean"] = jnp.mean(stats.info[k].astype(jnp.float32))
    return out


def make_train(cfg: Config) -> TrainFns:
    """Build the pure init / chunk / evaluate functions of one run configuration."""
    env = envs_jax.make(cfg.env, **cfg.env_args)
    learner = QMixLearner(QMixConfig(
        n_agents=env.n_agents, n_actions=env.n_actions, n_tasks=env.n_tasks,
        subtask_cond=cfg.subtask_cond, gamma=cfg.gamma, lr=cfg.lr, grad_clip=cfg.grad_clip,
        embed_dim=cfg.embed_dim, n_heads=cfg.n_heads, hidden_dim=cfg.hidden_dim,
        mix_dim=cfg.mix_dim, hyper_dim=cfg.hyper_dim,
    ))
    alloc_fn = _allocation_policy(cfg, env)
    rollout = make_rollout(env, cfg.num_envs, learner.act, alloc_fn, cfg.action_length)
    epsilon = LinearSchedule(cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_time)
    example = bf.empty_episodes((), env.episode_limit, env.n_agents, env.n_entities,
                                env.n_tasks, env.n_actions, env.entity_dim)

    def init(key: jax.Array) -> TrainState:
        k_net, k_obs, k_run = jax.random.split(key, 3)
        obs, _ = env.reset(k_obs)
        low = learner.init(k_net, obs)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(low=low, buffer=bf.buffer_init(example, cfg.buffer_size), key=k_run,
                          t_env=zero, episode=zero, last_target_episode=zero, updates=zero)

    def no_updates(low, key, buf):
        w_shape = jax.eval_shape(lambda: learner.update(
            low, bf.sample_windows(buf, key, cfg.batch_size, cfg.max_traj_len))[1])
        zeros = jax.tree.map(lambda s: jnp.zeros((cfg.updates_per_rollout,), s.dtype), w_shape)
        return low, zeros

    def updates(low, key, buf):
        def one(low, k):
            w = bf.sample_windows(buf, k, cfg.batch_size, cfg.max_traj_len)
            return learner.update(low, w)

        return jax.lax.scan(one, low, jax.random.split(key, cfg.updates_per_rollout))

    def iteration(state: TrainState, _):
        key, k_roll, k_upd = jax.random.split(state.key, 3)
        eps = epsilon(state.t_env)
        episodes, stats, steps = rollout(state.low.params, None, k_roll, eps)
        buf = bf.buffer_add(state.buffer, episodes, state.t_env)
        t_env = state.t_env + steps
        episode = state.episode + cfg.num_envs
        ready = bf.can_sample(buf, cfg.batch_size)
        low, m = jax.lax.cond(ready, updates, no_updates, state.low, k_upd, buf)
        (tp, ts), last, _ = maybe_update_target(
            (low.params, low.stats), (low.target_params, low.target_stats), episode,
            state.last_target_episode, cfg.target_update_interval)
        low = low.replace(target_params=tp, target_stats=ts)
        metrics = {k: jnp.mean(v) for k, v in m.items()}
        metrics.update(episode_metrics(stats, "train"))
        metrics["annealing/epsilon"] = eps
        metrics["learner_updates"] = jnp.where(ready, cfg.updates_per_rollout, 0)
        new = state.replace(low=low, buffer=buf, key=key, t_env=t_env, episode=episode,
                            last_target_episode=last,
                            updates=state.updates + metrics["learner_updates"])
        return new, metrics

    def chunk(state: TrainState):
        state, metrics = jax.lax.scan(iteration, state, None, length=cfg.rollouts_per_chunk)
        metrics["t_env"] = state.t_env
        return state, metrics

    n_test_rollouts = math.ceil(cfg.test_episodes / cfg.num_envs)

    def evaluate(state: TrainState, key: jax.Array) -> dict[str, jax.Array]:
        """Greedy episodes (epsilon 0), `n_test_rollouts * num_envs` of them, not stored."""
        return evaluate_params(state.low.params, key)

    def evaluate_params(params: Any, key: jax.Array) -> dict[str, jax.Array]:
        def one(_, k):
            _, stats, _ = rollout(params, None, k, 0.0)
            return None, stats

        _, stats = jax.lax.scan(one, None, jax.random.split(key, n_test_rollouts))
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), stats)
        out = episode_metrics(flat, "eval")
        n_agents = flat.info["n_agents"]
        for n in range(1, env.n_agents + 1):  # the breakdown by team size
            sel = (n_agents == n).astype(jnp.float32)
            cnt = jnp.sum(sel)
            solved = jnp.sum(flat.info["solved"] * sel) / jnp.maximum(cnt, 1.0)
            out[f"eval_by_agents/{n}/solved_mean"] = jnp.where(cnt > 0, solved, jnp.nan)
            ret = jnp.sum(flat.episode_return * sel) / jnp.maximum(cnt, 1.0)
            out[f"eval_by_agents/{n}/return_mean"] = jnp.where(cnt > 0, ret, jnp.nan)
        return out

    return TrainFns(init, chunk, evaluate, env, learner, example, evaluate_params,
                    make_act_one(learner, alloc_fn))
