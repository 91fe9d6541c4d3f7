"""The jitted stepping loop behind every env-throughput benchmark, and its timer.

Random valid actions are sampled inside a `lax.scan` from the previous observation; every
observation the loop asks for feeds a checksum so XLA cannot skip building it.

Modes:
  autoreset_terminal  auto-resetting step, observation and `info["terminal_obs"]` consumed
  autoreset           auto-resetting step, observation consumed (XLA drops the terminal obs)
  trainer             `env.step_batch` from a fresh reset, no auto-reset: the trainer's rollout
                      (one episode per env; it keeps stepping an env after its `done`)
Steppers (auto-reset modes): `batch` = `env.step_autoreset_batch` (resets only the done envs),
`vmap` = `jax.vmap(env.step)` (a reset for every env on every step, the old path).

Auto-reset loops are timed in the steady state: an untimed warm-up of two episode limits
first, so episode ages (and so the share of envs finishing per step) are mixed as in a long
run; a loop that starts every env at t = 0 would see almost no resets in its first steps.
Every timed call starts from that warmed-up carry and returns only the checksum: returning
the final carry would pin the loop's buffers to the default row-major layout, which costs
this loop about a third of its time on XLA:CPU (measured: 0.42 s against 0.29 s for 64
steps of 4,096 envs); the trainer's rollout keeps its env state inside one jitted call too.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from envs_jax.savethecity.policies import uniform_valid

MODES = ("autoreset_terminal", "autoreset", "trainer")
STEPPERS = ("batch", "vmap")


def obs_checksum(obs) -> jax.Array:
    return (
        jnp.sum(obs.entities)
        + jnp.sum(obs.avail_actions)
        + jnp.sum(obs.obs_mask)
        + jnp.sum(obs.entity_mask)
        + jnp.sum(obs.entity2task_mask)
        + jnp.sum(obs.task_mask)
    )


def make_loop(env, num_envs: int, num_steps: int, mode: str = "autoreset_terminal",
              stepper: str = "batch", policy=uniform_valid, consume_obs: bool = True,
              fixed_actions: bool = False):
    """(init(key) -> carry, run(carry) -> checksum), both jitted."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if stepper not in STEPPERS:
        raise ValueError(f"stepper must be one of {STEPPERS}, got {stepper!r}")
    if mode == "trainer":
        def step(keys, state, actions, avail):
            return env.step_batch(keys, state, actions, avail)
    elif stepper == "batch":
        def step(keys, state, actions, avail):
            return env.step_autoreset_batch(keys, state, actions, avail=avail)
    else:
        def step(keys, state, actions, avail):
            return jax.vmap(env.step)(keys, state, actions)

    def body(carry, _):
        key, obs, state, acc = carry
        key, ka, ks = jax.random.split(key, 3)
        if fixed_actions:
            actions = jnp.zeros((num_envs, env.n_agents), jnp.int32)
        else:
            actions = policy(ka, obs)  # batched: one key for all environments
        obs, state, reward, done, info = step(jax.random.split(ks, num_envs), state, actions,
                                              obs.avail_actions)
        acc = acc + jnp.sum(reward) + jnp.sum(done)
        if consume_obs:
            acc = acc + obs_checksum(obs)
        if mode == "autoreset_terminal":
            acc = acc + obs_checksum(info["terminal_obs"])
        return (key, obs, state, acc), None

    def scan(carry, n):
        return jax.lax.scan(body, carry, None, length=n)[0]

    warmup = 0 if mode == "trainer" else 2 * env.episode_limit

    def init(key):
        key, k0 = jax.random.split(key)
        obs, state = env.reset_batch(jax.random.split(k0, num_envs))
        carry = (key, obs, state, jnp.zeros((), jnp.float32))
        return scan(carry, warmup) if warmup else carry

    def run(carry):
        return scan(carry, num_steps)[-1]

    return jax.jit(init), jax.jit(run)


def time_loop(init, run, num_envs: int, num_steps: int, repeats: int, key_seed: int = 0
              ) -> dict:
    """Compile `run` ahead of time (timed, reported), then the best of `repeats` calls
    from the warm-up's carry: env steps/s with compile excluded."""
    carry = jax.block_until_ready(init(jax.random.key(key_seed)))
    t0 = time.perf_counter()
    compiled = run.lower(carry).compile()
    compile_s = time.perf_counter() - t0
    compiled(carry).block_until_ready()  # one-off costs of the first call
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled(carry).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"num_envs": num_envs, "steps_per_env": num_steps, "compile_s": round(compile_s, 3),
            "run_s": round(best, 4), "env_steps_per_s": round(num_envs * num_steps / best)}
