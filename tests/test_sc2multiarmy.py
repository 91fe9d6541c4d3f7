"""ALMA's multi-army StarCraft setting (shared/specs/starcraft.md part A) without StarCraft.

The game-independent rules are checked on hand-built unit snapshots; the env runs end to end
over a tiny battle simulator backend (tests/fake_sc2.py), in process, through the bridge
(2 workers, jit + scan rollout) and in one tiny trainer run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from fake_sc2 import STATS, FakeSC2Backend

import envs_jax
from alma_jax.avail import parse_avail
from envs_jax.bridge import SC2MULTIARMY_SIZES, MissingDependencyError
from envs_jax.bridge import sc2multiarmy as sc
from envs_jax.bridge import sc2multiarmy_rules as R
from envs_jax.bridge.host_sc2multiarmy import (
    ATTACK,
    MOVE,
    STOP,
    BackendError,
    HostSC2MultiArmy,
    Snapshot,
)
from envs_jax.bridge.smac import smac_install_problems

HERE = Path(__file__).resolve().parent
FAKE = f"{HERE / 'fake_sc2.py'}:FakeSC2Backend"
SZ, SZ_DIS, MMM, MMM_DIS = sc.SCENARIOS

# spec A.2 table: max agents, max enemies, entities, n_actions, entity dim, compositions
SPEC_A2 = {SZ: (8, 8, 16, 14, 42, 39), SZ_DIS: (8, 9, 17, 15, 44, 39),
           MMM: (8, 8, 16, 22, 50, 66), MMM_DIS: (8, 9, 17, 23, 52, 66)}
SIZE_COUNTS = {"sz": {3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9},
               "MMM": {3: 4, 4: 9, 5: 15, 6: 18, 7: 13, 8: 7}}
MAX_REWARD = {SZ: 1550.0, SZ_DIS: 1720.0, MMM: 930.0, MMM_DIS: 985.0}  # spec A.6 (derived)


# ----------------------------------------------------------------------------- A.2 sizes
@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_family_sizes_match_spec(name):
    fam = sc.make_family(name)
    na, ne, E, nact, dim, n_comp = SPEC_A2[name]
    assert (fam.max_agents, fam.max_enemies, fam.n_entities, fam.n_actions,
            fam.entity_dim, len(fam.compositions)) == (na, ne, E, nact, dim, n_comp)
    assert fam.sizes() == SC2MULTIARMY_SIZES[name]
    key = "sz" if "sz" in name else "MMM"
    assert Counter(sc.team_size(a) for a, _ in fam.compositions) == SIZE_COUNTS[key]
    if key == "sz":
        assert fam.type_names == ("Zealot", "Stalker") and fam.shields
    else:
        assert fam.type_names == ("Marine", "Marauder", "Medivac") and not fam.shields
    for allies, enemies in fam.compositions:
        extra = Counter(dict(enemies)) - Counter(dict(allies))
        if name.endswith("symmetric"):
            assert allies == enemies
        else:  # one extra Stalker/Zealot (S&Z) or Marine/Marauder (MMM)
            assert sum(extra.values()) == 1 and set(extra) <= ({"Stalker", "Zealot"} if key ==
                                                               "sz" else {"Marine", "Marauder"})
            assert sc.team_size(enemies) == sc.team_size(allies) + 1
    # the reward normaliser from the largest composition's enemies (standard unit stats)
    enemies = [u for u, n in fam.largest[1] for _ in range(n)]
    hmax = np.array([STATS[u][0] for u in enemies])
    smax = np.array([STATS[u][1] for u in enemies])
    assert R.max_reward(hmax, smax, R.RewardParams()) == MAX_REWARD[name]
    # 6-8 keeps the padding of the released 3-8 and only the bigger teams
    big = sc.make_family(name, (6, 8))
    assert big.sizes() == fam.sizes()
    assert len(big.compositions) == sum(v for k, v in SIZE_COUNTS[key].items() if k >= 6)
    assert big.compositions == tuple(c for c in fam.compositions if sc.team_size(c[0]) >= 6)
    info = HostSC2MultiArmy(name, backend=FAKE).get_env_info()
    assert (info["n_agents"], info["n_entities"], info["n_actions"], info["entity_shape"],
            info["n_tasks"], info["episode_limit"]) == (na, E, nact, dim, 3, 150)


def test_disadvantage_extras_are_fixed_and_bad_sizes_rejected():
    a, b = sc.make_family(SZ_DIS), sc.make_family(SZ_DIS)
    assert a.compositions == b.compositions  # RandomState(0): deterministic list
    assert a.largest == ((("Stalker", 7), ("Zealot", 1)), (("Stalker", 8), ("Zealot", 1)))
    with pytest.raises(ValueError, match="team_sizes"):
        sc.make_family(SZ, (2, 8))
    with pytest.raises(ValueError, match="unknown sc2multiarmy scenario"):
        sc.make_family("3m")


# ------------------------------------------------------------------------- A.3 generation
def test_generation_is_seeded_and_in_range():
    fam = sc.make_family(MMM_DIS)
    p1 = sc.plan_episode(fam, np.random.default_rng(5))
    p2 = sc.plan_episode(fam, np.random.default_rng(5))
    assert dataclasses.asdict(p1).keys() == dataclasses.asdict(p2).keys()
    assert p1.index == p2.index and p1.army_units == p2.army_units
    np.testing.assert_array_equal(p1.army_positions, p2.army_positions)
    rng = np.random.default_rng(0)
    seen_armies: dict[int, set] = {}
    for _ in range(400):
        p = sc.plan_episode(fam, rng)
        n_e = sc.team_size(p.enemies)
        assert 2 <= p.n_armies <= 3 and p.n_armies >= math.ceil(n_e / 4)
        if n_e == 9:
            assert p.n_armies == 3
        seen_armies.setdefault(n_e, set()).add(p.n_armies)
        assert sum(p.army_sizes) == n_e and all(1 <= s <= 4 for s in p.army_sizes)
        assert [len(u) for u in p.army_units] == p.army_sizes
        assert Counter(u for units in p.army_units for u in units) == Counter(dict(p.enemies))
        r = np.hypot(*p.army_positions.T)
        np.testing.assert_allclose(r, 14.0)
        angles = np.arctan2(p.army_positions[:, 1], p.army_positions[:, 0])
        steps = np.mod(np.diff(angles), 2 * np.pi)
        np.testing.assert_allclose(steps, 2 * np.pi / p.n_armies, atol=1e-9)
        assert set(p.ally_offsets) == {u for u, _ in p.allies}
        assert all(np.all(np.abs(o) <= 1.0) for o in p.ally_offsets.values())
        assert p.spread == 1.0
    assert seen_armies[5] == {2, 3} and seen_armies[9] == {3}  # uniform over the range
    first = sc.plan_episode(fam, rng, first=True)
    assert (first.allies, first.enemies) == fam.largest
    assert sc.plan_episode(fam, rng, index=7).allies == fam.compositions[7][0]
    for _ in range(20):
        p = sc.plan_episode(fam, rng, n_tasks=2)
        assert p.n_armies == 2 and sc.army_count_range(sc.team_size(p.enemies))[0] <= 2
    p = sc.plan_episode(fam, rng, spread_armies=False)
    assert 0.0 <= p.spread < 1.0


def test_reset_orders_units_and_assigns_armies_and_tags():
    env = HostSC2MultiArmy(MMM, backend=FakeSC2Backend)
    env.reset(seed=3)
    assert env.max_reward == MAX_REWARD[MMM]  # the first episode: the largest composition
    for seed in (4, 5, 6):
        env.reset(seed=seed)
        u, na = env.units, env.units.n_agents
        fake = env.backend
        types = [fake.units[int(uid)]["unit_type"] for uid in env.uids]
        keys = [(types[k], u.x[k], u.y[k]) for k in range(u.n)]
        assert keys[:na] == sorted(keys[:na]) and keys[na:] == sorted(keys[na:])
        assert all(t >= 1900 for t in types[:na]) and all(t < 100 for t in types[na:])
        assert sorted(env.enemy_tags) == sorted(set(env.enemy_tags))
        assert np.all(env.enemy_tags < 8) and np.all((env.ally_tags >= 8) & (env.ally_tags < 16))
        d = np.hypot(u.x[na:, None] - env.spawn_points[None, :, 0],
                     u.y[na:, None] - env.spawn_points[None, :, 1])
        np.testing.assert_array_equal(env.enemy_army, d.argmin(1))
        assert Counter(env.enemy_army) == Counter(dict(enumerate(env.plan.army_sizes)))
        np.testing.assert_array_equal(env.tasks_complete, np.arange(3) >= env.n_armies)
        assert sorted(env.order) == list(range(na))
        # at least one army attacks at once: an attack-move on the map centre
        assert env.script.attacking.any() and env.script.attacking.sum() < env.n_armies + 1
        last = fake.commands[-int(env.script.attacking.sum()):]
        assert all(c.ability == ATTACK and c.target_pos == (16.0, 16.0) for c in last)


# ----------------------------------------------------------------- A.8, A.9 hand-built
def sz_layout() -> R.Layout:
    return R.Layout(8, 8, 14, 2, True)


def open_map() -> R.MapInfo:
    return R.MapInfo(32, 32, 30.0, 28.0, np.ones((32, 32), bool))


def hand_units() -> R.Units:
    """Agents: Stalker (alive), Zealot (dead); enemies: Zealot (army 1), Stalker (army 0)."""
    return R.make_units(
        2, kind=[1, 0, 0, 1], health=[40.0, 0.0, 100.0, 80.0],
        health_max=[80.0, 100.0, 100.0, 80.0], shield=[80.0, 0.0, 25.0, 80.0],
        shield_max=[80.0, 50.0, 50.0, 80.0], cooldown=[7.0, 0.0, 3.0, 0.0],
        max_cooldown=[35.0, 22.0, 22.0, 35.0], x=[16.0, 15.0, 19.0, 16.0],
        y=[16.0, 16.0, 16.0, 26.0])


def test_entity_features_of_a_hand_built_snapshot():
    L, u, m = sz_layout(), hand_units(), open_map()
    assert (L.avail, L.type, L.health, L.energy, L.pos, L.phase, L.vel, L.dim) == \
        (16, 28, 30, 32, 34, 38, 40, 42)
    ally_tags, enemy_tags, army = np.array([11, 8]), np.array([5, 2]), np.array([1, 0])
    dist = R.distance_matrix(u)
    avail = R.avail_actions(u, dist, ally_tags, enemy_tags, army, L, m)
    prev = u.copy()
    prev.x[0], prev.y[2] = 15.0, 17.0
    ent = R.entity_features(L, u, ally_tags, enemy_tags, avail, np.array([True, False]),
                            np.array([3.0, 7.0]), army, m, prev)
    assert ent.shape == (16, 42) and ent.dtype == np.float32
    com_x, com_y = 16.5, 18.5  # every unit of the episode, the dead Zealot included
    spread = math.hypot(-0.5, 7.5)  # the enemy Stalker is farthest from the centre of mass
    want = np.zeros(42, np.float32)
    want[11] = 1  # tag
    want[16:20] = 1  # avail block = actions 2..13: the four moves
    want[16 + 11 - 2] = 1  # attack the Zealot (tag 5, 3 away): action 6 + 5
    want[28 + 1] = 1  # Stalker
    want[30:32] = (0.5, 1.0)  # health 40/80, shield 80/80
    want[32:34] = (0.0, 0.2)  # no energy; cooldown 7/35
    want[34:38] = (0.0, 0.0, (16 - com_x) / spread, (16 - com_y) / spread)
    want[40:42] = (0.5, 0.0)  # moved 1 east / move_amount 2
    np.testing.assert_allclose(ent[0], want, atol=1e-6)
    dead = np.zeros(42, np.float32)
    dead[8] = 1
    dead[28] = 1  # a dead unit keeps only its tag and type
    np.testing.assert_array_equal(ent[1], dead)
    zealot = np.zeros(42, np.float32)
    zealot[5] = 1
    zealot[28] = 1
    zealot[30:32] = (1.0, 0.5)
    zealot[34:38] = (3 / 30, 0.0, 2.5 / spread, -2.5 / spread)
    zealot[38:40] = (0.0, 7 / 20)  # army 1: retreated, 7 steps since its switch
    zealot[40:42] = (0.0, -0.5)
    np.testing.assert_allclose(ent[8], zealot, atol=1e-6)
    assert ent[9, 38] == 1.0 and ent[9, 39] == pytest.approx(0.15)  # army 0 attacks
    assert ent[9, 2] == 1 and ent[9, 34 + 1] == pytest.approx(10 / 28)
    assert not ent[2:8].any() and not ent[10:].any()  # padding


def test_masks_and_availability_codes_of_a_hand_built_snapshot():
    L, m = sz_layout(), open_map()
    u = hand_units()
    u.x[3], u.y[3] = 16.0, 16.0 + 6.5  # just out of shooting range
    tags_a, tags_e, army = np.array([11, 8]), np.array([5, 2]), np.array([1, 0])
    dist = R.distance_matrix(u)
    avail = R.avail_actions(u, dist, tags_a, tags_e, army, L, m)
    assert avail.dtype == np.int32 and avail.shape == (8, 14)
    row = np.zeros(14, np.int32)
    row[1:6] = 1
    row[6 + 5] = 2 + 1  # the Zealot of army 1 is 3 away
    np.testing.assert_array_equal(avail[0], row)
    u.x[3], u.y[3] = 16.0, 22.0  # now exactly 6 away: in range, army 0
    avail2 = R.avail_actions(u, R.distance_matrix(u), tags_a, tags_e, army, L, m)
    assert avail2[0, 6 + 2] == 2 and avail2[0, 6 + 5] == 3
    np.testing.assert_array_equal(avail[1], np.eye(14, dtype=np.int32)[0])  # dead: no-op
    np.testing.assert_array_equal(avail[2:], np.tile(np.eye(14, dtype=np.int32)[0], (6, 1)))
    edge = hand_units()
    edge.x[0], edge.y[0] = 5.5, 31.5  # north leaves the map; west is not pathable
    holes = R.MapInfo(32, 32, 30.0, 28.0, np.ones((32, 32), bool))
    holes.pathing[4, 31] = False
    e_av = R.avail_actions(edge, R.distance_matrix(edge), tags_a, tags_e, army, L, holes)
    np.testing.assert_array_equal(e_av[0, 2:6], [0, 1, 1, 0])
    edge.x[0] = 0.5  # as in the original: int(0.5 - 1) == 0 is on the map
    e_av = R.avail_actions(edge, R.distance_matrix(edge), tags_a, tags_e, army, L, m)
    np.testing.assert_array_equal(e_av[0, 2:6], [0, 1, 1, 1])
    # subtask masking (A.9): the attack code 2+army is allowed only on that army's task
    alloc = np.zeros((8, 3), bool)
    alloc[0, 0] = True
    ok = np.asarray(parse_avail(avail2, alloc, True))
    assert ok[0, 1:6].all() and ok[0, 6 + 2] and not ok[0, 6 + 5]
    # sight 28: the far enemy stays visible; dead and padding entities are masked
    u.x[3], u.y[3] = 16.0 + 27.0, 16.0
    far = R.distance_matrix(u)
    om = R.obs_mask(far, L, 2, 28.0)
    assert om.shape == (16, 16) and om.dtype == bool
    assert not om[0, 0] and not om[0, 8] and not om[0, 9] and not om[8, 9]
    assert om[0, 1] and om[1, 0] and not om[1, 1]  # dead: unseen, but sees itself
    assert om[2:8].all() and om[:, 2:8].all() and om[10:].all() and om[:, 10:].all()
    u.x[3] = 16.0 + 28.5
    assert R.obs_mask(R.distance_matrix(u), L, 2, 28.0)[0, 9]
    np.testing.assert_array_equal(R.entity_mask(u, L),
                                  np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], bool))
    e2t = R.entity2task_mask(L, 2, army, 3)
    assert e2t[:8].all() and e2t[10:].all()
    np.testing.assert_array_equal(e2t[8:10], [[1, 0, 1], [0, 1, 1]])
    alloc = np.zeros((8, 3), bool)
    alloc[0, 2] = alloc[5, 1] = True  # a padding row is never allocated
    e2t = R.entity2task_mask(L, 2, army, 3, alloc)
    np.testing.assert_array_equal(e2t[0], [1, 1, 0])
    assert e2t[1:8].all()


def test_medivac_heal_codes():
    L = R.Layout(8, 8, 22, 3, False)
    u = R.make_units(3, kind=[0, 2, 1, 0], medivac=[False, True, False, False],
                     health=[45.0, 150.0, 125.0, 45.0], x=[16.0, 17.0, 25.0, 18.0],
                     y=[16.0, 16.0, 16.0, 16.0])
    tags_a, tags_e = np.array([9, 13, 8]), np.array([3])
    av = R.avail_actions(u, R.distance_matrix(u), tags_a, tags_e, np.array([0]), L,
                         open_map())
    assert av[1, 6 + 9] == 1000 + 0  # heal the Marine (ally 0, tag 9) one away
    assert av[1, 6 + 13] == 0 and av[1, 6 + 8] == 0  # itself (flying); the Marauder 8 away
    assert av[1, 6 + 3] == 0  # Medivacs have no attack
    assert av[0, 6 + 3] == 2  # the Marine attacks the enemy (army 0) 2 away
    alloc = np.zeros((8, 3), bool)
    alloc[[0, 1], [1, 1]] = True
    assert np.asarray(parse_avail(av, alloc, True))[1, 6 + 9]  # same task: heal allowed
    alloc[0] = [True, False, False]
    assert not np.asarray(parse_avail(av, alloc, True))[1, 6 + 9]


# ----------------------------------------------------------------------- A.5 outcomes
def test_task_end_codes_and_game_end_codes():
    centre = (16.0, 16.0)
    u = R.make_units(1, kind=[0, 0, 2, 0, 0], medivac=[False, False, True, False, False],
                     health=[45.0, 45.0, 150.0, 0.0, 45.0], x=[16.0, 16.0, 16.5, 17.9, 30.0],
                     y=[16.0, 25.0, 16.0, 16.0, 16.0])
    army = np.array([0, 1, 2, 2])
    # army 0: a Marine 9 away -> active; army 1: a Medivac in the base does not infiltrate;
    # army 2: a dead Marine 1.9 from the centre still counts
    codes = R.task_end_codes(u, army, 3, centre)
    np.testing.assert_array_equal(codes, [0, 0, -1])
    army2 = np.array([0, 1, 1, 1])  # two armies: the third task is absent -> +1
    np.testing.assert_array_equal(R.task_end_codes(u, army2, 2, centre), [0, -1, 1])
    u.x[3] = 18.0  # exactly 2 away: outside (distance < 2)
    np.testing.assert_array_equal(R.task_end_codes(u, army2, 2, centre), [0, 0, 1])
    u.health[[2, 4]] = 0.0
    np.testing.assert_array_equal(R.task_end_codes(u, army2, 2, centre), [0, 1, 1])

    def units(agents, enemies, medivac_agents=(), medivac_enemies=()):
        n = len(agents) + len(enemies)
        med = np.zeros(n, bool)
        med[list(medivac_agents)] = True
        med[[len(agents) + e for e in medivac_enemies]] = True
        return R.make_units(len(agents), health=np.array(agents + enemies, float),
                            health_max=np.full(n, 50.0), medivac=med)

    assert R.game_end_code(units([10, 10], [10]), False) is None
    assert R.game_end_code(units([0, 0], [10]), False) == -1
    assert R.game_end_code(units([10, 0], [0, 0]), False) == 1
    assert R.game_end_code(units([0], [0]), False) == 0  # draw without Medivacs
    assert R.game_end_code(units([0], [0]), True) == -1  # ... the original's check order
    assert R.game_end_code(units([10, 0], [10], medivac_agents=[0]), True) == -1
    assert R.game_end_code(units([10], [10, 0], medivac_enemies=[0]), True) == 1
    assert R.game_end_code(units([10], [10, 0], medivac_enemies=[0]), False) is None


# ------------------------------------------------------------------------ A.6 rewards
def test_rewards_of_hand_built_transitions():
    p = R.RewardParams()
    prev = R.make_units(1, health=[45.0, 80.0, 30.0, 0.0, 50.0],
                        shield=[0.0, 40.0, 10.0, 0.0, 0.0])
    now = prev.copy()
    now.health[0] = 33.0  # an agent takes 12: ignored (positive-only)
    now.shield[1], now.health[1] = 30.0, 70.0  # enemy 0 (army 0): 10 shield + 10 health
    now.health[2] = 0.0  # enemy 1 (army 1) dies with 30 + 10 left
    army = np.array([0, 1, 1, 2])
    dead_before = np.array([False, False, True, False])  # enemy 2 died earlier
    reward, damage, died = R.battle_reward(prev, now, dead_before, np.zeros(1, bool), p)
    np.testing.assert_array_equal(damage, [20.0, 40.0, 0.0, 0.0])
    np.testing.assert_array_equal(died, [False, True, False, False])
    assert reward == 20.0 + 40.0 + 10.0
    faithful = R.army_damage_rewards(damage, died, army, 3, p, faithful=True)
    np.testing.assert_array_equal(faithful, [20.0, 0.0, 0.0])  # misses the killing blow
    fixed = R.army_damage_rewards(damage, died, army, 3, p, faithful=False)
    np.testing.assert_array_equal(fixed, [20.0, 50.0, 0.0])
    neg = R.RewardParams(only_positive=False)
    r_neg, _, _ = R.battle_reward(prev, now, dead_before, np.zeros(1, bool), neg)
    assert r_neg == 70.0 - 0.5 * 12.0
    now.health[0] = 0.0  # the agent dies: its 45 and the death value, half-weighted
    r_neg, _, _ = R.battle_reward(prev, now, dead_before, np.zeros(1, bool), neg)
    assert r_neg == 70.0 - 0.5 * (45.0 + 10.0)
    sparse = R.RewardParams(sparse=True)
    assert R.battle_reward(prev, now, dead_before, np.zeros(1, bool), sparse)[0] == 0.0
    regen = prev.copy()
    regen.shield[1] = 45.0  # shield regeneration: a small negative reward, not clipped
    assert R.battle_reward(prev, regen, dead_before, np.zeros(1, bool), p)[0] == -5.0


# -------------------------------------------------------------------- A.7 health boost
def test_health_boost_fraction_recipients_and_values():
    assert R.boost_fraction(6, 7, 3) == pytest.approx(1 / 3)
    assert R.boost_fraction(4, 5, 1) == pytest.approx(1.0)
    spawn = np.array([[30.0, 16.0], [2.0, 16.0]])
    u = R.make_units(3, health=[40.0, 60.0, 0.0, 0.0, 50.0], health_max=[80.0] * 5,
                     shield=[10.0, 75.0, 0.0, 0.0, 0.0], shield_max=[80.0] * 5,
                     x=[20.0, 25.0, 21.0, 30.0, 2.0], y=[16.0] * 5)
    codes = np.array([1, 0, 1])
    heal, fracs = R.boost_recipients(u, codes, np.array([False, False, True]), spawn)
    assert heal == [0, 1] and fracs == [2 / 3]  # the dead agent 2 gets nothing
    heal, fracs = R.boost_recipients(u, codes, np.array([True, False, True]), spawn)
    assert heal == [] and fracs == []  # army 0 was already complete
    _, fracs = R.boost_recipients(u, np.array([1, 1, 1]), np.array([False, False, True]),
                                  spawn)
    assert fracs == []  # no task left: not logged
    values = R.apply_boost(u, [0, 1], 0.25, shields=True)
    assert values == [(0, "life", 60.0), (0, "shields", 30.0), (1, "life", 80.0),
                      (1, "shields", 80.0)]
    assert u.health[1] == 80.0 and u.shield[1] == 80.0  # capped at the maxima


# ------------------------------------------------------------------ A.4 scripted enemies
def test_army_script_alternates_attack_and_retreat():
    rng = np.random.default_rng(1)
    s = R.ArmyScript()
    s.reset(rng, 3)
    assert s.countdown.min() == 0 and s.countdown.max() <= 19 and not s.attacking.any()
    history, orders = [], []
    for t in range(300):
        orders.append(s.switch(rng, np.zeros(3, bool)))
        history.append(s.attacking.copy())
        if t == 0:
            assert any(o == (k, "attack") for o in orders[0] for k in range(3))
            assert np.all(s.since[s.attacking] == 0)
    h = np.array(history)
    for k in range(3):
        toggles = np.flatnonzero(np.diff(h[:, k].astype(int)) != 0) + 1
        first = np.flatnonzero(h[:, k])[0]
        assert first <= 19 and first in [0, *toggles]
        gaps = np.diff(toggles)
        assert gaps.min() >= 11 and gaps.max() <= 20  # phases of 11-20 agent steps
    kinds = [what for step in orders for _, what in step]
    assert kinds.count("attack") - kinds.count("retreat") in range(0, 4)
    # only Medivacs left: retreat for good, time-since-switch reads -19/20
    was = s.attacking.copy()
    out = s.switch(rng, np.array([True, False, False]))
    assert ((0, "retreat") in out) == bool(was[0]) and not s.attacking[0]
    assert s.since[0] == -19
    for _ in range(40):
        assert all(k != 0 for k, _ in s.switch(rng, np.array([True, False, False])))
    # generalisation evaluation: the extra army waits 20 more steps
    raw = np.random.default_rng(0).integers(0, 20, 3) + np.array([20, 0, 0])
    s.reset(np.random.default_rng(0), 3, train_n_armies=2, train_n_enemies=6)
    np.testing.assert_array_equal(s.countdown, raw - raw.min())


# ------------------------------------------------------------------- A.13 heuristics
HEUR_CASE = dict(order=np.array([2, 0, 3, 1]), agent_types=np.array(["S", "Z", "Z", "S"]),
                 agent_alive=np.ones(4, bool),
                 enemy_types=np.array(["Z", "Z", "S", "S", "Z", "Z"]),
                 enemy_alive=np.array([True, False, True, True, True, True]),
                 enemy_army=np.array([0, 0, 1, 2, 2, 2]), n_armies=3,
                 tasks_complete=np.zeros(3, bool), attacking=np.array([False, True, True]),
                 max_agents=5)


def assigned(alloc: np.ndarray) -> list[int]:
    return [int(np.flatnonzero(r)[0]) if r.any() else -1 for r in alloc]


def test_heuristic_allocators_dynamic_and_matching():
    dyn = R.heuristic_allocation(R.parse_style("attacking-type-unassigned-diff"), **HEUR_CASE)
    assert dyn.shape == (5, 3) and assigned(dyn) == [1, 2, 2, 2, -1]
    match = R.heuristic_allocation(R.parse_style("type-unassigned-diff"), **HEUR_CASE)
    assert assigned(match) == [1, 0, 2, 2, -1]
    # 'dynamic' drops dead units: army 0 then counts 1 enemy, dead agents get nothing
    case = {**HEUR_CASE, "agent_alive": np.array([True, True, False, True])}
    d2 = R.heuristic_allocation(R.parse_style("dynamic-type-unassigned-diff"), **case)
    assert assigned(d2) == [2, 0, -1, 1, -1]
    closed = {**HEUR_CASE, "tasks_complete": np.array([False, False, True])}
    assert assigned(R.heuristic_allocation(("type", "unassigned", "diff"), **closed)) == \
        [1, 0, 0, 0, -1]
    with pytest.raises(ValueError, match="heuristic_style"):
        R.parse_style("attacking-nearest")


def test_heuristic_ties_go_to_the_lowest_army():
    tie = dict(agent_types=np.array(["Z", "Z", "Z"]), agent_alive=np.ones(3, bool),
               enemy_types=np.array(["Z", "Z"]), enemy_alive=np.ones(2, bool),
               enemy_army=np.array([0, 1]), n_armies=2, tasks_complete=np.zeros(3, bool),
               attacking=np.zeros(2, bool), max_agents=3)
    for style in ("attacking-type-unassigned-diff", "type-unassigned-diff"):
        alloc = R.heuristic_allocation(R.parse_style(style), order=np.array([1, 2, 0]), **tie)
        # agent 1: a tie -> army 0; agent 2: army 1 (unassigned, unmatched); agent 0: tie -> 0
        assert assigned(alloc) == [0, 0, 1]


# ------------------------------------------------ host env on replayed snapshots (A.5-A.7)
class ReplayBackend:
    """A backend that plays back given snapshots (one per step)."""

    def __init__(self, snaps):
        self.snaps = list(snaps)
        self.commands, self.values = [], []

    def step(self, n_loops):
        return self.snaps.pop(0)

    def command(self, commands):
        self.commands += commands

    def set_unit_values(self, values):
        self.values += values

    def in_game(self):
        return True

    def restart(self):
        return open_map()

    def close(self):
        pass


def snapshot(rows) -> Snapshot:
    """rows: (uid, owner, name, health, shield, x, y)."""
    recs = []
    for uid, owner, name, hp, sh, x, y in rows:
        kind = sc.UNITS[name]
        recs.append({"uid": uid, "owner": owner, "unit_type": kind.rl_id if owner == 1 else
                     kind.type_id, "health": hp, "health_max": STATS[name][0], "shield": sh,
                     "shield_max": STATS[name][1], "energy": 0.0, "energy_max": 0.0,
                     "cooldown": 0.0, "x": x, "y": y, "flying": name == "Medivac"})
    return Snapshot.from_records(recs)


def replay_env(scenario, rows, snaps, **kw) -> HostSC2MultiArmy:
    """An env started on a hand-made episode (2 armies: east and west of the centre)."""
    env = HostSC2MultiArmy(scenario, backend=FAKE, **kw)
    env.backend, env.map, env.max_reward = ReplayBackend(snaps), open_map(), 1000.0
    allies = tuple(Counter(r[2] for r in rows if r[1] == 1).items())
    enemies = tuple(Counter(r[2] for r in rows if r[1] == 2).items())
    east = [r[2] for r in rows if r[1] == 2 and r[5] > 16]
    west = [r[2] for r in rows if r[1] == 2 and r[5] < 16]
    plan = sc.EpisodePlan(0, allies, enemies, 2, [len(east), len(west)], [east, west],
                          np.array([[14.0, 0.0], [-14.0, 0.0]]),
                          {u: np.zeros(2) for u, _ in allies}, 1.0, 0.0)
    env._start(plan, snapshot(rows))
    return env


START = [(1, 1, "Stalker", 80.0, 80.0, 16.0, 17.0), (2, 1, "Stalker", 80.0, 80.0, 16.0, 15.0),
         (3, 2, "Stalker", 80.0, 80.0, 30.0, 16.0), (4, 2, "Zealot", 100.0, 50.0, 2.0, 16.0),
         (5, 2, "Zealot", 100.0, 50.0, 2.0, 17.0)]


def moved(rows, changes, gone=()):
    out = []
    for r in rows:
        if r[0] in gone:
            continue
        out.append(tuple(changes.get(r[0], {}).get(i, v) for i, v in enumerate(r)))
    return out


def test_host_rewards_terminations_and_task_rewards():
    s1 = moved(START, {3: {4: 50.0}}, gone=(4,))  # army 0 loses 30 shield; a Zealot dies
    s2 = moved(s1, {}, gone=(5,))  # the other Zealot dies: army 1 defeated
    s3 = moved(s2, {1: {3: 50.0}})  # an agent is hit: ignored
    s4 = moved(s3, {}, gone=(3,))  # the last enemy dies: a win
    env = replay_env(SZ, START, [snapshot(s) for s in (s1, s2, s3, s4)])
    assert list(env.enemy_army) == [1, 1, 0]  # sorted by type: Zealots (73) before Stalker
    assert list(env.uids) == [2, 1, 4, 5, 3]
    k = 20.0 / 1000.0
    stop = np.ones(8, int)
    r, done, info = env.step(stop)
    assert r == pytest.approx((30.0 + 150.0 + 10.0) * k) and not done
    np.testing.assert_allclose(info["task_rewards"], [30.0 * k, 0.0, 0.0])  # faithful
    assert not info["tasks_changed"] and list(info["tasks_terminated"]) == [0, 0, 1]
    r, done, info = env.step(stop)
    assert r == pytest.approx(160.0 * k) and not done
    np.testing.assert_allclose(info["task_rewards"], [0.0, 200.0 * k, 0.0])
    assert info["tasks_changed"] and list(info["tasks_terminated"]) == [0, 1, 1]
    assert info["perc_armies_defeated"] == 0.5 and list(info["armies_defeated"]) == [0, 1, 0]
    mask = env.get_masks()
    assert list(mask[3]) == [0, 1, 1] and mask[1][8:11].tolist() == [True, True, False]
    r, done, info = env.step(stop)
    assert r == 0.0 and not info["tasks_changed"]
    np.testing.assert_allclose(info["task_rewards"], [0.0, 200.0 * k, 0.0])  # again
    r, done, info = env.step(stop)
    assert done and info["battle_won"] and not info["base_infiltrated"]
    assert r == pytest.approx((130.0 + 10.0 + 200.0) * k)
    np.testing.assert_allclose(info["task_rewards"], [200.0 * k, 200.0 * k, 0.0])
    assert env.get_stats()["battles_won"] == 1 and env.get_stats()["win_rate"] == 1.0
    # the corrected per-army reward credits the killing blow
    env = replay_env(SZ, START, [snapshot(s1)], faithful_task_reward=False)
    np.testing.assert_allclose(env.step(stop)[2]["task_rewards"], [30.0 * k, 160.0 * k, 0.0])


def test_host_infiltration_loss_timeout_and_agent_death():
    inside = moved(START, {4: {5: 15.0, 6: 16.0}})  # a Zealot 1 from the centre
    env = replay_env(SZ, START, [snapshot(inside)])
    r, done, info = env.step(np.ones(8, int))
    assert done and info["base_infiltrated"] and not info["battle_won"]
    assert list(info["armies_infiltrated"]) == [0, 1, 0] and not info["allies_defeated"]
    assert r == 0.0
    dead = moved(START, {}, gone=(1, 2))  # every agent dies
    env = replay_env(SZ, START, [snapshot(dead)])
    r, done, info = env.step(np.ones(8, int))
    assert done and info["allies_defeated"] and not info["battle_won"]
    np.testing.assert_array_equal(env.get_avail_actions()[:2], np.eye(14, dtype=int)[[0, 0]])
    assert env.get_masks()[1][:2].all() and not env.get_entities()[:2, 30:38].any()
    one_dead = moved(START, {}, gone=(2,))
    env = replay_env(SZ, START, [snapshot(one_dead)] * 3, episode_limit=3)
    outs = [env.step(np.ones(8, int)) for _ in range(3)]
    assert [d for _, d, _ in outs] == [False, False, True]
    info = outs[-1][2]
    assert info["truncated"] and not info["episode_limit"] and not info["battle_won"]
    assert env.get_stats()["timeouts"] == 1
    env = replay_env(SZ, START, [snapshot(one_dead)], episode_limit=1, continuing_episode=True)
    assert env.step(np.ones(8, int))[2]["episode_limit"]


def test_host_health_boost_in_disadvantage():
    rows = [(1, 1, "Stalker", 20.0, 0.0, 20.0, 16.0), (2, 1, "Stalker", 20.0, 0.0, 12.0, 16.0),
            (3, 2, "Stalker", 80.0, 80.0, 30.0, 16.0), (4, 2, "Zealot", 100.0, 50.0, 2.0, 16.0),
            (5, 2, "Zealot", 100.0, 50.0, 2.0, 17.0)]
    env = replay_env(SZ_DIS, rows, [snapshot(moved(rows, {}, gone=(3,)))])
    assert env.heals_allowed  # 3 enemies against 2 agents
    _, _, info = env.step(np.ones(8, int))
    frac = 4 * (3 - 2) / (2 * 1)
    want = min(20.0 + 80.0 * frac, 80.0)
    # agent 1 (uid 1, at x=20) is nearest to the defeated army's spawn point (30, 16)
    assert env.backend.values == [(1, "life", want), (1, "shields", min(80.0 * frac, 80.0))]
    assert env.units.health[1] == want and env.units.health[0] == 20.0
    assert env.get_entities()[1, env.layout.health] == pytest.approx(want / 80.0)
    assert info["perc_agents_healed_per_army_defeated"] == 0.5


def test_agent_commands_follow_the_actions():
    env = replay_env(SZ, START, [snapshot(START)])
    tag = int(env.enemy_tags[0])  # a Zealot of army 1 (uid 4), out of range
    env.units.x[0], env.units.y[0] = 4.0, 16.0  # agent 0 now 2 away from it
    env._refresh()
    assert env.get_avail_actions()[0, 6 + tag] == 2 + 1
    env.backend.commands = []
    env.step(np.array([6 + tag, 2, 0, 0, 0, 0, 0, 0]))
    cmds = env.backend.commands
    uid0, uid1 = int(env.uids[0]), int(env.uids[1])
    assert cmds[0].ability == ATTACK and cmds[0].units == (uid0,) and cmds[0].target_unit == 4
    assert cmds[1].ability == MOVE and cmds[1].units == (uid1,)
    assert cmds[1].target_pos == (16.0, 19.0)  # north by move_amount 2 from (16, 17)
    env.backend.snaps.append(snapshot(START))
    env.backend.commands = []
    info = env.step(np.array([1, 0, 0, 0, 0, 0, 0, 0]))[2]  # 0 (no-op) is invalid when alive
    assert info["invalid_actions"] == 1
    assert env.backend.commands[0].ability == STOP and env.backend.commands[0].units == (uid0,)
    assert not [c for c in env.backend.commands if c.units == (uid1,)]


# ------------------------------------------------------------- env over the simulator
def attack_policy(env, rng):
    """Attack a random available target, else walk toward the nearest enemy (scripted)."""
    avail, u, na = env.get_avail_actions(), env.units, env.units.n_agents
    out = np.zeros(env.family.max_agents, int)
    for i in range(na):
        targets = np.flatnonzero(avail[i, 6:] >= 1) + 6
        if avail[i, 0]:
            continue
        if len(targets):
            out[i] = rng.choice(targets)
            continue
        live = np.flatnonzero(u.alive[na:]) + na
        e = live[np.argmin(np.hypot(u.x[live] - u.x[i], u.y[live] - u.y[i]))]
        dx, dy = u.x[e] - u.x[i], u.y[e] - u.y[i]
        a = (4 if dx > 0 else 5) if abs(dx) > abs(dy) else (2 if dy > 0 else 3)
        out[i] = a if avail[i, a] else 1
    return out


def test_env_over_the_simulator_reaches_every_outcome():
    seen = Counter()
    rng = np.random.default_rng(0)
    for name in sc.SCENARIOS:
        env = HostSC2MultiArmy(name, backend=FakeSC2Backend, heuristic_alloc=True)
        for ep in range(5):
            env.reset(seed=ep)
            while True:
                act = attack_policy(env, rng) if ep % 2 == 0 else np.ones(8, int)
                r, done, info = env.step(act)
                ent, (om, em, e2t, tm) = env.get_entities(), env.get_masks()
                assert ent.shape == (env.family.n_entities, env.family.entity_dim)
                na = env.units.n_agents
                assert not om[np.arange(na), np.arange(na)].any()  # agents see themselves
                assert om[em[:, None] & ~np.eye(len(em), dtype=bool)].all()
                alloc = ~e2t[:env.family.max_agents]
                assert alloc[:na].sum(1).max() <= 1 and not alloc[na:].any()
                assert not np.any(alloc & tm[None, :])  # only open armies
                seen["agent died"] += int(np.any(em[:na]))
                seen["army defeated"] += int(np.any(info["armies_defeated"]))
                if done:
                    break
            seen["won"] += int(info["battle_won"])
            seen["infiltrated"] += int(info["base_infiltrated"])
        env.close()
    assert all(seen[k] > 0 for k in ("agent died", "army defeated", "won", "infiltrated"))
    env = HostSC2MultiArmy(SZ, backend=FakeSC2Backend, backend_kwargs={"speed": 0.0},
                           episode_limit=7)
    env.reset(seed=1)
    outs = [env.step(np.ones(8, int)) for _ in range(7)]
    assert [d for _, d, _ in outs] == [False] * 6 + [True] and outs[-1][2]["truncated"]


def test_game_crash_restarts_and_ends_the_episode():
    env = HostSC2MultiArmy(SZ, backend=FakeSC2Backend, backend_kwargs={"crash_at": 2},
                           continuing_episode=True)
    env.reset(seed=0)
    env.step(np.ones(8, int))
    before = env.tasks_complete.copy()
    r, done, info = env.step(np.ones(8, int))
    assert r == 0.0 and done and info["env_error"] and info["episode_limit"]
    assert not info["tasks_changed"] and not info["task_rewards"].any()
    np.testing.assert_array_equal(info["tasks_terminated"], before)
    assert env.get_stats()["restarts"] == 1 and env.backend.launches == 2
    env.reset(seed=1)
    assert not env.step(np.ones(8, int))[2]["env_error"]
    with pytest.raises(BackendError, match="expected"):
        env._start(env.plan, snapshot(START))  # a spawn that went wrong is an error


# ----------------------------------------------------------------- builder and bridge
def test_make_options_and_install_message():
    with pytest.raises(ValueError, match="unknown sc2multiarmy option.*allowed:.*team_sizes"):
        envs_jax.make("sc2multiarmy", scenario=SZ, backend=FAKE, sight_range=9)
    with pytest.raises(ValueError, match="unknown sc2multiarmy scenario"):
        envs_jax.make("sc2multiarmy", scenario="3m", backend=FAKE)
    with pytest.raises(ValueError, match="backend_kwargs.*FakeSC2Backend"):
        envs_jax.make("sc2multiarmy", scenario=SZ, backend=FAKE, backend_kwargs={"fog": 1})
    if smac_install_problems("empty_passive", need_smac=False):
        with pytest.raises(MissingDependencyError, match="empty_passive"):
            envs_jax.make("sc2multiarmy", scenario=SZ)
    env = envs_jax.make("sc2multiarmy", scenario=MMM, backend=FAKE)
    assert (env.n_agents, env.n_entities, env.n_tasks, env.n_actions, env.entity_dim,
            env.episode_limit) == (8, 16, 3, 22, 50, 150)
    assert not hasattr(env, "heuristic_allocation")
    env.close()
    from alma_jax.config import env_kwargs, load_config

    cfg = load_config(["env=sc2multiarmy", "alg=heuristic", f"env.backend='{FAKE}'"])
    assert env_kwargs(cfg)["heuristic_alloc"] is True
    cfg = load_config(["env=sc2multiarmy", "alg=alma", f"env.backend='{FAKE}'"])
    assert "heuristic_alloc" not in env_kwargs(cfg)


def test_pysc2_backend_imports_pysc2_only_when_built():
    from envs_jax.bridge import sc2multiarmy_pysc2

    assert "pysc2" not in sc2multiarmy_pysc2.__dict__
    if smac_install_problems(None, need_smac=False):
        try:
            import pysc2  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError):
                sc2multiarmy_pysc2.PySC2Backend()
    with pytest.raises(ValueError, match="difficulty"):
        sc2multiarmy_pysc2.PySC2Backend(difficulty="Z")


@pytest.fixture(scope="module")
def bridge_env():
    env = envs_jax.make("sc2multiarmy", scenario=SZ_DIS, backend=FAKE, n_workers=2,
                        heuristic_alloc=True, episode_limit=25, timeout=30.0,
                        reset_timeout=60.0)
    yield env
    env.close()


def test_bridge_rollout_under_jit_and_scan(bridge_env):
    from alma_jax.allocation import env_heuristic_allocation
    from alma_jax.rollout import make_rollout

    env = bridge_env
    assert env.info_spec["armies_defeated"] == ((3,), "bool")
    assert env.info_spec["perc_armies_defeated"] == ((), "float32")

    def act(params, key, obs, last_action, alloc, eps):
        avail = jax.vmap(parse_avail, in_axes=(0, 0, None))(obs.avail_actions, alloc, True)
        logits = jax.numpy.where(avail, 0.0, -1e9)
        return jax.random.categorical(key, logits).astype(jax.numpy.int32)

    rollout = make_rollout(env, 3, act, env_heuristic_allocation(env.heuristic_allocation), 3)
    eps, stats, steps = jax.jit(rollout)(None, None, jax.random.key(0), 1.0)
    eps, stats = jax.tree.map(np.asarray, (eps, stats))
    assert eps.entities.shape == (3, 26, 17, 44) and eps.avail_actions.dtype == np.int32
    assert int(steps) == stats.episode_length.sum() > 0
    for e, n in enumerate(stats.episode_length):
        assert eps.reset[e, n - 1] and eps.filled[e, : n + 1].all()
        dec = eps.hier_decision[e, :n]
        assert dec[0] and dec.sum() >= n // 3
        alloc = ~eps.entity2task_mask[e, :n, :8][dec]
        live = ~eps.entity_mask[e, :n, :8][dec]
        # at decisions the env's heuristic is taken: one open army per live agent
        assert np.all(alloc.sum(-1)[live] == 1) and not alloc[~live].any()
        assert not np.any(alloc & eps.task_mask[e, :n][dec][:, None, :])
        codes = np.take_along_axis(eps.avail_actions[e, :n], eps.actions[e, :n, :, None], -1)
        assert np.all(codes >= 1)
    for key in ("battle_won", "perc_armies_defeated", "base_infiltrated", "allies_defeated",
                "truncated", "n_armies"):
        assert key in stats.info
    assert np.all((stats.info["n_armies"] >= 2) & (stats.info["n_armies"] <= 3))
    over = stats.info["battle_won"] | stats.info["base_infiltrated"] | \
        stats.info["allies_defeated"] | stats.info["truncated"]
    assert over.all()
    stats_host = env.stats()
    assert sum(s["battles_game"] for w in stats_host for s in w["env_stats"]) >= 3


def test_trainer_runs_on_sc2multiarmy(tmp_path):
    from test_trainer import tiny_config

    import alma_jax.train as train_mod

    cfg = tiny_config(tmp_path / "run", alg="heuristic")
    cfg = dataclasses.replace(
        cfg, env="sc2multiarmy", total_env_steps=120, num_envs=2, test_interval=10_000,
        test_episodes=2, action_length=3,
        env_args={"scenario": SZ, "backend": FAKE, "n_workers": 2, "episode_limit": 20})
    res = train_mod.run(cfg)
    assert np.all(np.asarray(res["t_env"]) >= 120)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    names = " ".join(last.get("per_seed", last))
    assert "battle_won" in names and "perc_armies_defeated" in names
