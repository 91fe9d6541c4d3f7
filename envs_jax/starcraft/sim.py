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
Protoss shields regenerate 2 per Normal second after 10 Normal seconds without damage.

Layout: `substep` and `advance` take one battle ([U] arrays, pos [U, 2]) or a batch with the
battle axis LAST ([U, E], pos [U, 2, E], commands alike): written that way, every
elementwise op and every sum over units runs with the E battles in the vector lanes, where
`jax.vmap` would put them first and leave lanes of U = 5-20 units. `to_batch_last` /
`to_batch_first` convert a vmapped (batch-first) state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.rng import hash_uniforms
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


@struct.dataclass
class Tables:
    """What a battle's unit types and teams fix for the whole battle: per unit [U] and per
    (acting unit, other unit) pair [U, U]. Static maps build it once with numpy, so XLA sees
    constants; `tables(units)` builds it from a traced state (compositions drawn per episode).
    """

    healer: jax.Array  # [U] bool
    max_health: jax.Array
    max_shield: jax.Array
    max_energy: jax.Array
    sight: jax.Array
    speed: jax.Array  # per game loop
    reload: jax.Array  # weapon cooldown, game loops
    heal: jax.Array  # hp per game loop
    can_act: jax.Array  # [U, U] bool: row can attack (a healer: heal) column
    to_shield: jax.Array  # [U, U] one volley of row on column's shields
    to_health: jax.Array  # [U, U] the same volley on health, after armour
    reach: jax.Array  # [U, U] weapon range plus both radii
    # Units whose attacks splash (static: numpy tables only) and their radius [S].
    splash_rows: tuple = struct.field(pytree_node=False, default=())
    splash_radius: jax.Array | None = None
    # True: every array already carries the trailing battle axes (one table per battle, for
    # compositions drawn per episode), so it is not broadcast
    batched: bool = struct.field(pytree_node=False, default=False)


def tables(utype, team) -> Tables:
    """`Tables` of unit types [U] and teams [U]: numpy in, numpy out (constants), else jnp."""
    xp = np if isinstance(utype, np.ndarray) and isinstance(team, np.ndarray) else jnp
    col = lambda a: xp.asarray(a)[utype]  # noqa: E731
    healer = col(ut.IS_HEALER)
    flying, attrs = col(ut.FLYING), col(ut.ATTRS)
    weapon = xp.where(flying[None, :], col(ut.HITS_AIR)[:, None], col(ut.HITS_GROUND)[:, None])
    same = team[:, None] == team[None, :]
    bio = (attrs & ut.BIOLOGICAL) > 0
    heals = healer[:, None] & bio[None, :] & same & ~xp.eye(len(utype), dtype=bool)
    can_act = xp.where(healer[:, None], heals, weapon & ~same)
    bonus_on = (attrs[None, :] & col(ut.BONUS_ATTR)[:, None]) > 0
    per_attack = col(ut.DAMAGE)[:, None] + xp.where(bonus_on, col(ut.BONUS)[:, None], 0.0)
    attacks = col(ut.ATTACKS)[:, None]
    armour = col(ut.ARMOUR)[None, :]
    radius = col(ut.RADIUS)
    f32 = lambda a: xp.asarray(a, xp.float32)  # noqa: E731
    return Tables(
        healer=healer, max_health=f32(col(ut.HEALTH)), max_shield=f32(col(ut.SHIELD)),
        max_energy=f32(col(ut.ENERGY_MAX)), sight=f32(col(ut.SIGHT)),
        speed=f32(col(ut.SPEED_PER_LOOP)), reload=f32(col(ut.COOLDOWN_LOOPS)),
        heal=f32(col(ut.HEAL_PER_LOOP)), can_act=can_act,
        to_shield=f32(attacks * per_attack),
        to_health=f32(attacks * xp.maximum(per_attack - armour, ut.MIN_DAMAGE)),
        reach=f32(col(ut.RANGE)[:, None] + radius[:, None] + radius[None, :]),
        # splash needs the splashing slots as static indices: known for static maps only
        splash_rows=(tuple(int(i) for i in np.nonzero(col(ut.SPLASH_RADIUS) > 0)[0])
                     if xp is np else ()),
        splash_radius=(f32(col(ut.SPLASH_RADIUS)[col(ut.SPLASH_RADIUS) > 0])
                       if xp is np else None),
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


def _toward(pos: jax.Array, goal: jax.Array, step: jax.Array, stop_at: jax.Array) -> jax.Array:
    """Move pos [U, 2, *B] toward goal by at most step [U, *B], ending no closer than
    stop_at."""
    d = goal - pos
    dist = jnp.sqrt(jnp.sum(d * d, 1))
    travel = jnp.clip(dist - stop_at, 0.0, step)
    unit = d / jnp.where(dist > 0, dist, 1.0)[:, None]
    return pos + unit * travel[:, None]


def _pick(mask: jax.Array, values: jax.Array) -> jax.Array:
    """Row-wise value of the (at most one) True column of mask [U, U, *B] (0 where none)."""
    return jnp.sum(jnp.where(mask, values, 0.0), axis=1)


def substep(units: Units, cmd: Commands, loops: float, bounds: tuple[float, float],
            noise: jax.Array | None = None, tb: Tables | None = None) -> Units:
    """Advance every unit by `loops` game loops under its command: one battle ([U] arrays)
    or several with the battle axis last ([U, *B]). `noise` [U, *B] in [-1, 2) is added to
    the cooldown of each attack fired (SC2 randomises weapon cooldowns; the range is
    SMAX's), so equal units do not fire in lockstep for the whole battle. `tb`: the battle's
    `Tables` of one battle ([U], [U, U]; built from `units` when omitted).

    Targets are one-hot rows of a [U, U] selection rather than indices: gathers and
    reductions to an index cost more than a few masked sums over U."""
    tb = tables(units.utype, units.team) if tb is None else tb
    n = units.utype.shape[0]
    nb = units.health.ndim - 1  # batch axes, trailing

    def ex(x):  # a one-battle table, broadcast over the trailing batch axes
        x = jnp.asarray(x)
        return x if tb.batched else x.reshape(x.shape + (1,) * nb)

    def ex_const(x):  # a constant of the battle's shape, never batched
        x = jnp.asarray(x)
        return x.reshape(x.shape + (1,) * nb)

    alive = units.alive
    px, py = units.pos[:, 0], units.pos[:, 1]
    dx, dy = px[:, None] - px[None, :], py[:, None] - py[None, :]
    dist = jnp.sqrt(dx * dx + dy * dy)  # [U, U, *B]
    live_pair = alive[:, None] & alive[None, :]
    ok = ex(tb.can_act) & live_pair
    # attack-move: the nearest usable unit in sight (a healer: a damaged one); the index
    # epsilon breaks exact ties toward the lower index, as an argmin would
    max_health = ex(tb.max_health)
    damaged = (units.health < max_health)[None, :]
    usable = ok & jnp.where(ex(tb.healer)[:, None], damaged, True)
    seen = usable & (dist <= ex(tb.sight)[:, None])
    ranked = jnp.where(seen, dist + ex_const(1e-6 * np.arange(n, dtype=np.float32))[None, :],
                       jnp.inf)
    acquired = seen & (ranked == jnp.min(ranked, axis=1, keepdims=True))
    ordered = ok & (cmd.target[:, None] == ex_const(np.arange(n))[None, :])
    sel = jnp.where((cmd.kind == ATTACK)[:, None], ordered,
                    (cmd.kind == ATTACK_MOVE)[:, None] & acquired)
    has_target = jnp.any(sel, axis=1)

    reach = _pick(sel, ex(tb.reach))
    d_t = _pick(sel, dist)
    in_range = has_target & (d_t <= reach)

    # Movement: to the target until in reach, else to the ordered point.
    t_pos = jnp.stack([_pick(sel, px[None, :]), _pick(sel, py[None, :])], 1)
    walk = alive & ((cmd.kind == MOVE) | ((cmd.kind == ATTACK_MOVE) & ~has_target))
    chase = has_target & ~in_range
    goal = jnp.where(chase[:, None], t_pos, cmd.point)
    # A chase ends a little inside reach: stopping exactly at it can leave the distance a
    # rounding error above reach for good.
    stop_at = jnp.where(chase, reach - CHASE_MARGIN, 0.0)
    moved = _toward(units.pos, goal, ex(tb.speed) * loops, stop_at)
    pos = jnp.where((walk | chase)[:, None], moved, units.pos)
    hi = np.asarray(bounds, np.float32).reshape((1, 2) + (1,) * nb)
    pos = jnp.clip(pos, 0.0, hi)

    # Attacks: weapon ready and in reach; all land at once.
    healer = ex(tb.healer)
    fires = in_range & ~healer & (units.cooldown <= 0.0)
    hit = sel & fires[:, None]
    if tb.splash_rows:  # every hittable opponent near a splashing unit's target is hit too
        rows = np.asarray(tb.splash_rows)
        s_sel = sel[rows].astype(dist.dtype)  # [S, U(target), *B]
        # distance from each splashing unit's target to every unit: [S, U, *B]
        from_target = jnp.sum(s_sel[:, :, None] * dist[None, :, :], axis=1)
        radius = tb.splash_radius.reshape((-1, 1) + (1,) * nb)
        splashed = (from_target <= radius) & ok[rows] & (fires[rows] & has_target[rows])[:, None]
        hit = hit.at[rows].set(splashed)
    shield_dmg = jnp.sum(jnp.where(hit, ex(tb.to_shield), 0.0), axis=0)
    health_dmg = jnp.sum(jnp.where(hit, ex(tb.to_health), 0.0), axis=0)
    absorbed = jnp.minimum(units.shield, shield_dmg)
    overflow = jnp.where(shield_dmg > 0,
                         1.0 - absorbed / jnp.where(shield_dmg > 0, shield_dmg, 1.0), 0.0)
    shield = units.shield - absorbed
    health = units.health - overflow * health_dmg

    # Healing: one energy per 3 hp.
    heals = in_range & healer
    heal_amt = jnp.where(heals, jnp.minimum(ex(tb.heal) * loops,
                                            units.energy * ut.HEAL_HP_PER_ENERGY), 0.0)
    healed = jnp.sum(jnp.where(sel, heal_amt[:, None], 0.0), axis=0)
    health = jnp.minimum(health + jnp.where(alive, healed, 0.0), max_health)
    energy = units.energy - heal_amt / ut.HEAL_HP_PER_ENERGY

    # Deaths, cooldowns, regeneration.
    alive = alive & (health > 0.0)
    since_hit = jnp.where(shield_dmg > 0, 0.0, units.since_hit + loops)
    regen = since_hit >= ut.SHIELD_DELAY * ut.LOOPS_PER_SECOND
    shield = jnp.where(regen, jnp.minimum(shield + ut.SHIELD_REGEN / ut.LOOPS_PER_SECOND * loops,
                                          ex(tb.max_shield)), shield)
    energy = jnp.minimum(energy + ut.ENERGY_REGEN / ut.LOOPS_PER_SECOND * loops,
                         ex(tb.max_energy))
    reload = ex(tb.reload) if noise is None else ex(tb.reload) + noise
    cooldown = jnp.maximum(jnp.where(fires, reload, units.cooldown) - loops, 0.0)
    dead = ~alive
    return units.replace(
        pos=pos, health=jnp.where(dead, 0.0, health), shield=jnp.where(dead, 0.0, shield),
        energy=jnp.where(dead, 0.0, energy), cooldown=jnp.where(dead, 0.0, cooldown),
        since_hit=since_hit, alive=alive,
    )


def cooldown_noise(key: jax.Array, n_substeps: int, n_units: int) -> jax.Array:
    """The cooldown variance of one battle's step: [n_substeps, U] uniform in [-1, 2), from
    one threefry draw expanded by the cheap hash of `envs_jax.rng`."""
    u = hash_uniforms(key, n_substeps * n_units).reshape(n_substeps, n_units)
    return 3.0 * u - 1.0


def advance(units: Units, cmd: Commands, n_substeps: int, bounds: tuple[float, float],
            noise: jax.Array | None = None, tb: Tables | None = None) -> Units:
    """One agent step (`STEP_LOOPS` game loops) as `n_substeps` sub-steps: one battle, or a
    batch with the battle axis last. `noise` [n_substeps, U, *B] (`cooldown_noise`), `tb`:
    see `substep`."""
    tb = tables(units.utype, units.team) if tb is None else tb
    loops = ut.STEP_LOOPS / n_substeps
    # A loop, not unrolled: unrolled sub-steps fuse into large fusions that recompute
    # shared values (measured 1.4x slower at 1,024 battles).
    if noise is None:
        return jax.lax.fori_loop(0, n_substeps,
                                 lambda _, u: substep(u, cmd, loops, bounds, None, tb), units)
    return jax.lax.fori_loop(0, n_substeps,
                             lambda i, u: substep(u, cmd, loops, bounds, noise[i], tb), units)


def default_chunk(n_units: int) -> int:
    """Battles simulated together by `advance_batch`: about 124k unit pairs per chunk (1,024
    battles of 11 units), which kept the sub-steps' [U, U, chunk] arrays in cache on the
    2-core EPYC (5m_vs_6m best at 1,024, MMM2 at 256 or less; 3m at 4,096 envs ran 670k
    env steps/s unchunked against 980k in chunks of 1,024)."""
    return int(np.clip(2 ** round(np.log2(1024 * 121 / (n_units * n_units))), 32, 1024))


def advance_batch(units: Units, cmd: Commands, n_substeps: int, bounds: tuple[float, float],
                  noise: jax.Array | None, tb: Tables | None, chunk: int) -> Units:
    """`advance` of E battles given battle-first ([E, ...], as vmapped code holds them),
    simulated battle-axis last in chunks of `chunk` battles. `noise` [E, n_substeps, U];
    `tb`: one battle's static `Tables` shared by all, or None for per-battle tables."""

    def simulate(units, cmd, noise):
        t = batched_tables(units.utype, units.team) if tb is None else tb
        noise = None if noise is None else jnp.moveaxis(noise, 0, -1)
        after = advance(to_batch_last(units), to_batch_last(cmd), n_substeps, bounds, noise, t)
        return to_batch_first(after)

    E = units.health.shape[0]
    if not (chunk and E > chunk and E % chunk == 0):
        return simulate(units, cmd, noise)
    cut = lambda x: x.reshape((E // chunk, chunk) + x.shape[1:])  # noqa: E731
    after = jax.lax.map(lambda a: simulate(*a), jax.tree.map(cut, (units, cmd, noise)))
    return jax.tree.map(lambda x: x.reshape((E,) + x.shape[2:]), after)


def batched_tables(utype: jax.Array, team: jax.Array) -> Tables:
    """`Tables` of E battles [E, U] with the battle axis last (`Tables.batched`)."""
    tb = jax.vmap(tables)(utype, team)
    return to_batch_last(tb).replace(batched=True)


def to_batch_last(tree):
    """A batch-first pytree [E, ...] -> battle axis last [..., E]."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), tree)


def to_batch_first(tree):
    return jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), tree)
