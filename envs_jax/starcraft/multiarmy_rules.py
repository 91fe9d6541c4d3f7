"""ALMA's multi-army rules (starcraft.md A.5-A.9, A.13) as pure JAX functions of padded arrays.

The same rules as the numpy module `envs_jax.bridge.sc2multiarmy_rules` (the bridge's
reference), written for fixed shapes so that a pure-JAX multi-army env can use them under
`jit` and `vmap`: units sit in padded slots, agents in [0, MA) and enemies in [MA, MA + ME),
with `valid` marking real units. Tested equal to the numpy functions on random snapshots
(tests/test_starcraft_multiarmy_rules.py). Work in progress toward `multiarmy_jax` (issue 18):
episode generation, the army script and the env itself are not written yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs_jax.bridge.sc2multiarmy_rules import (  # noqa: F401 (parse_style re-exported)
    ALLY_CODE,
    BASE_RADIUS,
    FAR,
    MAX_SWITCH,
    MIN_SWITCH,
    N_NO_ATTACK,
    parse_style,
)

CRITERIA = ("attacking", "type", "unassigned", "diff")
_DIFF_SHIFT, _BASE = 16, 64  # `diff` in [-16, 48) packs into one base-64 digit


def task_end_codes(x, y, alive, valid, medivac, army, n_armies, centre, n_tasks: int = 3,
                   base_radius: float = BASE_RADIUS) -> jax.Array:
    """Enemy arrays [ME] -> [n_tasks] int32: -1 infiltrated (a non-Medivac within the base,
    dead units included), +1 defeated or absent, 0 active."""
    in_base = jnp.hypot(x - centre[0], y - centre[1]) < base_radius
    k = jnp.arange(n_tasks)
    member = valid[None, :] & (army[None, :] == k[:, None])  # [T, ME]
    infiltrated = jnp.any(member & in_base[None, :] & ~medivac[None, :], axis=1)
    defeated = ~jnp.any(member & alive[None, :], axis=1)
    exists = (k < n_armies) & jnp.any(member, axis=1)
    codes = jnp.where(infiltrated, -1, jnp.where(defeated, 1, 0))
    return jnp.where(exists, codes, 1).astype(jnp.int32)


def game_end_code(agent_alive, agent_valid, agent_medivac, enemy_alive, enemy_valid,
                  enemy_medivac, has_medivac: bool) -> jax.Array:
    """() int32: -1 loss, 1 win, 0 draw, 2 running (the numpy module's None)."""
    a = agent_alive & agent_valid
    e = enemy_alive & enemy_valid
    na, ne = jnp.sum(a), jnp.sum(e)
    if has_medivac:
        a_meds_only = ~jnp.any(a & ~agent_medivac)
        e_meds_only = ~jnp.any(e & ~enemy_medivac)
    else:
        a_meds_only = e_meds_only = jnp.bool_(False)
    loss = ((na == 0) & (ne > 0)) | a_meds_only
    win = ((na > 0) & (ne == 0)) | e_meds_only
    draw = (na == 0) & (ne == 0)
    return jnp.where(loss, -1, jnp.where(win, 1, jnp.where(draw, 0, 2))).astype(jnp.int32)


def medivacs_only(alive, valid, medivac, army, n_tasks: int = 3) -> jax.Array:
    """Enemy arrays [ME] -> [n_tasks] bool: the army has living units, all Medivacs."""
    live = valid & alive
    member = live[None, :] & (army[None, :] == jnp.arange(n_tasks)[:, None])
    return jnp.any(member, axis=1) & ~jnp.any(member & ~medivac[None, :], axis=1)


def health_deltas(prev_hs, now_health, now_hs, dead_before, valid):
    """Per unit: (damage, died) as the numpy `health_deltas`: the drop in health + shield,
    or the whole previous health + shield for a unit that died this step."""
    died = valid & ~dead_before & (now_health == 0)
    damage = jnp.where(dead_before | ~valid, 0.0, jnp.where(died, prev_hs, prev_hs - now_hs))
    return damage, died


def army_damage_rewards(damage, died, army, valid, n_tasks: int, death_value: float = 10.0,
                        faithful: bool = True) -> jax.Array:
    """[n_tasks] unscaled per-army damage term; `faithful` misses the killing blow (A.6)."""
    w = jnp.where(died, 0.0, damage) if faithful else damage + death_value * died
    member = valid[None, :] & (army[None, :] == jnp.arange(n_tasks)[:, None])
    return jnp.sum(jnp.where(member, w[None, :], 0.0), axis=1)


def heuristic_allocation(style: tuple[str, ...], order, agent_types, agent_alive, agent_valid,
                         enemy_types, enemy_alive, enemy_valid, enemy_army, n_armies,
                         tasks_complete, attacking, n_types: int, n_tasks: int = 3
                         ) -> jax.Array:
    """[MA, n_tasks] bool: ALMA's heuristic allocators (A.13), as the numpy module computes
    them. Agents are visited in `order` [MA] (padded slots are skipped); each takes the open
    army ranked first by the style's criteria, largest first, ties to the lowest army id.
    The criteria tuple is packed into one integer per army so that the ranking is an argmax.
    """
    dynamic = "dynamic" in style
    crit = [c for c in style if c != "dynamic"]
    k = jnp.arange(n_tasks)
    counted = enemy_valid & (enemy_alive if dynamic else True)
    member = counted[None, :] & (enemy_army[None, :] == k[:, None])  # [T, ME]
    remaining = jnp.sum(member, axis=1).astype(jnp.int32)
    # unmatched enemies per (type, army)
    of_type = enemy_types[None, :] == jnp.arange(n_types)[:, None]  # [NT_types, ME]
    unmatched = jnp.sum(of_type[:, None, :] & member[None, :, :], axis=2).astype(jnp.int32)
    count = jnp.zeros(n_tasks, jnp.int32)
    open_army = (k < n_armies) & ~tasks_complete

    def visit(carry, i):
        remaining, unmatched, count, alloc = carry
        take = agent_valid[i] & (agent_alive[i] if dynamic else True)
        mine = unmatched[agent_types[i]] > 0  # [T]
        values = {"attacking": attacking.astype(jnp.int32), "type": mine.astype(jnp.int32),
                  "unassigned": (count == 0).astype(jnp.int32),
                  "diff": remaining + _DIFF_SHIFT}
        score = jnp.zeros(n_tasks, jnp.int32)
        for c in crit:
            score = score * _BASE + values[c]
        score = jnp.where(open_army, score, -1)
        best = jnp.argmax(score)  # first maximum: the lowest army id on ties
        take = take & jnp.any(open_army)
        hit = take & (k == best)
        unmatched = unmatched.at[agent_types[i], best].add(
            -(take & mine[best]).astype(jnp.int32))
        remaining = remaining - hit.astype(jnp.int32)
        count = count + hit.astype(jnp.int32)
        alloc = alloc.at[i].set(hit)
        return (remaining, unmatched, count, alloc), None

    alloc = jnp.zeros((agent_types.shape[0], n_tasks), bool)
    (_, _, _, alloc), _ = jax.lax.scan(visit, (remaining, unmatched, count, alloc), order)
    return alloc


# ------------------------------------------------------------------ geometry and masks (A.9)


def distance_matrix(x, y, alive, valid) -> jax.Array:
    """[E, E] distances over padded slots; FAR where either unit is dead or padding, 0 on
    the diagonal."""
    d = jnp.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    live = alive & valid
    d = jnp.where(live[:, None] & live[None, :], d, FAR)
    return jnp.where(jnp.eye(d.shape[0], dtype=bool), 0.0, d)


def obs_mask(dist, valid, sight_range: float) -> jax.Array:
    """[E, E] bool, True = row cannot see column (far, dead, padding)."""
    return (dist > sight_range) | ~valid[:, None] | ~valid[None, :]


def entity_mask(alive, valid) -> jax.Array:
    return ~(alive & valid)


def entity2task_mask(n_agents_max: int, army, enemy_valid, n_tasks: int = 3,
                     agent_alloc=None, agent_valid=None) -> jax.Array:
    """[E, n_tasks] bool, True = not in the task: enemies belong to their army, agents to
    nothing unless an allocation [MA, n_tasks] is given, padding to nothing."""
    k = jnp.arange(n_tasks)
    enemies = ~(enemy_valid[:, None] & (army[:, None] == k[None, :]))
    if agent_alloc is None:
        agents = jnp.ones((n_agents_max, n_tasks), bool)
    else:
        agents = ~(jnp.asarray(agent_alloc, bool) & agent_valid[:, None])
    return jnp.concatenate([agents, enemies])


def avail_codes(dist, x, y, alive, valid, medivac, flying, tags, army, n_agents_max: int,
                n_actions: int, pathing, move_amount: float = 2.0,
                shoot_range: float = 6.0) -> jax.Array:
    """[MA, n_actions] int32 codes as the numpy `avail_actions`: 1 general, 2 + army for an
    attack on an enemy of that army within range, 1000 + j for a Medivac's heal of ally j;
    dead and padded agents only no-op. Arrays are over all E padded slots; `tags` [E] is
    each unit's tag (its attack/heal column is 6 + tag); `pathing` [map_x, map_y] bool."""
    MA = n_agents_max
    h = move_amount / 2
    ax, ay = x[:MA], y[:MA]
    px = jnp.stack([ax, ax, ax + h, ax - h], 1)  # north, south, east, west
    py = jnp.stack([ay + h, ay - h, ay, ay], 1)
    # int() truncates toward zero, as the original's cell lookup does (x = -0.5 is cell 0)
    cx, cy = jnp.trunc(px).astype(jnp.int32), jnp.trunc(py).astype(jnp.int32)
    mx, my = pathing.shape
    inside = (cx >= 0) & (cx < mx) & (cy >= 0) & (cy < my)
    moves = inside & pathing[jnp.clip(cx, 0, mx - 1), jnp.clip(cy, 0, my - 1)]
    col = jnp.arange(n_actions)
    onehot = (N_NO_ATTACK + tags)[:, None] == col[None, :]  # [E, n_actions]
    in_range = dist[:MA] <= shoot_range  # [MA, E]
    is_enemy = jnp.arange(dist.shape[0]) >= MA
    enemy_code = jnp.where(is_enemy, 2 + army_of_slot(army, MA, dist.shape[0]), 0)
    heal_code = jnp.where(~is_enemy & ~flying, ALLY_CODE + jnp.arange(dist.shape[0]), 0)
    target_ok = in_range & valid[None, :] & jnp.where(
        medivac[:MA, None], ~is_enemy[None, :], is_enemy[None, :])
    value = jnp.where(medivac[:MA, None], heal_code[None, :], enemy_code[None, :])
    value = jnp.where(target_ok, value, 0)  # [MA, E]
    targets = jnp.sum(value[:, :, None] * onehot[None, :, :], axis=1)  # [MA, n_actions]
    live = (alive & valid)[:MA]
    general = jnp.zeros((MA, n_actions), jnp.int32).at[:, 1].set(1)
    general = general.at[:, 2:6].set(moves.astype(jnp.int32))
    codes = jnp.where(col[None, :] >= N_NO_ATTACK, targets, general)
    return jnp.where(live[:, None], codes, (col == 0)[None, :].astype(jnp.int32))


def army_of_slot(army, n_agents_max: int, n_slots: int) -> jax.Array:
    """Enemy army ids [ME] placed on the enemy slots of [E] (0 on agent slots)."""
    return jnp.concatenate([jnp.zeros(n_agents_max, army.dtype), army])[:n_slots]



def entity_features(x, y, alive, valid, kind, health, health_max, shield, shield_max, energy,
                    energy_max, cooldown, max_cooldown, tags, avail, army_attacking,
                    army_since, army, n_agents_max: int, type_bits: int, shields: bool,
                    map_xy: tuple[float, float], playable: tuple[float, float],
                    prev_xy=None, move_amount: float = 2.0, max_switch: float = 20.0
                    ) -> jax.Array:
    """[E, dim] float32 entity features (A.8) over padded slots, as the numpy
    `entity_features`: tag one-hot, the agents' availability of actions 2..., type one-hot,
    health (and shield), energy and cooldown (agents), position (map-relative and
    centre-of-mass relative), army phase (enemies), velocity. Padding rows are zeros; dead
    units keep tag, type and phase."""
    E = x.shape[0]
    MA = n_agents_max
    n_actions = avail.shape[1]
    f32 = jnp.float32
    is_agent = jnp.arange(E) < MA
    live = (alive & valid).astype(f32)
    v = valid.astype(f32)
    cols = [(tags[:, None] == jnp.arange(E)[None, :]).astype(f32) * v[:, None]]
    av = (avail[:, 2:] >= 1).astype(f32) * v[:MA, None]
    cols.append(jnp.concatenate([av, jnp.zeros((E - MA, n_actions - 2), f32)]))
    if type_bits:
        cols.append((kind[:, None] == jnp.arange(type_bits)[None, :]).astype(f32) * v[:, None])
    cols.append((health / jnp.where(valid, health_max, 1.0) * live)[:, None])
    if shields:
        sh = jnp.where(shield_max > 0, shield / jnp.where(shield_max > 0, shield_max, 1.0), 0.0)
        cols.append((sh * live)[:, None])
    agent_live = live * is_agent
    en = jnp.where(energy_max > 0, energy / jnp.where(energy_max > 0, energy_max, 1.0), 0.0)
    cd = cooldown / jnp.where(valid, max_cooldown, 1.0)
    cols += [(en * agent_live)[:, None], (cd * agent_live)[:, None]]
    n_valid = jnp.maximum(jnp.sum(v), 1.0)
    com_x, com_y = jnp.sum(x * v) / n_valid, jnp.sum(y * v) / n_valid
    spread = jnp.max(jnp.where(valid, jnp.hypot(x - com_x, y - com_y), 0.0))
    spread = jnp.where(spread > 0, spread, 1.0)
    cx, cy = map_xy[0] / 2, map_xy[1] / 2
    pos = jnp.stack([(x - cx) / playable[0], (y - cy) / playable[1], (x - com_x) / spread,
                     (y - com_y) / spread], 1)
    cols.append(pos * live[:, None])
    army_slot = army_of_slot(army, MA, E)
    enemy = (~is_agent & valid).astype(f32)
    cols.append(jnp.stack([army_attacking.astype(f32)[army_slot] * enemy,
                           army_since.astype(f32)[army_slot] / max_switch * enemy], 1))
    if prev_xy is None:
        cols.append(jnp.zeros((E, 2), f32))
    else:
        cols.append(jnp.stack([(x - prev_xy[0]) / move_amount,
                               (y - prev_xy[1]) / move_amount], 1) * v[:, None])
    return jnp.concatenate(cols, axis=1).astype(f32)


# ------------------------------------------------------------------- the army script (A.4)


def army_script_reset(first_countdown, n_armies) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(countdown, since, attacking) [T] at reset from draws [T] uniform in 0..19 (armies
    beyond n_armies are ignored): the minimum over the armies is subtracted, so at least
    one army switches to attack at once. Run `army_switch` once afterwards, as the original."""
    T_ = first_countdown.shape[0]
    exists = jnp.arange(T_) < n_armies
    low = jnp.min(jnp.where(exists, first_countdown, MAX_SWITCH))
    countdown = jnp.where(exists, first_countdown - low, 0).astype(jnp.int32)
    return countdown, jnp.zeros(T_, jnp.float32), jnp.zeros(T_, bool)


def army_switch(countdown, since, attacking, medivacs_only, n_armies, new_countdown
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The switch routine, run after every agent step (A.4): an army with only Medivacs left
    retreats for good (its time-since-switch reset to -20); an army whose countdown is 0
    toggles attack/retreat and takes a new countdown (`new_countdown` [T], uniform in
    11..20); then every countdown decrements and every time-since-switch increments.
    Armies beyond n_armies stay as they are."""
    T_ = countdown.shape[0]
    exists = jnp.arange(T_) < n_armies
    toggle = exists & ~medivacs_only & (countdown == 0)
    attacking = jnp.where(exists & medivacs_only, False,
                          jnp.where(toggle, ~attacking, attacking))
    countdown = jnp.where(toggle, new_countdown, countdown)
    since = jnp.where(exists & medivacs_only, -float(MAX_SWITCH),
                      jnp.where(toggle, -1.0, since))
    countdown = jnp.where(exists, countdown - 1, countdown)
    since = jnp.where(exists, since + 1.0, since)
    return countdown.astype(jnp.int32), since, attacking


# --------------------------------------------------------------- rewards and boost (A.6, A.7)
def battle_reward(enemy_damage, enemy_died, ally_damage, ally_died, death_value: float = 10.0,
                  only_positive: bool = True, negative_scale: float = 0.5) -> jax.Array:
    """() unscaled global shaped reward without the win bonus (the numpy `battle_reward`)."""
    reward = jnp.sum(enemy_damage) + death_value * jnp.sum(enemy_died)
    if not only_positive:
        reward = reward - negative_scale * (jnp.sum(ally_damage)
                                            + death_value * jnp.sum(ally_died))
    return reward


def boost_fraction(n_agents, n_enemies, n_armies, mult: float = 4.0) -> jax.Array:
    return mult * (n_enemies - n_agents) / (n_agents * jnp.maximum(n_armies - 1, 1))


def boost_recipients(x, y, alive, valid, codes, tasks_complete, spawn_points
                     ) -> jax.Array:
    """Agent arrays [MA] -> [MA] bool: living agents whose nearest army spawn point
    (`spawn_points` [T, 2], absent armies far away) is that of an army defeated this step
    (code +1, not complete before)."""
    d = jnp.hypot(x[:, None] - spawn_points[None, :, 0], y[:, None] - spawn_points[None, :, 1])
    near = jnp.argmin(d, axis=1)  # first on ties, as the numpy argmin
    newly = (codes == 1) & ~tasks_complete
    return alive & valid & newly[near]
