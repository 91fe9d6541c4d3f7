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
from jax.sharding import Mesh

import envs_jax
from alma_jax import buffer as bf
from alma_jax.allocation import env_heuristic_allocation, random_allocation, spread_terms
from alma_jax.config import Config, alloc_settings, env_kwargs
from alma_jax.learners.qmix import QMixConfig, QMixLearner
from alma_jax.rollout import make_rollout, with_allocation
from alma_jax.schedules import schedules_from_config
from alma_jax.sharding import ShardedEnv, batch_constraint


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: learners, replay, RNG and counters."""

    low: Any  # the low-level learner's state (QMix LowState, LICA state)
    high: Any  # the allocation learner's state (AQL HighState), None without one
    buffer: bf.Buffer
    key: jax.Array  # raw uint32[2] key data (checkpoint friendly)
    t_env: jax.Array
    episode: jax.Array
    last_target_episode: jax.Array
    last_high_target_episode: jax.Array
    updates: jax.Array


class TrainFns(NamedTuple):
    init: Any
    chunk: Any
    evaluate: Any
    env: Any
    learner: Any
    example_episode: bf.EpisodeBatch
    eval_policy: Any  # (low state, high state) -> the test-mode policy pytree
    evaluate_policy: Any  # (policy, key) -> metrics: evaluation from a checkpoint's learners
    act_one: Any  # acting in ONE environment outside the rollout (see `make_act_one`)
    init_carry_one: Any  # () -> acting carry of ONE environment (None if stateless)
    high_learner: Any = None


END_STATS = ("solved", "prop_buildings_completed", "buildings_completed", "buildings_burned",
             "fires_extinguished", "buildings_health_delta",
             # StarCraft (SMAC adapters: battle_won; sc2multiarmy: all four; starcraft_jax:
             # battle_won and the dead units)
             "battle_won", "perc_armies_defeated", "allies_defeated", "base_infiltrated",
             "dead_allies", "dead_enemies")


def _static_allocation(cfg: Config, env):
    """Allocation policies without parameters (heuristic, random); None for flat methods."""
    if cfg.allocation is None:
        return None
    if cfg.allocation == "random":
        return random_allocation
    if cfg.allocation == "heuristic":
        if cfg.env == "savethecity":
            from envs_jax.savethecity import heuristic_allocation
        else:  # other envs may offer one: `heuristic_allocation(obs) -> [NA, NT]`
            heuristic_allocation = getattr(env, "heuristic_allocation", None)
        if heuristic_allocation is None:
            raise ValueError(f"allocation='heuristic': env={cfg.env!r} has no heuristic")
        return env_heuristic_allocation(heuristic_allocation)
    raise ValueError(f"allocation={cfg.allocation!r} is not a static allocation policy")


def make_low_learner(cfg: Config, env) -> Any:
    """The low-level learner named by `cfg.low_learner` for `env`'s sizes."""
    if cfg.low_learner == "lica":
        from alma_jax.learners.lica import LicaLearner

        return LicaLearner(lica_config(cfg, env))
    return QMixLearner(QMixConfig(
        n_agents=env.n_agents, n_actions=env.n_actions, n_tasks=env.n_tasks,
        subtask_cond=cfg.subtask_cond, gamma=cfg.gamma, lr=cfg.lr, grad_clip=cfg.grad_clip,
        n_step=cfg.n_step, popart=cfg.popart, softmax_mixing_weights=cfg.softmax_mixing_weights,
        mixer=cfg.mixer, optimizer=cfg.optimizer, embed_dim=cfg.embed_dim, n_heads=cfg.n_heads,
        hidden_dim=cfg.hidden_dim, mix_dim=cfg.mix_dim, hyper_dim=cfg.hyper_dim,
        precision=cfg.precision, update_splits=cfg.update_splits, **dict(cfg.refil),
        **dict(cfg.copa),
    ))


def lica_config(cfg: Config, env) -> Any:
    """LicaConfig from the run configuration (imported lazily: only LICA runs need it)."""
    from alma_jax.learners.lica import LicaConfig

    return LicaConfig(
        n_agents=env.n_agents, n_actions=env.n_actions, n_tasks=env.n_tasks,
        subtask_cond=cfg.subtask_cond, precision=cfg.precision, **dict(cfg.lica),
    )


def make_high_learner(cfg: Config, env) -> Any:
    """The learned allocation controller (AQL) or None; its networks and optimiser follow
    `alloc.*`, never the low level's keys (alma.md errata E2)."""
    if cfg.allocation != "aql":
        return None
    from alma_jax.learners.aql import AQLConfig, AQLLearner

    a = alloc_settings(cfg)
    return AQLLearner(AQLConfig(
        n_agents=env.n_agents, n_tasks=env.n_tasks, entity_dim=env.entity_dim,
        embed_dim=a["embed_dim"], n_heads=a["n_heads"], gamma=cfg.gamma, lr=float(a["lr"]),
        grad_clip=float(a["grad_clip"]), optimizer=a["optimizer"], popart=a["popart"],
        action_length=cfg.action_length, precision=cfg.precision, **dict(cfg.aql),
    ))


def _act_fns(learner):
    """(act_fn, init_carry) for the rollout; stateless learners get init_carry=None.

    Stateful learners implement `init_carry(E)` and
    `act(params, key, obs, last_action, alloc, eps, carry, decision) -> (actions, carry)`.
    """
    init_carry = getattr(learner, "init_carry", None)
    if init_carry is None or init_carry(1) is None:
        if init_carry is None:
            return learner.act, None
        return (lambda *a: learner.act(*a, None, None)[0]), None
    return learner.act, init_carry


def make_act_one(learner, alloc_fn, init_carry) -> Any:
    """The rollout's acting step for ONE environment, for host loops (evaluation, GIFs).

    `act_one(policy, key, obs, held, decide, last_action, eps, carry) -> (alloc, actions, carry)`
    with `policy = (low params, allocation params)`: at a decision row (`decide`, timing as in
    `alma_jax.rollout`) a fresh allocation from the method's allocation policy replaces `held`;
    it is written into the agent rows of `entity2task_mask` (spec 1.3) and the learner acts.
    """
    act, _ = _act_fns(learner)

    def act_one(policy, key, obs, held, decide, last_action, eps, carry):
        decide = jnp.asarray(decide, bool)
        params, alloc_params = policy
        k_alloc, k_act = jax.random.split(key)
        if alloc_fn is None:
            alloc, obs_row = held, obs
        else:
            alloc = jnp.where(decide, alloc_fn(alloc_params, k_alloc, obs, held), held)
            obs_row = with_allocation(obs, alloc)
        one = jax.tree.map(lambda x: x[None], (obs_row, last_action, alloc))
        if init_carry is None:
            return alloc, act(params, k_act, *one, eps)[0], carry
        carry = jax.tree.map(lambda x: x[None], carry)
        actions, carry = learner.act(params, k_act, *one, eps, carry, decide[None])
        carry = jax.tree.map(lambda x: x[0], carry)
        return alloc, actions[0], carry

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


def allocation_metrics(episodes: bf.EpisodeBatch, prefix: str) -> dict[str, jax.Array]:
    """How a method allocates: agents per active subtask and how often agents switch subtask.

    Measured at decision rows: mean number of agents on each subtask that has any, the fraction
    of subtasks left without agents (among unfinished ones), and the fraction of agents whose
    subtask differs from the one they held before (rows with a previous allocation).
    """
    alloc = bf.stored_alloc(episodes)  # [E, L, NA, NT]
    dec = episodes.hier_decision & episodes.filled
    on_used, n_used, empty = spread_terms(alloc, episodes.task_mask)  # each [E, L]
    per_task = jnp.sum(on_used * dec) / jnp.maximum(jnp.sum(n_used * dec), 1.0)
    empty = jnp.sum(empty * dec) / jnp.maximum(jnp.sum(dec), 1)
    now = bf.alloc_to_index(alloc)  # [E, L, NA]
    had = (episodes.prev_alloc >= 0) & (now >= 0) & dec[..., None]
    changed = jnp.sum((now != episodes.prev_alloc) & had) / jnp.maximum(jnp.sum(had), 1)
    return {f"{prefix}/agents_per_used_subtask": per_task,
            f"{prefix}/open_subtasks_without_agents": empty,
            f"{prefix}/agents_switching": changed}


def make_train(cfg: Config, mesh: Mesh | None = None) -> TrainFns:
    """Build the pure init / chunk / evaluate functions of one run configuration.

    `mesh` (optional, see `alma_jax.sharding`): split the env axis of rollouts and the batch
    axis of replay windows over the mesh's devices. Only sharding constraints are added, so
    results are the same as without it (up to float reduction order).
    """
    env = envs_jax.make(cfg.env, **env_kwargs(cfg))
    shard_batch = batch_constraint(mesh)  # identity without a mesh
    learner = make_low_learner(cfg, env)
    high = make_high_learner(cfg, env)
    on_policy = bool(getattr(learner, "on_policy", False))
    alloc_fn = high.decide if high is not None else _static_allocation(cfg, env)
    act_fn, init_carry = _act_fns(learner)
    rollout = make_rollout(env if mesh is None else ShardedEnv(env, mesh), cfg.num_envs, act_fn,
                           alloc_fn, cfg.action_length, init_carry)
    schedules = schedules_from_config(cfg)
    epsilon, alloc_eps, prop_eps = (schedules.epsilon, schedules.alloc_eps,
                                    schedules.prop_alloc_eps)
    high_cfg = alloc_settings(cfg)
    high_batch = high_cfg["batch_size"]
    high_steps = high_cfg["updates_per_rollout"] or cfg.updates_per_rollout
    train_low = not cfg.freeze_low  # freeze_low: the low level is never touched
    example = bf.empty_episodes((), env.episode_limit, env.n_agents, env.n_entities,
                                env.n_tasks, env.n_actions, env.entity_dim)

    def alloc_params(high_state, t_env=None):
        """What the rollout's allocation policy reads; t_env None = test mode (no exploration)."""
        if high is None:
            return None
        if t_env is None:
            return high.alloc_params(high_state, jnp.float32(0.0), jnp.float32(0.0))
        return high.alloc_params(high_state, alloc_eps(t_env), prop_eps(t_env))

    def init(key: jax.Array) -> TrainState:
        k_net, k_obs, k_run, k_high = jax.random.split(key, 4)
        obs, _ = env.reset(k_obs)
        low = learner.init(k_net, obs)
        high_state = None if high is None else high.init(k_high, obs)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(low=low, high=high_state, buffer=bf.buffer_init(example, cfg.buffer_size),
                          key=k_run, t_env=zero, episode=zero, last_target_episode=zero,
                          last_high_target_episode=zero, updates=zero)

    def skipped(update_fn):
        """The `lax.cond` twin of `update_fn` that changes nothing and reports zero metrics."""

        def skip(st, key, *args):
            shapes = jax.eval_shape(update_fn, st, key, *args)[1]
            return st, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return skip

    def low_updates(low, key, buf):
        def one(low, k):
            k_w, k_u = jax.random.split(k)
            w = shard_batch(bf.sample_windows(buf, k_w, cfg.batch_size, cfg.max_traj_len))
            return learner.update(low, w, k_u)

        low, m = jax.lax.scan(one, low, jax.random.split(key, cfg.updates_per_rollout))
        return low, {k: jnp.mean(v) for k, v in m.items()}

    def high_updates(high_state, key, buf, eligible, t_env):
        def one(hs, k):
            k_w, k_u = jax.random.split(k)
            w = shard_batch(bf.sample_windows(buf, k_w, high_batch, cfg.max_traj_len,
                                              eligible))
            return high.update(hs, w, k_u, t_env)

        hs, m = jax.lax.scan(one, high_state, jax.random.split(key, high_steps))
        return hs, {k: jnp.mean(v) for k, v in m.items()}

    def iteration(state: TrainState, _):
        key, k_roll, k_upd, k_high = jax.random.split(state.key, 4)
        eps = epsilon(state.t_env)
        episodes, stats, steps = rollout(state.low.params, alloc_params(state.high, state.t_env),
                                         k_roll, eps)
        buf = bf.buffer_add(state.buffer, episodes, state.t_env)
        t_env = state.t_env + steps
        episode = state.episode + cfg.num_envs
        if not train_low:
            low, m, ready = state.low, {}, jnp.bool_(False)
        elif on_policy:  # train on the episodes just collected (lica.md 2, 13.6)
            fresh = shard_batch(bf.episodes_as_window(episodes, state.t_env))
            low, m = learner.update(state.low, fresh, k_upd)
            ready = jnp.bool_(True)
        else:
            ready = bf.can_sample(buf, cfg.batch_size)
            low, m = jax.lax.cond(ready, low_updates, skipped(low_updates), state.low, k_upd,
                                  buf)
        due = episode - state.last_target_episode >= cfg.target_update_interval
        if train_low:
            low = jax.lax.cond(due, learner.update_target, lambda x: x, low)
        last = jnp.where(due, episode, state.last_target_episode)
        metrics = dict(m)
        high_state, last_high = state.high, state.last_high_target_episode
        if high is not None:
            eligible = bf.recent_episodes(buf, t_env, cfg.aql.get("decay_old", 150_000))
            ready_h = jnp.sum(eligible) >= high_batch  # spec 3.11: skipped otherwise
            high_state, mh = jax.lax.cond(ready_h, high_updates, skipped(high_updates),
                                          state.high, k_high, buf, eligible, t_env)
            due_h = episode - last_high >= cfg.alloc_target_update_interval
            high_state = jax.lax.cond(due_h, high.update_target, lambda x: x, high_state)
            last_high = jnp.where(due_h, episode, last_high)
            metrics.update(mh)
            metrics["annealing/alloc_eps"] = alloc_eps(state.t_env)
            metrics["annealing/prop_alloc_eps"] = prop_eps(state.t_env)
        metrics.update(episode_metrics(stats, "train"))
        if alloc_fn is not None:
            metrics.update(allocation_metrics(episodes, "train_alloc"))
        if not on_policy:  # LICA samples from its policy; its eps only flags test mode
            metrics["annealing/epsilon"] = eps
        n_updates = 1 if on_policy else cfg.updates_per_rollout
        metrics["learner_updates"] = jnp.where(ready, n_updates, 0)
        new = state.replace(low=low, high=high_state, buffer=buf, key=key, t_env=t_env,
                            episode=episode, last_target_episode=last,
                            last_high_target_episode=last_high,
                            updates=state.updates + metrics["learner_updates"])
        return new, metrics

    def chunk(state: TrainState):
        state, metrics = jax.lax.scan(iteration, state, None, length=cfg.rollouts_per_chunk)
        metrics["t_env"] = state.t_env
        return state, metrics

    n_test_rollouts = math.ceil(cfg.test_episodes / cfg.num_envs)

    def eval_policy(low, high_state) -> Any:
        """Test-mode policy: low-level parameters and exploration-free allocation parameters."""
        return low.params, alloc_params(high_state)

    def evaluate(state: TrainState, key: jax.Array) -> dict[str, jax.Array]:
        """Greedy episodes (epsilon 0), `n_test_rollouts * num_envs` of them, not stored."""
        return evaluate_policy(eval_policy(state.low, state.high), key)

    def evaluate_policy(policy: Any, key: jax.Array) -> dict[str, jax.Array]:
        params, a_params = policy

        def one(_, k):
            episodes, stats, _ = rollout(params, a_params, k, 0.0)
            extra = allocation_metrics(episodes, "eval_alloc") if alloc_fn is not None else {}
            return None, (stats, extra)

        _, (stats, extra) = jax.lax.scan(one, None, jax.random.split(key, n_test_rollouts))
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), stats)
        out = episode_metrics(flat, "eval")
        out.update({k: jnp.mean(v) for k, v in extra.items()})
        n_agents = flat.info["n_agents"] if "n_agents" in flat.info else None
        for n in range(1, env.n_agents + 1) if n_agents is not None else ():
            sel = (n_agents == n).astype(jnp.float32)  # the breakdown by team size
            cnt = jnp.sum(sel)
            for name, val in (("solved_mean", flat.info.get("solved")),
                              ("return_mean", flat.episode_return)):
                if val is None:
                    continue
                mean = jnp.sum(val * sel) / jnp.maximum(cnt, 1.0)
                out[f"eval_by_agents/{n}/{name}"] = jnp.where(cnt > 0, mean, jnp.nan)
        return out

    def init_carry_one():
        return None if init_carry is None else jax.tree.map(lambda x: x[0], init_carry(1))

    return TrainFns(init, chunk, evaluate, env, learner, example, eval_policy, evaluate_policy,
                    make_act_one(learner, alloc_fn, init_carry), init_carry_one, high)
