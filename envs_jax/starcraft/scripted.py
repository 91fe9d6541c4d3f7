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


# ---------------------------------------------------------------- ALMA's multi-army setting
def army_low_level(env, state, alloc: jax.Array) -> jax.Array:
    """A scripted low level for `multiarmy_jax`: each agent shoots (or heals within) its
    allocated army: the nearest enemy of that army in range, else walks toward the army's
    living units (its spawn point when none is left). alloc [MA, T] bool."""
    avail = env._dist_avail(state)[1]
    MA = env.MA
    u = state.units
    task = jnp.argmax(alloc, axis=1)
    codes = avail[:, N_NO_ATTACK:]
    medivac = jnp.asarray(env.is_medivac)[state.kind[:MA]]
    # column of each unit's tag: the unit in that column
    n_cols = codes.shape[1]
    col_unit = jnp.argmax(state.tags[None, :] == jnp.arange(n_cols)[:, None], axis=1)
    pos = u.pos
    d = jnp.hypot(pos[:MA, None, 0] - pos[col_unit][None, :, 0],
                  pos[:MA, None, 1] - pos[col_unit][None, :, 1])
    mine = jnp.where(medivac[:, None], codes >= 1000, codes == 2 + task[:, None])
    pick = jnp.argmin(jnp.where(mine, d, jnp.inf), axis=1)
    member = (state.army[None, :] == task[:, None]) & u.alive[None, MA:] & u.valid[None, MA:]
    cnt = jnp.maximum(jnp.sum(member, 1), 1)
    gx = jnp.where(jnp.any(member, 1), jnp.sum(member * pos[None, MA:, 0], 1) / cnt,
                   state.spawn[task, 0])
    gy = jnp.where(jnp.any(member, 1), jnp.sum(member * pos[None, MA:, 1], 1) / cnt,
                   state.spawn[task, 1])
    dx, dy = gx - pos[:MA, 0], gy - pos[:MA, 1]
    horizontal = jnp.abs(dx) >= jnp.abs(dy)
    move = jnp.where(horizontal, jnp.where(dx > 0, EAST, WEST), jnp.where(dy > 0, NORTH, SOUTH))
    move = jnp.where(jnp.take_along_axis(avail, move[:, None], 1)[:, 0] >= 1, move, 1)
    act = jnp.where(jnp.any(mine, 1), N_NO_ATTACK + pick, move)
    return jnp.where(avail[:, 0] >= 1, 0, act).astype(jnp.int32)


def army_allocation(env, state, how: str, key: jax.Array) -> jax.Array:
    """[MA, T]: 'heuristic' (the env's style), 'random' (uniform over open armies) or
    'first' (everyone on the first open army)."""
    MA, T = env.MA, env.n_tasks
    open_army = ~state.tasks_complete
    if how == "heuristic":
        return env.heuristic_of_state(state)
    if how == "random":
        logits = jnp.where(open_army, 0.0, -1e9)
        pick = jax.random.categorical(key, jnp.broadcast_to(logits, (MA, T)))
    else:
        pick = jnp.broadcast_to(jnp.argmax(open_army), (MA,))
    return jax.nn.one_hot(pick, T, dtype=bool) & state.units.valid[:MA, None]


def army_play(env, how: str, key: jax.Array, action_length: int = 3) -> dict:
    """One `multiarmy_jax` episode of the scripted low level under an allocation rule,
    re-allocating every `action_length` steps and when a subtask ends."""
    key, k_reset = jax.random.split(key)
    obs, state = env.reset(k_reset)

    def body(carry, k):
        state, alloc, timer, changed, done, out = carry
        k_a, k_s = jax.random.split(k)
        decide = (timer % action_length == 0) | changed
        alloc = jnp.where(decide, army_allocation(env, state, how, k_a), alloc)
        _, state, r, d, info = env.step_env(k_s, state, army_low_level(env, state, alloc))
        live = ~done
        out = {"return": out["return"] + jnp.where(live, r, 0.0),
               "battle_won": out["battle_won"] | (live & info["battle_won"]),
               "base_infiltrated": out["base_infiltrated"] | (live & info["base_infiltrated"]),
               "perc_armies_defeated": jnp.where(live & d, info["perc_armies_defeated"],
                                                 out["perc_armies_defeated"])}
        return (state, alloc, timer + 1, info["tasks_changed"], done | d, out), None

    out0 = {"return": jnp.float32(0.0), "battle_won": jnp.bool_(False),
            "base_infiltrated": jnp.bool_(False), "perc_armies_defeated": jnp.float32(0.0)}
    alloc0 = jnp.zeros((env.MA, env.n_tasks), bool)
    init = (state, alloc0, jnp.int32(0), jnp.bool_(False), jnp.bool_(False), out0)
    (_, _, _, _, _, out), _ = jax.lax.scan(body, init, jax.random.split(key, env.episode_limit))
    return out
