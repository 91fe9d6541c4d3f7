"""`multiarmy_jax`: ALMA's multi-army setting on the JAX simulator, checked against the
bridge's numpy rules (`envs_jax.bridge.sc2multiarmy_rules`) on the env's own snapshots.

Random-action episodes of every family; at every step the JAX state is turned into the numpy
rules' `Units` and every output of the env (features, availability codes, masks with the
heuristic allocation, per-army and global rewards, subtask termination, the episode's end)
is recomputed by the numpy functions.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import envs_jax
from envs_jax.bridge import sc2multiarmy as sc
from envs_jax.bridge import sc2multiarmy_rules as R
from envs_jax.savethecity.policies import uniform_valid
from envs_jax.starcraft import multiarmy_env as M
from envs_jax.starcraft import units as ut


def to_numpy_units(env, s) -> tuple[R.Units, np.ndarray]:
    """(compact numpy Units, slot index of each compact unit) of a JAX state."""
    u = jax.device_get(s.units)
    valid = np.asarray(u.valid)
    slots = np.nonzero(valid)[0]
    na = int(valid[: env.MA].sum())
    kind = np.asarray(s.kind)[slots]
    t = np.asarray(u.utype)[slots]
    medivac = env.is_medivac[kind]
    units = R.Units(
        n_agents=na, kind=kind, medivac=medivac, flying=medivac,
        health=np.asarray(u.health, float)[slots], health_max=ut.HEALTH[t].astype(float),
        shield=np.asarray(u.shield, float)[slots], shield_max=ut.SHIELD[t].astype(float),
        energy=np.asarray(u.energy, float)[slots], energy_max=ut.ENERGY_MAX[t].astype(float),
        cooldown=np.asarray(u.cooldown, float)[slots],
        max_cooldown=env.max_cooldown[kind].astype(float),
        x=np.asarray(u.pos[:, 0], float)[slots], y=np.asarray(u.pos[:, 1], float)[slots])
    return units, slots


def padded_distances(env, s) -> np.ndarray:
    pos = np.asarray(s.units.pos, np.float64)
    return np.hypot(pos[:, None, 0] - pos[None, :, 0], pos[:, None, 1] - pos[None, :, 1])


def reference(env, s, prev_xy):
    """Every observation array the numpy rules give for JAX state s."""
    u, slots = to_numpy_units(env, s)
    na = u.n_agents
    tags = np.asarray(s.tags)[slots]
    army = np.asarray(s.army)[: u.n_enemies]
    f = env.family
    layout = R.Layout(f.max_agents, f.max_enemies, f.n_actions, f.type_bits, f.shields)
    m = R.MapInfo(32, 32, M.MAP_SIZE, M.MAP_SIZE, env.pathing)
    dist = R.distance_matrix(u)
    avail = R.avail_actions(u, dist, tags[:na], tags[na:], army, layout, m)
    prev = None
    if prev_xy is not None:
        prev = u.copy()
        prev.x, prev.y = prev_xy[0][slots], prev_xy[1][slots]
    ent = R.entity_features(layout, u, tags[:na], tags[na:], avail,
                            np.asarray(s.attacking), np.asarray(s.since), army, m, prev)
    alloc = R.heuristic_allocation(
        env.style, np.asarray(s.order)[:na], u.kind[:na], u.alive[:na], u.kind[na:],
        u.alive[na:], army, int(s.n_armies), np.asarray(s.tasks_complete),
        np.asarray(s.attacking), f.max_agents)
    return {"entities": ent, "avail_actions": avail,
            "obs_mask": R.obs_mask(dist, layout, na, M.SIGHT),
            "entity_mask": R.entity_mask(u, layout),
            "entity2task_mask": R.entity2task_mask(layout, na, army, 3, alloc),
            "task_mask": np.asarray(s.tasks_complete)}, u


@pytest.mark.parametrize("scenario", sc.SCENARIOS)
def test_env_equals_numpy_rules_on_its_snapshots(scenario):
    env = envs_jax.make("multiarmy_jax", scenario=scenario, heuristic_alloc=True)
    reset, step = jax.jit(env.reset), jax.jit(env.step_env)
    p = R.RewardParams()
    checked_steps = ends = 0
    for episode in range(2):
        key = jax.random.PRNGKey(100 * episode + len(scenario))
        obs, s = reset(key)
        prev_xy = None
        for t in range(env.episode_limit):
            want, u_before = reference(env, s, prev_xy)
            want_dist = padded_distances(env, s)
            for name, arr in want.items():
                got = np.asarray(getattr(obs, name))
                if name == "entities":
                    np.testing.assert_allclose(got, arr, rtol=1e-4, atol=2e-5, err_msg=name)
                elif name == "obs_mask":
                    # two armies spawn exactly 2 x 14 apart, the sight range: float32 and
                    # float64 distances may fall on either side of it
                    edge = np.abs(want_dist - M.SIGHT) < 1e-4
                    np.testing.assert_array_equal(got[~edge], arr[~edge], err_msg=name)
                else:
                    np.testing.assert_array_equal(got, arr, err_msg=f"{name} at t={t}")
            key, k_act, k_step = jax.random.split(key, 3)
            actions = uniform_valid(k_act, obs)
            prev_xy = (np.asarray(s.units.pos[:, 0]), np.asarray(s.units.pos[:, 1]))
            obs, s2, r, done, info = step(k_step, s, actions)
            # rewards and termination from the numpy rules on the same two snapshots
            u_after, _ = to_numpy_units(env, s2.replace(units=s2.units))
            na = u_before.n_agents
            army = np.asarray(s.army)[: u_before.n_enemies]
            n_armies = int(s.n_armies)
            dead_e, dead_a = ~u_before.alive[na:], ~u_before.alive[:na]
            glob, dmg, died = R.battle_reward(u_before, u_after, dead_e, dead_a, p)
            task = R.army_damage_rewards(dmg, died, army, 3, p, faithful=True)
            codes = R.task_end_codes(u_after, army, n_armies, M.CENTRE)
            defeated = codes[:n_armies] == 1
            task[:n_armies] = (task[:n_armies] + defeated * p.win) / (env.max_reward / 20)
            task[n_armies:] = 0.0
            end = R.game_end_code(u_after, env.family.has_medivac)
            if np.any(codes[:n_armies] == -1):
                end = -1
            won = end == 1
            glob = (glob + (p.win if won else 0.0)) / (env.max_reward / 20)
            # the boost edits health after the rewards: compare rewards, not healths
            np.testing.assert_allclose(np.asarray(info["task_rewards"]), task, rtol=1e-4,
                                       atol=1e-4)
            assert float(r) == pytest.approx(glob, rel=1e-4, abs=1e-4)
            np.testing.assert_array_equal(np.asarray(info["tasks_terminated"]), codes != 0)
            assert bool(info["battle_won"]) == won
            assert bool(info["base_infiltrated"]) == bool(np.any(codes[:n_armies] == -1))
            assert bool(done) == (end is not None or t + 1 >= env.episode_limit)
            checked_steps += 1
            s = s2
            if bool(done):
                ends += 1
                break
    assert checked_steps > 50 and ends >= 1


@pytest.mark.slow  # 256 drawn episodes, each checked in Python (35 s on a 2-core CPU)
def test_reset_draws_admissible_episodes():
    env = envs_jax.make("multiarmy_jax", scenario="6-8MMM_maxsize4_maxarmies3_unitdisadvantage")
    obs, s = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 256))
    valid = np.asarray(s.units.valid)
    n_a, n_e = valid[:, : env.MA].sum(1), valid[:, env.MA:].sum(1)
    assert np.all(n_e == n_a + 1)  # the disadvantage family: one extra enemy
    n_armies = np.asarray(s.n_armies)
    for i in range(256):
        lo, hi = sc.army_count_range(int(n_e[i]))
        assert lo <= n_armies[i] <= hi
        army = np.asarray(s.army[i])[: n_e[i]]
        sizes = np.bincount(army, minlength=3)
        assert np.all(sizes[: n_armies[i]] >= 1) and np.all(sizes <= 4)
        assert sizes[n_armies[i]:].sum() == 0
        tags = np.asarray(s.tags[i])
        assert sorted(tags[env.MA:]) == list(range(env.ME))
        assert sorted(tags[: env.MA]) == list(range(env.ME, env.ME + env.MA))
        # at least one army attacks at once (the script's countdowns start at their
        # minimum), unless that army holds only Medivacs (they retreat for good)
        meds = env.is_medivac[np.asarray(s.kind[i])[env.MA:][: n_e[i]]]
        meds_only = [bool(np.all(meds[army == k])) for k in range(n_armies[i])]
        assert np.asarray(s.attacking[i])[: n_armies[i]].any() or any(meds_only)
    # agents at the centre, armies on the ring of radius 14
    pos = np.asarray(s.units.pos)
    d = np.hypot(pos[..., 0] - 16, pos[..., 1] - 16)
    assert np.all(d[:, : env.MA][valid[:, : env.MA]] < 2.5)
    assert np.all(np.abs(d[:, env.MA:][valid[:, env.MA:]] - 14) < 1.0)


@pytest.mark.slow  # another compilation of the multi-army step (CI checks the batched step)
def test_jit_equals_vmap():
    """One jitted env equals its slot of the vmapped batch (jit = eager is checked on the
    simulator in test_starcraft_sim.py; eager multi-army steps are slow)."""
    env = envs_jax.make("multiarmy_jax")
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    obs, s = jax.vmap(env.reset)(keys)
    acts = uniform_valid(jax.random.PRNGKey(4), obs)
    out_v = jax.jit(jax.vmap(env.step_env))(keys, s, acts)
    out_e = jax.jit(env.step_env)(keys[1], jax.tree.map(lambda x: x[1], s), acts[1])
    for a, b in zip(jax.tree.leaves(out_e), jax.tree.leaves(jax.tree.map(lambda x: x[1],
                                                                        out_v))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_unknown_option_and_scenario():
    with pytest.raises(ValueError, match="allowed"):
        envs_jax.make("multiarmy_jax", nope=1)
    with pytest.raises(ValueError, match="unknown sc2multiarmy scenario"):
        envs_jax.make("multiarmy_jax", scenario="9z")


def test_allocation_matters_with_a_scripted_low_level():
    """The heuristic's allocation wins far more than random allocation (S&Z symmetric)."""
    from envs_jax.starcraft.scripted import army_play

    env = envs_jax.make("multiarmy_jax")
    keys = jax.random.split(jax.random.PRNGKey(7), 64)
    heur = jax.jit(jax.vmap(lambda k: army_play(env, "heuristic", k)))(keys)
    rand = jax.jit(jax.vmap(lambda k: army_play(env, "random", k)))(keys)
    assert float(heur["battle_won"].mean()) > float(rand["battle_won"].mean()) + 0.4
    assert float(rand["base_infiltrated"].mean()) > float(heur["base_infiltrated"].mean())


def test_batch_written_step_equals_vmapped_step():
    from starcraft_helpers import assert_batch_step_equals_vmap

    env = envs_jax.make("multiarmy_jax", scenario="6-8MMM_maxsize4_maxarmies3_unitdisadvantage")
    assert_batch_step_equals_vmap(env, 16, 30, 5)
