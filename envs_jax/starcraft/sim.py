"""A small StarCraft II battle simulator in pure JAX: continuous 2-D positions, no terrain.

A battle is a fixed set of U unit slots (`Units`, arrays [U, ...]); a slot with
`valid=False` is padding and never acts or is acted on. Every unit gets one `Commands`
entry per agent step, and `advance` runs the step as `n_substeps` simulation sub-steps of
`STEP_LOOPS / n_substeps` game loops, like SMAC's 8 game loops per step.

Orders (`Commands.kind`):
- HOLD: stand still, never fire (SMAC's no-op and stop for agents: the agents' units, like
  ALMA's "RL" unit variants, fire only when ordered to);
- MOVE: move toward `point`, stop there;
- ATTACK: attack (a healer: heal) unit `target`: approach it to weapon range, fire whenever
  the weapon is ready. An order on a dead, padded or unhittable unit does nothing;
- ATTACK_MOVE: SC2's attack-move toward `point`: the nearest hittable opponent within sight
  is attacked (a healer heals the nearest damaged biological ally within sight); with none,
  the unit walks on.

Damage: each attack does `damage + bonus` (bonus against its attribute); against health an
attack is reduced by armour to at least 0.5; shields take the attack unreduced first and
the share of the damage they cannot absorb reaches health with armour. All attacks of a
sub-step land together (simultaneous resolution: two units can kill each other).
Protoss shields regenerate 2/s after 7 s without damage; Medivac energy 0.7875/s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.starcraft import units as ut

HOLD, MOVE, ATTACK, ATTACK_MOVE = 0, 1, 2, 3
CHASE_MARGIN = 0.01


@struct.dataclass
class Units:
    """State of U unit slots of one battle: team 0 = the agents, 1 = the opponents."""

    pos: jax.Array  # [U, 2] float
    health: jax.Array  # [U]
    shield: jax.Array  # [U]
    energy: jax.Array  # [U]
    cooldown: jax.Array  # [U] game loops until the weapon is ready
    since_hit: jax.Array  # [U] game loops since the unit last took damage
    alive: jax.Array  # [U] bool
    utype: jax.Array  # [U] int32, index into units.UNIT_NAMES
    team: jax.Array  # [U] int32
    valid: jax.Array  # [U] bool


@struct.dataclass
class Commands:
    kind: jax.Array  # [U] int32
    target: jax.Array  # [U] int32 (ATTACK)
    point: jax.Array  # [U, 2] float (MOVE, ATTACK_MOVE)


def spawn(pos: jax.Array, utype: jax.Array, team: jax.Array, valid: jax.Array) -> Units:
    """Units at full health, shields and starting energy, weapons ready."""
    t = jnp.asarray
    utype = t(utype, jnp.int32)
    valid = t(valid, bool)
    z = jnp.zeros(utype.shape, jnp.float32)
    return Units(
        pos=t(pos, jnp.float32), health=jnp.where(valid, t(ut.HEALTH)[utype], 0.0),
        shield=jnp.where(valid, t(ut.SHIELD)[utype], 0.0),
        energy=jnp.where(valid, t(ut.ENERGY_START)[utype], 0.0), cooldown=z,
        since_hit=z + 1e6, alive=valid, utype=utype, team=t(team, jnp.int32), valid=valid,
    )


def fighting(units: Units) -> jax.Array:
    """[U] bool: living units that are not healers (SMAC: a side with only Medivacs left has
    lost)."""
    return units.alive & ~jnp.asarray(ut.IS_HEALER)[units.utype]


def hold(n_units: int) -> Commands:
    return Commands(kind=jnp.zeros((n_units,), jnp.int32),
                    target=jnp.zeros((n_units,), jnp.int32),
                    point=jnp.zeros((n_units, 2), jnp.float32))


def distances(pos: jax.Array) -> jax.Array:
    """[U, U] centre-to-centre distances."""
    d = pos[:, None, :] - pos[None, :, :]
    return jnp.sqrt(jnp.sum(d * d, -1))


def can_hit(units: Units) -> jax.Array:
    """[U, U] bool: row's weapon can attack column (opponent, alive, ground/air matches)."""
    t = units.utype
    flying = jnp.asarray(ut.FLYING)[t]
    weapon = jnp.where(flying[None, :], jnp.asarray(ut.HITS_AIR)[t][:, None],
                       jnp.asarray(ut.HITS_GROUND)[t][:, None])
    opp = units.team[:, None] != units.team[None, :]
    return weapon & opp & units.alive[None, :] & units.alive[:, None]


def can_heal(units: Units) -> jax.Array:
    """[U, U] bool: row is a healer and column a living biological ally other than itself."""
    t = units.utype
    healer = jnp.asarray(ut.IS_HEALER)[t]
    bio = (jnp.asarray(ut.ATTRS)[t] & ut.BIOLOGICAL) > 0
    same = units.team[:, None] == units.team[None, :]
    n = t.shape[0]
    return (healer[:, None] & bio[None, :] & same & ~jnp.eye(n, dtype=bool)
            & units.alive[None, :] & units.alive[:, None])


def _toward(pos: jax.Array, goal: jax.Array, step: jax.Array, stop_at: jax.Array) -> jax.Array:
    """Move pos [U,2] toward goal by at most step, ending no closer than stop_at."""
    d = goal - pos
    dist = jnp.sqrt(jnp.sum(d * d, -1))
    travel = jnp.clip(dist - stop_at, 0.0, step)
    unit = d / jnp.where(dist > 0, dist, 1.0)[:, None]
    return pos + unit * travel[:, None]


def substep(units: Units, cmd: Commands, loops: float, bounds: tuple[float, float],
            key: jax.Array | None = None) -> Units:
    """Advance every unit by `loops` game loops under its command. With a `key`, each attack's
    cooldown varies by U(-1, 2) game loops (SC2 randomises weapon cooldowns; the range is
    SMAX's), so equal units do not fire in lockstep for the whole battle."""
    t = units.utype
    n = t.shape[0]
    idx = jnp.arange(n)
    dist = distances(units.pos)
    hit_ok = can_hit(units)
    heal_ok = can_heal(units)
    healer = jnp.asarray(ut.IS_HEALER)[t]
    max_health = jnp.asarray(ut.HEALTH)[t]

    # Who each unit acts on this sub-step (-1: nobody).
    usable = jnp.where(healer[:, None], heal_ok & (units.health < max_health)[None, :], hit_ok)
    sight = jnp.asarray(ut.SIGHT)[t]
    seen = usable & (dist <= sight[:, None])
    nearest = jnp.argmin(jnp.where(seen, dist, jnp.inf), axis=1)
    acquired = jnp.where(jnp.any(seen, 1), nearest, -1)
    ordered_ok = jnp.where(healer[:, None], heal_ok, hit_ok)[idx, cmd.target]
    target = jnp.where(cmd.kind == ATTACK, jnp.where(ordered_ok, cmd.target, -1),
                       jnp.where(cmd.kind == ATTACK_MOVE, acquired, -1))
    target = jnp.where(units.alive, target, -1)
    has_target = target >= 0
    tgt = jnp.maximum(target, 0)

    # Reach: weapon (heal) range plus both radii.
    radius = jnp.asarray(ut.RADIUS)[t]
    reach = jnp.asarray(ut.RANGE)[t] + radius + radius[tgt]
    d_t = dist[idx, tgt]
    in_range = has_target & (d_t <= reach)

    # Movement: to the target until in reach, else to the ordered point.
    speed = jnp.asarray(ut.SPEED_PER_LOOP)[t] * loops
    walk = units.alive & ((cmd.kind == MOVE) | ((cmd.kind == ATTACK_MOVE) & ~has_target))
    chase = has_target & ~in_range
    goal = jnp.where(chase[:, None], units.pos[tgt], cmd.point)
    # A chase ends a little inside reach: stopping exactly at it can leave the distance a
    # rounding error above reach for good.
    stop_at = jnp.where(chase, reach - CHASE_MARGIN, 0.0)
    moved = _toward(units.pos, goal, speed, stop_at)
    pos = jnp.where((walk | chase)[:, None], moved, units.pos)
    pos = jnp.clip(pos, 0.0, jnp.asarray(bounds, jnp.float32))

    # Attacks: weapon ready and in reach; all land at once.
    fires = in_range & ~healer & (units.cooldown <= 0.0)
    bonus_on = (jnp.asarray(ut.ATTRS)[t][tgt] & jnp.asarray(ut.BONUS_ATTR)[t]) > 0
    per_attack = jnp.asarray(ut.DAMAGE)[t] + jnp.where(bonus_on, jnp.asarray(ut.BONUS)[t], 0.0)
    n_attacks = jnp.asarray(ut.ATTACKS)[t]
    armour = jnp.asarray(ut.ARMOUR)[t][tgt]
    to_shield = jnp.where(fires, n_attacks * per_attack, 0.0)
    to_health = jnp.where(fires, n_attacks * jnp.maximum(per_attack - armour, ut.MIN_DAMAGE),
                          0.0)
    onto = (tgt[:, None] == idx[None, :]) & has_target[:, None]  # [attacker, target]
    shield_dmg = jnp.sum(jnp.where(onto, to_shield[:, None], 0.0), 0)
    health_dmg = jnp.sum(jnp.where(onto, to_health[:, None], 0.0), 0)
    absorbed = jnp.minimum(units.shield, shield_dmg)
    overflow = jnp.where(shield_dmg > 0, 1.0 - absorbed / jnp.where(shield_dmg > 0, shield_dmg,
                                                                     1.0), 0.0)
    shield = units.shield - absorbed
    health = units.health - overflow * health_dmg

    # Healing: one energy per 3 hp.
    heals = in_range & healer
    heal_amt = jnp.minimum(jnp.asarray(ut.HEAL_PER_LOOP)[t] * loops,
                           units.energy * ut.HEAL_HP_PER_ENERGY)
    heal_amt = jnp.where(heals, heal_amt, 0.0)
    healed = jnp.sum(jnp.where(onto, heal_amt[:, None], 0.0), 0)
    health = jnp.minimum(health + jnp.where(units.alive, healed, 0.0), max_health)
    energy = units.energy - heal_amt / ut.HEAL_HP_PER_ENERGY

    # Deaths, cooldowns, regeneration.
    alive = units.alive & (health > 0.0)
    damaged = shield_dmg > 0
    since_hit = jnp.where(damaged, 0.0, units.since_hit + loops)
    regen = since_hit >= ut.SHIELD_DELAY * ut.LOOPS_PER_SECOND
    shield = jnp.where(regen, jnp.minimum(shield + ut.SHIELD_REGEN / ut.LOOPS_PER_SECOND * loops,
                                          jnp.asarray(ut.SHIELD)[t]), shield)
    energy = jnp.minimum(energy + ut.ENERGY_REGEN / ut.LOOPS_PER_SECOND * loops,
                         jnp.asarray(ut.ENERGY_MAX)[t])
    reload = jnp.asarray(ut.COOLDOWN_LOOPS)[t]
    if key is not None:
        reload = reload + jax.random.uniform(key, reload.shape, minval=-1.0, maxval=2.0)
    cooldown = jnp.where(fires, reload, units.cooldown) - loops
    cooldown = jnp.maximum(cooldown, 0.0)
    dead = ~alive
    return units.replace(
        pos=pos, health=jnp.where(dead, 0.0, health), shield=jnp.where(dead, 0.0, shield),
        energy=jnp.where(dead, 0.0, energy), cooldown=jnp.where(dead, 0.0, cooldown),
        since_hit=since_hit, alive=alive,
    )


def advance(units: Units, cmd: Commands, n_substeps: int, bounds: tuple[float, float],
            key: jax.Array | None = None) -> Units:
    """One agent step (`STEP_LOOPS` game loops) as `n_substeps` sub-steps (`key`: cooldown
    variance, see `substep`)."""
    loops = ut.STEP_LOOPS / n_substeps
    keys = [None] * n_substeps if key is None else list(jax.random.split(key, n_substeps))
    for k in keys:  # a handful: unrolled, so XLA fuses across sub-steps
        units = substep(units, cmd, loops, bounds, k)
    return units
