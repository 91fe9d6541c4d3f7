"""Scripted play on `starcraft_jax` maps: sanity checks a person would run on a simulator.

- `attack_move_battle`: both teams under SMAC's scripted opponent behaviour (attack-move to
  the other team's start), outside the agent interface. On a symmetric map either side should
  win about equally often.
- `focus_fire` / `spread_fire`: agent policies in SMAC's action space. Focus fire shoots, with
  every agent, the weakest enemy in range; spread fire gives agent i the i-th enemy in range.
  Without an enemy in range both walk toward the enemies' start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs_jax.starcraft import sim
from envs_jax.starcraft.smac_env import EAST, N_NO_ATTACK, NORTH, SOUTH, WEST, StarCraftJax


def attack_move_battle(env: StarCraftJax, key: jax.Array, n_steps: int | None = None
                       ) -> tuple[jax.Array, jax.Array]:
    """Both teams attack-move toward the other's start -> (agents won, enemies won) bools."""
    key, k_reset = jax.random.split(key)
    _, state = env.reset(k_reset)
    u = state.units
    goal = jnp.asarray(env.start)[1 - u.team]
    cmd = sim.Commands(kind=jnp.full(u.team.shape, sim.ATTACK_MOVE, jnp.int32),
                       target=jnp.zeros(u.team.shape, jnp.int32), point=goal)
    bounds = (float(env.size[0]), float(env.size[1]))
    steps = env.episode_limit if n_steps is None else n_steps
    keys = jax.random.split(key, steps)

    def step(i, x):
        return sim.advance(x, cmd, env.n_substeps, bounds, env._noise(keys[i]), env.tables)

    u = jax.lax.fori_loop(0, steps, step, u)
    A = env.n_agents
    left = sim.fighting(u)
    agents, enemies = jnp.any(left[:A]), jnp.any(left[A:])
    return agents & ~enemies, enemies & ~agents


def _toward_enemies(env: StarCraftJax, state) -> jax.Array:
    """[A] the move action that best closes on the enemies' start."""
    d = jnp.asarray(env.start[1]) - state.units.pos[: env.n_agents]
    horizontal = jnp.abs(d[:, 0]) >= jnp.abs(d[:, 1])
    return jnp.where(horizontal, jnp.where(d[:, 0] > 0, EAST, WEST),
                     jnp.where(d[:, 1] > 0, NORTH, SOUTH))


def focus_fire(env: StarCraftJax, state) -> jax.Array:
    """Every agent shoots the in-range enemy with the least health + shield."""
    avail = env.avail_actions(state)
    A = env.n_agents
    in_range = avail[:, N_NO_ATTACK:] > 0
    u = state.units
    hp = (u.health + u.shield)[A:]
    pick = jnp.argmin(jnp.where(in_range, hp[None, :], jnp.inf), axis=1)
    act = jnp.where(jnp.any(in_range, 1), N_NO_ATTACK + pick, _toward_enemies(env, state))
    return jnp.where(avail[:, 0] > 0, 0, act).astype(jnp.int32)


def spread_fire(env: StarCraftJax, state) -> jax.Array:
    """Agent i shoots the (i mod k)-th of its k in-range enemies."""
    avail = env.avail_actions(state)
    in_range = avail[:, N_NO_ATTACK:] > 0
    k = jnp.sum(in_range, 1)
    rank = jnp.cumsum(in_range, 1) - 1
    want = jnp.arange(env.n_agents) % jnp.maximum(k, 1)
    pick = jnp.argmax(in_range & (rank == want[:, None]), axis=1)
    act = jnp.where(k > 0, N_NO_ATTACK + pick, _toward_enemies(env, state))
    return jnp.where(avail[:, 0] > 0, 0, act).astype(jnp.int32)


def play(env: StarCraftJax, policy, key: jax.Array) -> dict[str, jax.Array]:
    """One episode of `policy(env, state) -> actions` -> battle_won, return, length."""
    key, k_reset = jax.random.split(key)
    _, state = env.reset(k_reset)

    def body(carry, k):
        state, ret, won, length, done = carry
        _, state, r, d, info = env.step_env(k, state, policy(env, state))
        return (state, ret + r, won | (info["battle_won"] & ~done),
                length + (~done).astype(jnp.int32), done | d), None

    init = (state, jnp.float32(0.0), jnp.bool_(False), jnp.int32(0), jnp.bool_(False))
    keys = jax.random.split(key, env.episode_limit)
    (_, ret, won, length, _), _ = jax.lax.scan(body, init, keys)
    return {"battle_won": won, "return": ret, "length": length}
