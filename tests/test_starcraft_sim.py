"""The pure-JAX StarCraft simulator and `starcraft_jax` maps on hand-built battles.

Every expected value is worked out by hand from the unit table (envs_jax/starcraft/units.py):
damage, armour and bonus, shields before health, cooldowns in game loops, reach, healing,
simultaneous deaths, SMAC's availability and reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.starcraft import sim
from envs_jax.starcraft import units as ut
from envs_jax.starcraft.smac_env import BattleState

T = ut.TYPE_ID
LOOP = ut.LOOPS_PER_SECOND
BOUNDS = (32.0, 32.0)


def battle(types, teams, xs, ys=None):
    ys = [16.0] * len(xs) if ys is None else ys
    return sim.spawn(jnp.array(np.stack([xs, ys], -1), jnp.float32),
                     jnp.array([T[n] for n in types]), jnp.array(teams),
                     jnp.ones(len(types), bool))


def attack(targets, n=None):
    """Unit i attacks unit targets[i] (None: holds)."""
    n = len(targets)
    kind = [sim.HOLD if t is None else sim.ATTACK for t in targets]
    return sim.Commands(kind=jnp.array(kind, jnp.int32),
                        target=jnp.array([0 if t is None else t for t in targets], jnp.int32),
                        point=jnp.zeros((n, 2), jnp.float32))


def run(units, cmd, loops, per=1.0):
    for _ in range(int(loops / per)):
        units = sim.substep(units, cmd, per, BOUNDS)
    return units


def test_bonus_damage_hits_shields_unreduced():
    u = battle(["marauder", "stalker"], [0, 1], [10.0, 13.0])
    u = run(u, attack([1, None]), 1)
    # 10 + 10 against armoured, all into the 80 shields; health untouched.
    assert float(u.shield[1]) == pytest.approx(60.0)
    assert float(u.health[1]) == pytest.approx(80.0)
    assert float(u.cooldown[0]) == pytest.approx(1.5 * LOOP - 1.0, rel=1e-5)


def test_shield_overflow_reaches_health_with_armour():
    u = battle(["marauder", "stalker"], [0, 1], [10.0, 13.0])
    u = u.replace(shield=u.shield.at[1].set(5.0))
    u = run(u, attack([1, None]), 1)
    # 5 of 20 absorbed; the other 3/4 of the armour-reduced 19 reach health.
    assert float(u.shield[1]) == 0.0
    assert float(u.health[1]) == pytest.approx(80.0 - 0.75 * 19.0)


def test_armour_per_attack_and_double_attacks():
    u = battle(["zealot", "marine"], [0, 1], [10.0, 10.9])
    u = run(u, attack([1, 0]), 1)
    assert float(u.health[1]) == pytest.approx(45.0 - 2 * 8.0)  # marine: armour 0
    assert float(u.shield[0]) == pytest.approx(50.0 - 6.0)  # zealot's shields: unreduced
    u = battle(["zealot", "marine"], [0, 1], [10.0, 10.9])
    u = u.replace(shield=u.shield.at[0].set(0.0))
    u = run(u, attack([None, 0]), 1)
    assert float(u.health[0]) == pytest.approx(100.0 - 5.0)  # 6 - armour 1


def test_cooldown_in_game_loops():
    u = battle(["marine", "marine"], [0, 1], [10.0, 13.0])
    one = run(u, attack([1, None]), 8)  # one SMAC step: one shot
    assert float(one.health[1]) == pytest.approx(39.0)
    two = run(u, attack([1, None]), 16)  # ready again after 13.78 loops: two shots
    assert float(two.health[1]) == pytest.approx(33.0)
    eleven = run(u, attack([1, None]), 8 * 11)  # shots at loops 0, 14, 28, ...: 7 in 88
    assert float(eleven.health[1]) == pytest.approx(45.0 - 7 * 6.0)


def test_out_of_reach_target_is_chased_then_shot():
    u = battle(["marine", "marine"], [0, 1], [10.0, 20.0])
    cmd = attack([1, None])
    a = run(u, cmd, 8)
    step = 2.25 / LOOP * 8
    assert float(a.pos[0, 0]) == pytest.approx(10.0 + step, rel=1e-5)
    assert float(a.health[1]) == 45.0
    reach = 5.0 + 2 * 0.375
    b = run(u, cmd, 8 * 6)
    # stops just inside reach
    assert float(b.pos[0, 0]) == pytest.approx(20.0 - reach + sim.CHASE_MARGIN, abs=1e-4)
    assert float(b.health[1]) < 45.0


def test_medivac_heals_and_spends_energy():
    u = battle(["medivac", "marine"], [0, 0], [10.0, 11.0])
    u = u.replace(health=u.health.at[1].set(20.0))
    u = run(u, attack([1, None]), 8)
    assert float(u.health[1]) == pytest.approx(20.0 + 9.0 / LOOP * 8, rel=1e-5)
    spent = 9.0 / LOOP * 8 / 3.0
    assert float(u.energy[0]) == pytest.approx(50.0 - spent + 0.5625 / LOOP * 8, rel=1e-5)


def test_ground_weapons_cannot_hit_air():
    u = battle(["marauder", "medivac", "marine"], [0, 1, 0], [10.0, 12.0, 10.0], [16, 16, 17])
    u = run(u, attack([1, None, 1]), 8)
    assert float(u.health[1]) == pytest.approx(150.0 - 5.0)  # the marine's shot only


def test_simultaneous_kills_and_dead_units_do_nothing():
    u = battle(["marine", "marine"], [0, 1], [10.0, 13.0])
    u = u.replace(health=jnp.array([4.0, 4.0]))
    u = run(u, attack([1, 0]), 1)
    assert not bool(u.alive[0]) and not bool(u.alive[1])
    assert float(u.health[0]) == 0.0 and float(u.health[1]) == 0.0
    v = battle(["marine", "marine", "marine"], [0, 1, 1], [10.0, 13.0, 13.0], [16, 16, 17])
    v = v.replace(alive=v.alive.at[1].set(False), health=v.health.at[1].set(0.0))
    v = run(v, attack([None, 0, None]), 8)  # a dead unit's order is ignored
    assert float(v.health[0]) == 45.0


def test_shields_regenerate_only_after_the_delay():
    u = battle(["stalker"], [1], [10.0])
    u = u.replace(shield=jnp.array([10.0]))
    r = run(u, attack([None]), 8)
    assert float(r.shield[0]) == pytest.approx(10.0 + 2.0 / LOOP * 8, rel=1e-5)
    hit = u.replace(since_hit=jnp.array([0.0]))
    r = run(hit, attack([None]), 8)
    assert float(r.shield[0]) == 10.0


def test_attack_move_fights_the_nearest_and_walks_otherwise():
    u = battle(["marine", "marine", "marine"], [1, 0, 0], [10.0, 14.0, 17.0])
    cmd = sim.Commands(kind=jnp.array([sim.ATTACK_MOVE, sim.HOLD, sim.HOLD]),
                       target=jnp.zeros(3, jnp.int32),
                       point=jnp.array([[30.0, 16.0]] * 3))
    r = run(u, cmd, 1)
    assert float(r.health[1]) == 39.0 and float(r.health[2]) == 45.0
    assert float(r.pos[0, 0]) == 10.0  # in reach: fires, does not walk
    far = battle(["marine", "marine"], [1, 0], [2.0, 30.0])
    r = run(far, cmd.replace(kind=cmd.kind[:2], target=cmd.target[:2], point=cmd.point[:2]),
            8)
    assert float(r.pos[0, 0]) == pytest.approx(2.0 + 2.25 / LOOP * 8, rel=1e-5)


# --------------------------------------------------------------------------- the env

def state_of(env, units):
    return BattleState(units=units, t=jnp.zeros((), jnp.int32), over=jnp.bool_(False))


def test_availability_as_smac():
    env = envs_jax.make("starcraft_jax", map_name="3m")
    _, s = env.reset(jax.random.PRNGKey(0))
    pos = jnp.array([[0.5, 16.0], [10.0, 16.0], [10.0, 20.0],
                     [15.9, 16.0], [17.0, 16.0], [10.0, 26.5]])
    u = s.units.replace(pos=pos, alive=s.units.alive.at[2].set(False))
    av = np.asarray(env.avail_actions(state_of(env, u)))
    # agent 0: alive, west edge (x - 1 < 0); enemies at 14.4 and more: none in range 6
    assert av[0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0]
    # agent 1: enemy 0 at 5.9 in range, enemy 1 at 7 not, enemy 2 at 10.5 not
    assert av[1].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert av[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]  # dead: no-op only


def test_medivac_heal_targets_exclude_medivacs():
    env = envs_jax.make("starcraft_jax", map_name="MMM")
    _, s = env.reset(jax.random.PRNGKey(1))
    av = np.asarray(env.avail_actions(s))
    medivac = [i for i in range(env.n_agents) if env.utype[i] == T["medivac"]][0]
    heal = av[medivac, 6:6 + env.n_agents]
    # the spawn clump is within 6 of the Medivac: every ally but itself can be healed
    expected = [0 if env.utype[j] == T["medivac"] else 1 for j in range(env.n_agents)]
    assert heal.tolist() == expected
    assert not av[medivac, 6 + env.n_agents:].any()


def test_reward_for_a_kill_and_the_win():
    env = envs_jax.make("starcraft_jax", map_name="3m")
    _, s = env.reset(jax.random.PRNGKey(0))
    pos = jnp.array([[10.0, 16.0], [10.0, 14.0], [10.0, 18.0],
                     [13.0, 16.0], [30.0, 2.0], [30.0, 30.0]])
    # enemies 1, 2 already dead; enemy 0 at 5 hp: one agent shot kills it and wins.
    u = s.units.replace(pos=pos, health=s.units.health.at[3:].set(jnp.array([5.0, 0, 0])),
                        alive=s.units.alive.at[4:].set(False))
    st = state_of(env, u)
    _, new, r, done, info = env.step_env(jax.random.PRNGKey(0), st, jnp.array([6, 1, 1]))
    expected = (5.0 + 10.0 + 200.0) * 20.0 / (3 * 10 + 200 + 3 * 45)
    assert float(r) == pytest.approx(expected, rel=1e-6)
    assert bool(done) and bool(info["battle_won"]) and not bool(info["truncated"])
    assert int(info["dead_enemies"]) == 3 and int(info["dead_allies"]) == 0
    # a finished battle stays finished and pays nothing
    _, _, r2, _, _ = env.step_env(jax.random.PRNGKey(0), new, jnp.array([1, 1, 1]))
    assert float(r2) == 0.0


def test_timeout_is_a_truncation():
    env = envs_jax.make("starcraft_jax", map_name="3m", episode_limit=2)
    obs, s = env.reset(jax.random.PRNGKey(0))
    stop = jnp.ones(3, jnp.int32)
    _, s, _, d1, _ = env.step_env(jax.random.PRNGKey(0), s, stop)
    _, s, _, d2, info = env.step_env(jax.random.PRNGKey(0), s, stop)
    assert not bool(d1) and bool(d2)
    assert bool(info["truncated"]) and not bool(info["episode_limit"])
    env2 = envs_jax.make("starcraft_jax", map_name="3m", episode_limit=1,
                         timeout_as_episode_limit=True)
    _, s = env2.reset(jax.random.PRNGKey(0))
    assert bool(env2.step_env(jax.random.PRNGKey(0), s, stop)[4]["episode_limit"])


def test_observation_layout_and_masks():
    env = envs_jax.make("starcraft_jax", map_name="2s3z")
    obs, s = env.reset(jax.random.PRNGKey(3))
    e = np.asarray(obs.entities)
    A = env.n_agents
    assert e.shape == (10, 7 + 2 + 11)
    assert (e[:A, 0] == 1).all() and (e[A:, 1] == 1).all()
    assert np.allclose(e[:, 2], 1.0) and np.allclose(e[:, 3], 1.0)  # full health, shields
    stalker = env.type_names.index("stalker")
    assert e[0, 7 + stalker] == 1 and e[2, 7 + stalker] == 0  # 2 stalkers, then zealots
    assert np.array_equal(e[:A, 9:], np.asarray(obs.avail_actions))
    assert not e[A:, 9:].any()
    m = np.asarray(obs.obs_mask)
    assert not m[A:].any()  # enemy rows see all
    # teams start 16 apart: agents see each other, not the enemies
    assert not m[:A, :A].any() and m[:A, A:].all()


@pytest.mark.slow  # eager simulator steps; the batched step is checked against vmap in CI
def test_jit_equals_eager_and_vmap_equals_loop():
    env = envs_jax.make("starcraft_jax", map_name="MMM2")
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    obs, s = jax.vmap(env.reset)(keys)
    acts = jax.random.randint(jax.random.PRNGKey(6), (3, env.n_agents), 0, env.n_actions)
    out_v = jax.jit(jax.vmap(env.step_env))(keys, s, acts)
    for i in range(3):
        si = jax.tree.map(lambda x, i=i: x[i], s)
        with jax.disable_jit():
            out_e = env.step_env(keys[i], si, acts[i])
        for a, b in zip(jax.tree.leaves(out_e), jax.tree.leaves(jax.tree.map(
                lambda x, i=i: x[i], out_v))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_unknown_map_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed.*3m"):
        envs_jax.make("starcraft_jax", map_name="4m")


# ------------------------------------------------------------- battles a person would check
def _rates(map_name, fn, n=512):
    env = envs_jax.make("starcraft_jax", map_name=map_name)
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    return jax.jit(jax.vmap(lambda k: fn(env, k)))(keys)


def test_symmetric_scripted_battle_is_a_coin_flip():
    from envs_jax.starcraft.scripted import attack_move_battle

    agents, enemies = (np.asarray(x) for x in _rates("3m", attack_move_battle))
    assert 0.40 <= agents.mean() <= 0.60 and 0.40 <= enemies.mean() <= 0.60
    assert (agents | enemies).mean() >= 0.95  # battles end; draws are rare


def test_five_marines_lose_to_six():
    from envs_jax.starcraft.scripted import attack_move_battle

    agents, enemies = (np.asarray(x) for x in _rates("5m_vs_6m", attack_move_battle))
    assert agents.mean() < 0.1 and enemies.mean() > 0.9


@pytest.mark.parametrize("map_name", ["3m", "2s3z"])
def test_focus_fire_beats_spread_fire(map_name):
    from envs_jax.starcraft.scripted import focus_fire, play, spread_fire

    focus = _rates(map_name, lambda env, k: play(env, focus_fire, k), 256)
    spread = _rates(map_name, lambda env, k: play(env, spread_fire, k), 256)
    assert float(focus["battle_won"].mean()) > float(spread["battle_won"].mean()) + 0.3
    assert float(focus["return"].mean()) > float(spread["return"].mean())


@pytest.mark.parametrize("map_name", ["MMM2", "2s3z", "1c3s5z"])
def test_batch_written_step_equals_vmapped_step(map_name):
    """`step_batch` (battle axis last) is `vmap(step_env)` for 40 steps."""
    from starcraft_helpers import assert_batch_step_equals_vmap

    assert_batch_step_equals_vmap(envs_jax.make("starcraft_jax", map_name=map_name), 16, 40, 2)


def test_colossus_splash_hits_opponents_near_its_target_only():
    names = ["colossus", "zergling", "zergling", "zergling", "zergling", "medivac"]
    teams = [0, 1, 1, 1, 0, 1]
    xs = [10.0, 16.0, 16.8, 17.5, 16.5, 16.2]
    u = battle(names, teams, xs)
    tb = sim.tables(np.array([T[n] for n in names]), np.array(teams))
    cmd = attack([1, None, None, None, None, None])
    r = u
    for _ in range(8):
        r = sim.substep(r, cmd, 1.0, BOUNDS, None, tb)
    volley = 2 * (10.0 + 5.0)  # +5 against light, zerglings have no armour
    assert float(r.health[1]) == pytest.approx(35.0 - volley)  # the target
    assert float(r.health[2]) == pytest.approx(35.0 - volley)  # 0.8 away: splashed
    assert float(r.health[3]) == 35.0  # 1.5 away: outside the 1.0 disc
    assert float(r.health[4]) == 35.0  # own zergling: no friendly fire
    assert float(r.health[5]) == 150.0  # flying: ground-only lances miss it
    # without static tables (types drawn per episode) there is no splash: the target only
    r = sim.substep(u, cmd, 1.0, BOUNDS)
    assert float(r.health[2]) == 35.0 and float(r.health[1]) == pytest.approx(35.0 - volley)


def test_compiles_once_at_1024_envs():
    """1,024 battles step under one compilation: the jitted step is traced once for every
    call (auto-reset included), and battles end and restart within the run."""
    env = envs_jax.make("starcraft_jax", map_name="3m", episode_limit=10)
    traces = []

    def step(keys, state, actions):
        traces.append(1)  # runs only while tracing
        return env.step_autoreset_batch(keys, state, actions)

    step = jax.jit(step)
    E = 1024
    obs, s = env.reset_batch(jax.random.split(jax.random.PRNGKey(0), E))
    from envs_jax.savethecity.policies import uniform_valid

    done_total = 0
    for t in range(12):
        k = jax.random.PRNGKey(t)
        obs, s, r, done, info = step(jax.random.split(k, E), s, uniform_valid(k, obs))
        done_total += int(np.sum(np.asarray(done)))
    assert len(traces) == 1
    assert done_total >= E  # every battle ended at least once (limit 10) and restarted
    assert int(np.max(np.asarray(s.t))) <= 10
