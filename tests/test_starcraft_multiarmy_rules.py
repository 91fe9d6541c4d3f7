"""The JAX multi-army rules equal the numpy reference rules on random padded snapshots."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.bridge import sc2multiarmy_rules as R
from envs_jax.starcraft import multiarmy_rules as J

MA, ME, T = 8, 9, 3


def snapshot(rng):
    """A random episode: compact numpy Units plus its padded JAX-side arrays."""
    na, ne = int(rng.integers(1, MA + 1)), int(rng.integers(2, ME + 1))
    n_armies = int(rng.integers(2, min(ne, 3) + 1))
    army = np.concatenate([np.arange(n_armies), rng.integers(0, n_armies, ne - n_armies)])
    n = na + ne
    kind = rng.integers(0, 3, n)
    medivac = kind == 2
    health_max = rng.uniform(40, 150, n)
    dead = rng.random(n) < 0.3
    health = np.where(dead, 0.0, rng.uniform(1, 1, n) * health_max * rng.uniform(0.1, 1, n))
    # some enemies sit near the base centre (16, 16)
    near = rng.random(n) < 0.15
    x = np.where(near, 16 + rng.uniform(-1.5, 1.5, n), rng.uniform(0, 32, n))
    y = np.where(near, 16 + rng.uniform(-1.5, 1.5, n), rng.uniform(0, 32, n))
    u = R.make_units(na, kind=kind, medivac=medivac, health=health, health_max=health_max,
                     x=x, y=y)

    def pad(v, fill=0):
        v = np.asarray(v)
        a = np.full(MA, fill, v.dtype)
        e = np.full(ME, fill, v.dtype)
        a[:na], e[:ne] = v[:na], v[na:]
        return a, e

    return u, army, n_armies, pad


@pytest.mark.parametrize("seed", range(40))
def test_end_codes_medivacs_and_rewards(seed):
    rng = np.random.default_rng(seed)
    u, army, n_armies, pad = snapshot(rng)
    na = u.n_agents
    _, ex = pad(u.x)
    _, ey = pad(u.y)
    a_alive, e_alive = pad(u.alive, False)
    a_med, e_med = pad(u.medivac, False)
    a_valid, e_valid = pad(np.ones(u.n, bool), False)
    army_p = np.zeros(ME, int)
    army_p[: len(army)] = army
    codes = J.task_end_codes(jnp.asarray(ex), jnp.asarray(ey), jnp.asarray(e_alive),
                             jnp.asarray(e_valid), jnp.asarray(e_med), jnp.asarray(army_p),
                             n_armies, (16.0, 16.0))
    np.testing.assert_array_equal(codes, R.task_end_codes(u, army, n_armies, (16.0, 16.0)))
    for has_med in (False, True):
        got = int(J.game_end_code(*(jnp.asarray(v) for v in (a_alive, a_valid, a_med, e_alive,
                                                              e_valid, e_med)), has_med))
        want = R.game_end_code(u, has_med)
        assert got == (2 if want is None else want)
    np.testing.assert_array_equal(
        J.medivacs_only(jnp.asarray(e_alive), jnp.asarray(e_valid), jnp.asarray(e_med),
                        jnp.asarray(army_p))[:n_armies],
        R.medivacs_only(u, army, n_armies))

    # a step later: some enemies lost health, some died
    now = u.copy()
    hit = rng.random(u.n) < 0.5
    now.health = np.where(hit, np.maximum(0.0, now.health - rng.uniform(0, 60, u.n)),
                          now.health)
    dead_before = ~u.alive[na:]
    damage, died = R.health_deltas(u, now, dead_before, slice(na, None))
    _, prev_hs = pad(u.health + u.shield)
    _, now_hs = pad(now.health + now.shield)
    _, now_h = pad(now.health)
    db = np.zeros(ME, bool)
    db[: len(dead_before)] = dead_before
    jd, jdied = J.health_deltas(jnp.asarray(prev_hs), jnp.asarray(now_h), jnp.asarray(now_hs),
                                jnp.asarray(db), jnp.asarray(e_valid))
    np.testing.assert_allclose(np.asarray(jd)[: u.n_enemies], damage, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(jdied)[: u.n_enemies], died)
    p = R.RewardParams()
    for faithful in (True, False):
        want = R.army_damage_rewards(damage, died, army, T, p, faithful)
        got = J.army_damage_rewards(jd, jdied, jnp.asarray(army_p), jnp.asarray(e_valid), T,
                                    p.death_value, faithful)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


STYLES = ["attacking-type-unassigned-diff", "type-unassigned-diff", "diff-type",
          "dynamic-attacking-type-unassigned-diff", "unassigned"]


@pytest.mark.parametrize("style, seed", list(itertools.product(STYLES, range(12))))
def test_heuristic_allocation_equals_numpy(style, seed):
    rng = np.random.default_rng(1000 + seed)
    na, ne = int(rng.integers(1, MA + 1)), int(rng.integers(2, ME + 1))
    n_armies = int(rng.integers(2, min(ne, 3) + 1))
    army = np.concatenate([np.arange(n_armies), rng.integers(0, n_armies, ne - n_armies)])
    a_types, e_types = rng.integers(0, 3, na), rng.integers(0, 3, ne)
    a_alive, e_alive = rng.random(na) < 0.8, rng.random(ne) < 0.7
    complete = np.concatenate([rng.random(n_armies) < 0.3, np.ones(T - n_armies, bool)])
    attacking = rng.random(T) < 0.5
    order = rng.permutation(na)
    want = R.heuristic_allocation(R.parse_style(style), order, a_types, a_alive, e_types,
                                  e_alive, army, n_armies, complete, attacking, MA, T)

    def pad(v, n, fill=0):
        out = np.full(n, fill, np.asarray(v).dtype)
        out[: len(v)] = v
        return jnp.asarray(out)

    # padded agent slots are visited too and must be skipped: mix them in after the first
    # real agents, keeping the real agents' order
    order_p = np.concatenate([order, np.arange(na, MA)])
    rng.shuffle(order_p[na - 1:])  # the last real agent moves among the padding only
    assert [i for i in order_p if i < na] == list(order)
    got = J.heuristic_allocation(
        J.parse_style(style), jnp.asarray(order_p), pad(a_types, MA), pad(a_alive, MA, False),
        pad(np.ones(na, bool), MA, False), pad(e_types, ME), pad(e_alive, ME, False),
        pad(np.ones(ne, bool), ME, False), pad(army, ME), n_armies, jnp.asarray(complete),
        jnp.asarray(attacking), n_types=3, n_tasks=T)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_unknown_style_names_the_criteria():
    with pytest.raises(ValueError, match="unknown criteria.*nearest"):
        J.parse_style("type-nearest")


@pytest.mark.parametrize("seed", range(30))
def test_masks_and_available_actions_equal_numpy(seed):
    rng = np.random.default_rng(2000 + seed)
    u, army, n_armies, pad = snapshot(rng)
    na, ne = u.n_agents, u.n_enemies
    has_med = bool(seed % 2)
    n_actions = 6 + ME + (MA if has_med else 0)
    layout = R.Layout(MA, ME, n_actions, 3, False)
    pathing = rng.random((32, 32)) < 0.9
    m = R.MapInfo(32, 32, 32.0, 32.0, pathing)
    if not has_med:
        u.medivac[:] = False
        u.flying[:] = False
    ally_tags = ME + rng.permutation(MA)[:na]
    enemy_tags = rng.permutation(ME)[:ne]
    dist = R.distance_matrix(u)
    want = R.avail_actions(u, dist, ally_tags, enemy_tags, army, layout, m)

    def both(v, fill=0):
        a, e = pad(v, fill)
        return jnp.asarray(np.concatenate([a, e]))

    x, y, alive = both(u.x), both(u.y), both(u.alive, False)
    valid = both(np.ones(u.n, bool), False)
    jd = J.distance_matrix(x, y, alive, valid)
    army_p = np.zeros(ME, int)
    army_p[:ne] = army
    tags = both(np.concatenate([ally_tags, enemy_tags]))
    got = J.avail_codes(jd, x, y, alive, valid, both(u.medivac, False), both(u.flying, False),
                        tags, jnp.asarray(army_p), MA, n_actions, jnp.asarray(pathing))
    np.testing.assert_array_equal(np.asarray(got), want)
    for sight in (9.0, 28.0):
        np.testing.assert_array_equal(np.asarray(J.obs_mask(jd, valid, sight)),
                                      R.obs_mask(dist, layout, na, sight))
    np.testing.assert_array_equal(np.asarray(J.entity_mask(alive, valid)),
                                  R.entity_mask(u, layout))
    alloc = rng.random((MA, T)) < 0.4
    e_valid = jnp.asarray(np.arange(ME) < ne)
    np.testing.assert_array_equal(
        np.asarray(J.entity2task_mask(MA, jnp.asarray(army_p), e_valid, T)),
        R.entity2task_mask(layout, na, army, T))
    np.testing.assert_array_equal(
        np.asarray(J.entity2task_mask(MA, jnp.asarray(army_p), e_valid, T, jnp.asarray(alloc),
                                      valid[:MA])),
        R.entity2task_mask(layout, na, army, T, alloc))


@pytest.mark.parametrize("seed", range(20))
def test_entity_features_equal_numpy(seed):
    rng = np.random.default_rng(3000 + seed)
    u, army, n_armies, pad = snapshot(rng)
    na, ne = u.n_agents, u.n_enemies
    shields, has_med = bool(seed % 2), bool(seed % 3 == 0)
    n_actions = 6 + ME + (MA if has_med else 0)
    layout = R.Layout(MA, ME, n_actions, 3, shields)
    m = R.MapInfo(32, 32, 30.0, 28.0, np.ones((32, 32), bool))
    u.shield_max = np.where(rng.random(u.n) < 0.5, 50.0, 0.0)
    u.shield = u.shield_max * rng.random(u.n)
    u.energy_max = np.where(u.medivac, 200.0, 0.0)
    u.energy = u.energy_max * rng.random(u.n)
    u.cooldown = rng.uniform(0, 20, u.n)
    u.max_cooldown = rng.choice([15.0, 22.0, 35.0], u.n)
    prev = u.copy()
    prev.x, prev.y = u.x - rng.uniform(-1, 1, u.n), u.y - rng.uniform(-1, 1, u.n)
    ally_tags = ME + rng.permutation(MA)[:na]
    enemy_tags = rng.permutation(ME)[:ne]
    avail = rng.integers(0, 3, (MA, n_actions)).astype(np.int32)
    attacking, since = rng.random(T) < 0.5, rng.integers(-19, 20, T).astype(float)
    for with_prev in (False, True):
        want = R.entity_features(layout, u, ally_tags, enemy_tags, avail, attacking, since,
                                 army, m, prev if with_prev else None)

        def both(v, fill=0):
            a, e = pad(v, fill)
            return jnp.asarray(np.concatenate([a, e]))

        army_p = np.zeros(ME, int)
        army_p[:ne] = army
        got = J.entity_features(
            both(u.x), both(u.y), both(u.alive, False), both(np.ones(u.n, bool), False),
            both(u.kind), both(u.health), both(u.health_max), both(u.shield),
            both(u.shield_max), both(u.energy), both(u.energy_max), both(u.cooldown),
            both(u.max_cooldown), both(np.concatenate([ally_tags, enemy_tags])),
            jnp.asarray(avail), jnp.asarray(attacking), jnp.asarray(since),
            jnp.asarray(army_p), MA, 3, shields, (32, 32), (30.0, 28.0),
            (both(prev.x), both(prev.y)) if with_prev else None)
        assert got.shape == want.shape == (MA + ME, layout.dim)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


class _Draws:
    """A stand-in for numpy's Generator that hands out prepared integers in order."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, lo, hi, size=None):
        if size is None:
            v = self.values.pop(0)
            assert lo <= v < hi
            return v
        out = np.array([self.values.pop(0) for _ in range(size)])
        assert np.all((out >= lo) & (out < hi))
        return out


@pytest.mark.parametrize("seed", range(10))
def test_army_script_equals_numpy(seed):
    rng = np.random.default_rng(4000 + seed)
    n_armies = int(rng.integers(2, 4))
    first = rng.integers(0, R.MAX_SWITCH, n_armies)
    ref = R.ArmyScript()
    ref.reset(_Draws(first), n_armies)
    first_p = np.zeros(T, int)
    first_p[:n_armies] = first
    cd, since, att = J.army_script_reset(jnp.asarray(first_p), n_armies)
    for step in range(60):
        meds = (rng.random(n_armies) < 0.05) if step > 20 else np.zeros(n_armies, bool)
        toggles = [k for k in range(n_armies) if not meds[k] and ref.countdown[k] == 0]
        draws = rng.integers(R.MIN_SWITCH + 1, R.MAX_SWITCH + 1, len(toggles))
        ref.switch(_Draws(draws), meds)
        new = np.zeros(T, int)
        new[toggles] = draws
        meds_p = np.zeros(T, bool)
        meds_p[:n_armies] = meds
        cd, since, att = J.army_switch(cd, since, att, jnp.asarray(meds_p), n_armies,
                                       jnp.asarray(new))
        np.testing.assert_array_equal(np.asarray(cd)[:n_armies], ref.countdown)
        np.testing.assert_array_equal(np.asarray(since)[:n_armies], ref.since)
        np.testing.assert_array_equal(np.asarray(att)[:n_armies], ref.attacking)


@pytest.mark.parametrize("seed", range(15))
def test_battle_reward_and_boost_equal_numpy(seed):
    rng = np.random.default_rng(5000 + seed)
    u, army, n_armies, pad = snapshot(rng)
    na = u.n_agents
    now = u.copy()
    now.health = np.where(rng.random(u.n) < 0.5,
                          np.maximum(0.0, u.health - rng.uniform(0, 60, u.n)), u.health)
    dead_e, dead_a = ~u.alive[na:], ~u.alive[:na]
    for only_positive in (True, False):
        p = R.RewardParams(only_positive=only_positive)
        want, dmg, died = R.battle_reward(u, now, dead_e, dead_a, p)
        a_dmg, a_died = R.health_deltas(u, now, dead_a, slice(0, na))
        got = J.battle_reward(jnp.asarray(dmg), jnp.asarray(died), jnp.asarray(a_dmg),
                              jnp.asarray(a_died), only_positive=only_positive)
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-3)
    ne = u.n_enemies
    assert float(J.boost_fraction(na, ne, n_armies)) == pytest.approx(
        R.boost_fraction(na, ne, n_armies))
    codes = rng.choice([-1, 0, 1], T)
    complete = rng.random(T) < 0.3
    spawns = rng.uniform(0, 32, (T, 2))
    spawns_p = spawns.copy()
    spawns_p[n_armies:] = 1e6  # absent armies: never the nearest
    heal, _ = R.boost_recipients(u, codes[:n_armies], complete[:n_armies], spawns[:n_armies])
    a_x, _ = pad(u.x)
    a_y, _ = pad(u.y)
    a_alive, _ = pad(u.alive, False)
    a_valid, _ = pad(np.ones(u.n, bool), False)
    got = J.boost_recipients(jnp.asarray(a_x), jnp.asarray(a_y), jnp.asarray(a_alive),
                             jnp.asarray(a_valid), jnp.asarray(codes), jnp.asarray(complete),
                             jnp.asarray(spawns_p))
    assert sorted(np.nonzero(np.asarray(got))[0].tolist()) == sorted(set(heal))
