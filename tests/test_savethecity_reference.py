"""Step-by-step float64 equivalence of the JAX SaveTheCity against a plain-Python oracle.

The oracle (`tests/reference_savethecity.py`) is written from the spec alone. Both are
driven with the same random valid actions (biased towards same-cell collisions, generalist
jumps and interactions) and the same collision coin tables, for whole episodes, and every
step compares the full state, reward, per-task outputs, termination, end-of-episode info,
entities, masks and available actions (exact integers, floats to 1e-12).

x64 is switched on only inside the `x64` fixture; the last test checks that it did not leak.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_savethecity as ref

import envs_jax
from envs_jax.savethecity import heuristic_allocation

FTOL = 1e-12
SCENARIOS = ("2-5a_2-5b", "single_scen", "2-8a_2-8b")


@pytest.fixture
def x64():
    """float64 JAX for the duration of one test only (spec 11.17)."""
    with jax.enable_x64(True):
        yield


_HANDLES: dict[str, SimpleNamespace] = {}


def _canonical(tree):
    """Integer leaves as int32, floating leaves as the default float (float64 under x64).

    Applied to JAX states before they are fed back, so that every scenario compiles its
    transition exactly once even if the env's integer dtypes drift under x64 (the dtypes
    themselves are checked separately in `test_x64_dtypes_are_stable`)."""

    def cast(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return x.astype(jnp.int32)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
        return x

    return jax.tree.map(cast, tree)


def _handle(scenario: str) -> SimpleNamespace:
    """One env per scenario (heuristic allocation on, so the agent rows of entity2task_mask
    are checked too) with its jitted entry points; use only inside the `x64` fixture."""
    if scenario not in _HANDLES:
        env = envs_jax.make("savethecity", scenario=scenario, heuristic_alloc=True,
                            track_ac_type=scenario == "single_scen")
        plain = envs_jax.make("savethecity", scenario=scenario)

        def step(s, a, c):
            obs, ns, r, d, info = env.transition(s, a, c)
            return obs, _canonical(ns), r, d, info

        def resets(keys):
            obs, states = jax.vmap(env.reset)(keys)
            return obs, _canonical(states)

        def observe(states):
            obs = jax.vmap(env.get_obs)(states)
            return (obs, jax.vmap(plain.get_obs)(states), jax.vmap(heuristic_allocation)(states),
                    jax.vmap(heuristic_allocation)(obs))

        _HANDLES[scenario] = SimpleNamespace(
            env=env,
            transition=jax.jit(step),
            resets=jax.jit(resets),
            observe=jax.jit(observe),
            n_pairs=env.n_agents * (env.n_agents - 1) // 2,
            track=env.params.track_ac_type,
        )
    return _HANDLES[scenario]


# --------------------------------------------------------------------------- comparisons
INT_FIELDS = ("agent_pos", "agent_type", "agent_valid", "bld_pos", "bld_type", "bld_valid",
              "period", "ttnf", "tslf")


def _close(where, name, got, want):
    got, want = np.asarray(got), np.asarray(want, np.float64)
    if got.dtype != np.float64:
        raise AssertionError(f"{where}: {name} dtype {got.dtype}, expected float64")
    if got.shape != want.shape or not np.all(np.abs(got - want) <= FTOL):
        raise AssertionError(f"{where}: {name}\n jax {got.tolist()}\n ref {want.tolist()}")


def _same(where, name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise AssertionError(f"{where}: {name}\n jax {got.tolist()}\n ref {want.tolist()}")


def check_state(where, js, rs, track=False):
    for k in INT_FIELDS:
        _same(where, k, getattr(js, k), rs[k])
    _close(where, "health", js.health, rs["health"])
    _close(where, "fire", js.fire, rs["fire"])
    _same(where, "t", js.t, rs["t"])
    _same(where, "scenario", js.scenario, rs["scenario"])
    for k in ref.STAT_KEYS:
        if k == "buildings_health_delta":
            _close(where, "stats." + k, js.stats.buildings_health_delta, rs["stats"][k])
        else:
            _same(where, "stats." + k, getattr(js.stats, k), rs["stats"][k])
    if track:  # optional per-type action counts (section 9, track_ac_type)
        _same(where, "stats.action_counts", js.stats.action_counts, rs["stats"]["action_counts"])


def check_obs(where, obs, robs):
    _close(where, "entities", obs.entities, robs["entities"])
    _same(where, "avail_actions", obs.avail_actions, robs["avail_actions"])
    for k in ("obs_mask", "entity_mask", "entity2task_mask", "task_mask"):
        if getattr(obs, k).dtype != np.bool_:
            raise AssertionError(f"{where}: {k} dtype {getattr(obs, k).dtype}")
        _same(where, k, getattr(obs, k), robs[k])


END_KEYS_INT = ("buildings_completed", "buildings_burned", "fires_extinguished",
                "n_agents", "n_buildings", "episode_length", "episode_invalid_actions")


def check_step(where, jax_out, ref_out, track=False):
    """Compare one transition; returns the reference observation of the new state."""
    obs, js, reward, done, info = jax_out
    rs, r_reward, r_task, r_term, r_changed, r_done, rinfo = ref_out
    check_state(where, js, rs, track)
    _close(where, "reward", reward, r_reward)
    _close(where, "task_rewards", info["task_rewards"], r_task)
    _same(where, "tasks_terminated", info["tasks_terminated"], r_term)
    _same(where, "tasks_changed", info["tasks_changed"], r_changed)
    _same(where, "done", done, r_done)
    _same(where, "invalid_actions", info["invalid_actions"], rinfo["invalid_actions"])
    if r_done:  # section 9 keys; absent keys are False / NaN in JAX
        for k in ("solved", "prop_buildings_completed", "buildings_health_delta"):
            _close(where, k, info[k], rinfo[k])
        _same(where, "episode_limit", info["episode_limit"], rinfo.get("episode_limit", False))
        for k in END_KEYS_INT:
            _same(where, k, info[k], rinfo[k])
        for k in ("types_per_firefight", "types_per_build"):
            got, want = float(info[k]), ref.nan_or(rinfo.get(k))
            if not ((math.isnan(got) and math.isnan(want)) or abs(got - want) <= FTOL):
                raise AssertionError(f"{where}: {k} jax {got} ref {want}")
        if track:
            _close(where, "action_types", info["action_types"], rinfo["action_types"])
    robs = ref.ref_obs(rs, heuristic_alloc=True)
    check_obs(where, obs, robs)
    return robs


# ------------------------------------------------------------------------ action driver
def _dist(a, b):
    return abs(int(a[0]) - int(b[0])) + abs(int(a[1]) - int(b[1]))


def _active(rs):
    return [b for b in range(len(rs["bld_valid"]))
            if rs["bld_valid"][b] and 0.0 < rs["health"][b] < 1.0]


def new_plan(rs, rng):
    """Per-agent target buildings; half of the episodes send everybody to the same one."""
    active = _active(rs) or [0]
    A = len(rs["agent_valid"])
    if rng.random() < 0.5:
        return {"target": [int(rng.choice(active))] * A}
    return {"target": [int(rng.choice(active)) for _ in range(A)]}


def sample_actions(rs, avail, plan, rng):
    """Random valid actions for real agents, biased towards interactions, walking to a
    target building, generalist jumps over occupied cells and same-cell contests. Padded
    slots get arbitrary actions (they must be ignored)."""
    A = len(rs["agent_valid"])
    acts = rng.integers(0, ref.N_ACTIONS, size=A)
    occupied = ref._occupied(rs)
    active = _active(rs)
    agents = [i for i in range(A) if rs["agent_valid"][i]]
    for i in agents:
        row = avail[i]
        ok = [a for a in range(ref.N_ACTIONS) if row[a] >= 1]
        inter = [a for a in (ref.EXTINGUISH, ref.BUILD, ref.FREEZE) if row[a] >= 1]
        moves = [a for a in range(1, 9) if row[a] >= 1]
        pos = rs["agent_pos"][i]
        if plan["target"][i] not in active and active:
            plan["target"][i] = int(rng.choice(active))
        u = rng.random()
        if inter and u < 0.7:
            a = int(rng.choice(inter))
        elif moves and active and u < 0.85:
            tgt = rs["bld_pos"][plan["target"][i]]

            def after(a, pos=pos, tgt=tgt):
                d, (dx, dy) = ref.move_of(a)
                return _dist((pos[0] + d * dx, pos[1] + d * dy), tgt)

            best = min(after(a) for a in moves)
            a = int(rng.choice([a for a in moves if after(a) == best]))
        else:
            a = int(rng.choice(ok))
        jumps = [
            a for a in range(5, 9)
            if row[a] >= 1 and (int(pos[0]) + ref.move_of(a)[1][0],
                                int(pos[1]) + ref.move_of(a)[1][1]) in occupied
        ]
        if jumps and rng.random() < 0.4:
            a = int(rng.choice(jumps))
        acts[i] = a
    if rng.random() < 0.45:  # send several agents into one cell
        dests: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i in agents:
            for a in range(1, 9):
                if avail[i][a] >= 1:
                    d, (dx, dy) = ref.move_of(a)
                    x, y = int(rs["agent_pos"][i][0]), int(rs["agent_pos"][i][1])
                    cell = (x + d * dx, y + d * dy)
                    dests.setdefault(cell, []).append((i, a))
        contested = [c for c, lst in dests.items() if len(lst) >= 2]
        if contested:
            if rng.random() < 0.5:
                most = max(len(dests[c]) for c in contested)
                contested = [c for c in contested if len(dests[c]) == most]
            cell = contested[int(rng.integers(len(contested)))]
            for i, a in dests[cell]:
                if rng.random() < 0.9:
                    acts[i] = a
    return acts.astype(np.int32)


def run_episode(h, rs, js, obs, rng, counters, where, max_steps=None, first_actions=None):
    """Drive the JAX env (state `js`, on device) and the reference (state `rs`) side by side
    until done or `max_steps`; `obs` is the JAX observation of the start state (or None)."""
    check_state(f"{where} t=0", jax.device_get(js), rs, h.track)
    robs = ref.ref_obs(rs, heuristic_alloc=True)
    if obs is not None:
        check_obs(f"{where} t=0", jax.device_get(obs), robs)
    plan = new_plan(rs, rng)
    limit = max_steps if max_steps is not None else h.env.episode_limit + 1
    for k in range(limit):
        if k == 0 and first_actions is not None:
            acts = np.asarray(first_actions, np.int32)
        else:
            acts = sample_actions(rs, robs["avail_actions"], plan, rng)
        coins = rng.random(max(h.n_pairs, 1)) < 0.5
        ref_out = ref.ref_step(rs, acts, coins, episode_limit=h.env.episode_limit)
        out = h.transition(js, acts, coins)
        robs = check_step(f"{where} step {k} (t={rs['t']}) actions={acts.tolist()} "
                          f"coins={coins.astype(int).tolist()}", jax.device_get(out), ref_out,
                          h.track)
        rs, js = ref_out[0], out[1]
        info = ref_out[6]
        dbg = info["debug"]
        counters["steps"] += 1
        for key in ("collisions", "jumps_over", "help_extinguish", "help_build",
                    "generalist_only_extinguish", "extinguished", "completed", "burned",
                    "ignitions", "reignite_after_extinguish"):
            counters[key] += dbg[key]
        counters["multi_collisions"] += dbg["max_contenders"] >= 3
        for a, n in dbg["interactions"].items():
            counters[f"action_{a}"] += n
        counters["tasks_changed"] += ref_out[4]
        counters["invalid_actions"] += info["invalid_actions"]
        if ref_out[5]:
            counters["episodes_done"] += 1
            counters["timeouts"] += info.get("episode_limit", False)
            counters["solved"] += info["solved"] == 1.0
            counters["nan_types"] += "types_per_build" not in info
            break
    return counters


# ------------------------------------------------------------------- hand-built states
def ref_state(A, B, agents, buildings, t=0, padded_agents=None, padded_blds=None):
    """Reference state dict built directly from the spec-level description."""
    s = {
        "agent_pos": np.zeros((A, 2), np.int64), "agent_type": np.full(A, -1, np.int64),
        "agent_valid": np.zeros(A, bool), "bld_pos": np.zeros((B, 2), np.int64),
        "bld_type": np.zeros(B, np.int64), "bld_valid": np.zeros(B, bool),
        "health": np.zeros(B), "fire": np.zeros(B), "period": np.ones(B, np.int64),
        "ttnf": np.zeros(B, np.int64), "tslf": np.zeros(B, np.int64), "t": t, "scenario": 0,
        "stats": ref.new_stats(),
    }
    if padded_agents is not None:
        s["agent_pos"][:] = padded_agents
    if padded_blds is not None:
        s["bld_pos"][:] = padded_blds
    for i, (ty, x, y) in enumerate(agents):
        s["agent_type"][i], s["agent_pos"][i], s["agent_valid"][i] = ty, (x, y), True
    for b, spec in enumerate(buildings):
        ty, x, y, hl, f, per = spec[:6]
        s["bld_type"][b], s["bld_pos"][b], s["bld_valid"][b] = ty, (x, y), True
        s["health"][b], s["fire"][b], s["period"][b] = hl, f, per
        s["ttnf"][b] = spec[6] if len(spec) > 6 else per
        s["tslf"][b] = spec[7] if len(spec) > 7 else 0
    return s


_HAND_CACHE: dict = {}


def hand_built(h, agents, buildings, t=0):
    """(reference state, JAX state) of the same hand-built layout, checked to agree."""
    key = (h.env.params.scenario, repr(agents), repr(buildings), t)
    if key not in _HAND_CACHE:
        js = h.env.make_state(agents=agents, buildings=buildings, t=t)
        jsn = jax.device_get(js)
        rs = ref_state(h.env.n_agents, h.env.n_buildings, agents, buildings, t,
                       padded_agents=np.asarray(jsn.agent_pos),
                       padded_blds=np.asarray(jsn.bld_pos))
        # padded building slots of make_state carry arbitrary (masked) data; take them over
        for k in ("bld_type", "period", "ttnf", "tslf"):
            rs[k][~rs["bld_valid"]] = np.asarray(getattr(jsn, k))[~rs["bld_valid"]]
        check_state("make_state", jsn, rs)
        _HAND_CACHE[key] = (rs, _canonical(js))
    rs, js = _HAND_CACHE[key]
    return copy.deepcopy(rs), js


F, S = ref.FAST_BURN, ref.SLOW_BURN
FF, BU, GE = ref.FIREFIGHTER, ref.BUILDER, ref.GENERALIST

# 2-5a_2-5b layouts (A=5, B=6); building (7,7) has the four neighbours (7,8),(8,7),(7,6),(6,7)
HAND_BUILT = {
    # everybody around one burning building: help rules, freeze, extinguish events
    "crowd_fire": ([(BU, 7, 8), (FF, 8, 7), (GE, 6, 7), (BU, 7, 6), (GE, 9, 9)],
                   [(F, 7, 7, 0.5, 0.5, 60), (S, 1, 1, 0.95, 0.0, 20),
                    (F, 13, 13, 0.02, 1.0, 70), (S, 4, 10, 1.0, 0.0, 15, 1000),
                    (F, 10, 4, 0.0, 0.0, 61, 1000), (S, 13, 1, 0.5, 0.0, 20, 1, 19)]),
    # everybody around one intact building: build help, completion
    "crowd_build": ([(FF, 7, 8), (GE, 8, 7), (BU, 6, 7), (FF, 7, 6)],
                    [(S, 7, 7, 0.8, 0.0, 30, 25, 5), (F, 1, 13, 0.3, 0.4, 80, 3, 77)]),
    # five contenders for (7,7); the generalist can jump from (7,9) over (7,8)
    "contest": ([(BU, 7, 8), (BU, 8, 7), (FF, 7, 6), (FF, 6, 7), (GE, 7, 9)],
                [(F, 1, 1, 0.5, 0.0, 60), (S, 13, 13, 0.5, 1.0, 10, 2, 8)]),
    # close to the time limit with several active buildings: timeout
    "near_timeout": ([(FF, 3, 4), (GE, 4, 5), (BU, 9, 9)],
                     [(F, 4, 4, 0.6, 0.3, 62, 4, 58), (S, 10, 10, 0.7, 0.0, 11),
                      (S, 1, 13, 0.5, 0.0, 30, 1)], 146),
    # last task completed exactly at t = 150: true terminal, solved, no timeout flag
    "solve_at_limit": ([(BU, 4, 5), (FF, 8, 8)],
                       [(F, 4, 4, 0.9, 0.0, 60, 5, 55), (S, 10, 10, 1.0, 0.0, 11, 1000),
                        (F, 13, 13, 1.0, 0.0, 70, 1000)], 149),
    # a generalist next to a building, to be jumped over; buildings at the map corner
    "edges": ([(GE, 4, 3), (GE, 0, 0), (FF, 15, 14), (BU, 0, 14)],
              [(F, 4, 4, 0.4, 0.0, 60), (S, 1, 1, 0.3, 0.7, 10, 1, 9),
               (F, 13, 13, 0.9, 0.0, 65), (S, 1, 13, 0.5, 0.2, 25)]),
}
HAND_FIRST_ACTIONS = {
    "crowd_fire": [9, 9, 9, 9, 0],
    "crowd_build": [10, 10, 10, 10, 0],
    "contest": [3, 4, 1, 2, 7],
    "solve_at_limit": [10, 0, 0, 0, 0],
    "edges": [5, 0, 0, 0, 0],
}


# ============================================================================== tests
def test_reference_reproduces_spec_examples():
    """The oracle itself against the numbers of spec 12.6 (no JAX involved)."""

    def one_step(agents, fire, health, acts, extra=()):
        blds = [(F, 7, 7, health, fire, 60)] + list(extra)
        rs = ref_state(5, 6, agents, blds)
        out = ref.ref_step(rs, acts + [0] * (5 - len(acts)), [False] * 10)
        return out

    around = [(7, 8), (8, 7), (7, 6), (6, 7)]

    def team(*types):
        return [(ty, *around[k]) for k, ty in enumerate(types)]

    far = [(S, 1, 1, 0.5, 0.0, 30)]  # keeps the episode going
    cases = [
        (team(GE), [9], 0.5, 0.55, 0.48075),
        (team(BU, GE), [9, 9], 0.5, 0.375, None),
        (team(BU, FF, GE), [9, 9, 9], 0.5, 0.125, None),
        (team(FF, GE), [9, 9], 0.5, 0.25, None),
        (team(GE), [11], 0.5, 0.55, 0.5),
        (team(FF, GE), [10, 10], 0.0, 0.0, 0.5625),
        (team(BU, GE), [10, 10], 0.0, 0.0, 0.625),
        (team(GE), [10], 0.0, 0.0, 0.5),
    ]
    for agents, acts, f0, f1, h1 in cases:
        rs = one_step(agents, f0, 0.5, acts, far)[0]
        assert rs["fire"][0] == pytest.approx(f1, abs=1e-12), (agents, acts)
        if h1 is not None:
            assert rs["health"][0] == pytest.approx(h1, abs=1e-12), (agents, acts)
    norm = 20 / 56
    out = one_step(team(FF), 0.25, 0.5, [9], far)
    assert out[1] == pytest.approx(0.5 * norm) and out[2][0] == pytest.approx(0.5 * norm)
    out = one_step(team(BU), 0.0, 0.95, [10], far)
    assert out[1] == pytest.approx(1.5 * norm) and out[2][0] == pytest.approx(20.5 * norm)
    assert out[3][0] and out[4] and out[0]["ttnf"][0] == 1000 and not out[5]
    # solving the last task adds the global solved bonus only (6.9)
    out = one_step(team(BU), 0.0, 0.95, [10])
    assert out[5] and out[6]["solved"] == 1.0 and "episode_limit" not in out[6]
    assert out[1] == pytest.approx(21.5 * norm) and out[2][0] == pytest.approx(20.5 * norm)
    # timer (12.7): ignition at t = p, 2p regardless of extinguishing
    rs = ref_state(5, 6, team(FF), [(F, 7, 7, 0.9, 0.0, 3), (S, 1, 1, 0.5, 0.0, 30)])
    fires = []
    for _ in range(7):
        rs = ref.ref_step(rs, [9 if rs["fire"][0] > 0 else 0, 0, 0, 0, 0], [False] * 10)[0]
        fires.append(rs["fire"][0])
    assert [f == 1.0 for f in fires] == [False, False, True, False, False, True, False]


def test_collision_king_of_the_hill(x64):
    """Five contenders for one cell, all 2^10 coin tables, JAX vs reference; the winner
    frequencies are 1/16, 1/16, 1/8, 1/4, 1/2 in slot order (6.5)."""
    h = _handle("2-5a_2-5b")
    agents, blds = HAND_BUILT["contest"]
    rs, js = hand_built(h, agents, blds)
    acts = np.asarray(HAND_FIRST_ACTIONS["contest"], np.int32)
    wins = Counter()
    for coins in itertools.product([False, True], repeat=10):
        coins = np.array(coins)
        pos = np.asarray(h.transition(js, acts, coins)[1].agent_pos)
        r_next = ref.ref_step(rs, acts, coins)[0]
        _same(f"coins {coins.astype(int).tolist()}", "agent_pos", pos, r_next["agent_pos"])
        at_target = [i for i in range(5) if tuple(pos[i]) == (7, 7)]
        assert len(at_target) == 1
        wins[at_target[0]] += 1
        others = [i for i in range(5) if i != at_target[0]]
        _same("losers go back", "pos", pos[others], rs["agent_pos"][others])
    assert [wins[i] / 1024 for i in range(5)] == [1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2]


EPISODES = {"2-5a_2-5b": 20, "single_scen": 4, "2-8a_2-8b": 8}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_episodes_from_reset_match_reference(x64, scenario):
    h = _handle(scenario)
    n_ep = EPISODES[scenario]
    rng = np.random.default_rng(sum(map(ord, scenario)))
    keys = jax.random.split(jax.random.PRNGKey(sum(map(ord, scenario))), n_ep)
    obs, states = h.resets(keys)
    counters = Counter()
    for ep in range(n_ep):
        js = jax.tree.map(lambda x, ep=ep: x[ep], states)
        rs = ref.state_from_jax(jax.device_get(js))
        run_episode(h, rs, js, jax.tree.map(lambda x, ep=ep: x[ep], obs), rng, counters,
                    f"{scenario} episode {ep}")
    assert counters["episodes_done"] == n_ep
    # the random driver must actually exercise the tricky rules
    for key in ("collisions", "jumps_over", "action_9", "action_10", "action_11",
                "extinguished", "burned", "ignitions", "tasks_changed"):
        assert counters[key] >= 2, (key, dict(counters))
    assert counters["help_extinguish"] + counters["help_build"] >= 1, dict(counters)
    assert counters["invalid_actions"] == 0


def test_hand_built_episodes_match_reference(x64):
    h = _handle("2-5a_2-5b")
    rng = np.random.default_rng(7)
    counters = Counter()
    for name, spec in HAND_BUILT.items():
        agents, blds = spec[:2]
        t = spec[2] if len(spec) > 2 else 0
        for rep in range(5):
            rs, js = hand_built(h, agents, blds, t)
            run_episode(h, rs, js, None, rng, counters, f"{name} rep {rep}",
                        max_steps=40, first_actions=HAND_FIRST_ACTIONS.get(name))
    for key in ("collisions", "multi_collisions", "jumps_over", "help_extinguish", "help_build",
                "generalist_only_extinguish", "completed", "burned", "extinguished",
                "ignitions", "timeouts", "solved"):
        assert counters[key] >= 1, (key, dict(counters))


def _random_states(h, rng, n):
    """A batch of n random states (agents anywhere, many distance ties), after the
    hand-built layouts of HAND_BUILT when they fit the scenario."""
    env = h.env
    A, B = env.n_agents, env.n_buildings
    base = jax.device_get(env.make_state(agents=[], buildings=[]))
    lattice = [(x, y) for x in range(1, 16, 3) for y in range(1, 16, 3)]
    fields = ("agent_pos", "agent_type", "agent_valid", "bld_pos", "bld_type", "bld_valid",
              "health", "fire", "period", "ttnf", "tslf", "t")
    batch = {k: [] for k in fields}
    if A == 5:
        for spec in HAND_BUILT.values():
            js = jax.device_get(hand_built(h, *spec)[1])
            for k in fields:
                batch[k].append(np.asarray(getattr(js, k)))
    for _ in range(n):
        na, nb = int(rng.integers(1, A + 1)), int(rng.integers(1, B + 1))
        cells = [lattice[k] for k in rng.permutation(len(lattice))[:nb]]
        free = [(x, y) for x in range(16) for y in range(16) if (x, y) not in cells]
        if rng.random() < 0.5:  # crowd agents near the buildings and the map edge
            near = [c for c in free if min(_dist(c, b) for b in cells) <= 2 or 0 in c or 15 in c]
            free = near if len(near) >= na else free
        agent_pos = np.array(base.agent_pos)
        agent_pos[:na] = [free[k] for k in rng.permutation(len(free))[:na]]
        agent_type = np.full(A, -1)
        agent_type[:na] = rng.integers(2, 5, na)
        bld_pos = np.array(base.bld_pos)
        bld_pos[:nb] = cells
        health, fire = np.zeros(B), np.zeros(B)
        period, ttnf, tslf = np.ones(B), np.zeros(B), np.zeros(B)
        for b in range(nb):
            kind = rng.random()
            health[b] = 1.0 if kind < 0.15 else 0.0 if kind < 0.3 else rng.random()
            if 0.0 < health[b] < 1.0:
                fire[b] = rng.choice([0.0, 0.0, 1.0, rng.random()])
            period[b] = rng.integers(10, 81)
            ttnf[b] = rng.integers(1, period[b] + 1)
            tslf[b] = period[b] - ttnf[b]
        for k, v in (("agent_pos", agent_pos), ("agent_type", agent_type),
                     ("agent_valid", np.arange(A) < na), ("bld_pos", bld_pos),
                     ("bld_type", rng.integers(0, 2, B)), ("bld_valid", np.arange(B) < nb),
                     ("health", health), ("fire", fire), ("period", period), ("ttnf", ttnf),
                     ("tslf", tslf), ("t", rng.integers(0, 150))):
            batch[k].append(v)
    total = len(batch["t"])
    leaves = {k: np.stack(v).astype(np.asarray(getattr(base, k)).dtype) for k, v in batch.items()}
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (total,) + np.shape(x)), base)
    return _canonical(stacked.replace(**leaves)), total


@pytest.mark.parametrize("scenario", ["2-5a_2-5b", "2-8a_2-8b"])
def test_obs_and_heuristic_on_random_states(x64, scenario):
    """Entities, masks, avail (with and without heuristic allocation) and the heuristic from
    state and from observation, on many random states with distance ties."""
    h = _handle(scenario)
    rng = np.random.default_rng(3)
    states, n = _random_states(h, rng, 250)
    obs_h, obs_p, from_state, from_obs = jax.device_get(h.observe(states))
    host = jax.device_get(states)
    ties = 0
    for k in range(n):
        rs = ref.state_from_jax(jax.tree.map(lambda x, k=k: x[k], host))
        want, nt = ref.ref_heuristic(rs, return_ties=True)
        ties += nt
        where = f"{scenario} random state {k}"
        check_obs(where, jax.tree.map(lambda x, k=k: x[k], obs_h), ref.ref_obs(rs, True))
        check_obs(where, jax.tree.map(lambda x, k=k: x[k], obs_p), ref.ref_obs(rs, False))
        _same(where, "heuristic(state)", from_state[k], want)
        _same(where, "heuristic(obs)", from_obs[k], want)
    assert ties >= 30, ties


def test_invalid_action_is_stay(x64):
    h = _handle("2-5a_2-5b")
    agents = [(BU, 7, 8), (FF, 3, 3), (GE, 10, 10), (FF, 12, 12)]
    blds = [(F, 7, 7, 0.5, 0.0, 60), (S, 1, 1, 0.5, 0.5, 20)]
    rs, js = hand_built(h, agents, blds)
    # 0: move S into the building; 1: extinguish with no building adjacent; 2: out of range;
    # 3: a valid move N; 4 (padded): garbage, ignored
    bad = np.array([3, 9, 12, 1, 7], np.int32)
    stay = np.array([0, 0, 0, 1, 0], np.int32)
    coins = np.zeros(10, bool)
    out_bad = jax.device_get(h.transition(js, bad, coins))
    out_stay = jax.device_get(h.transition(js, stay, coins))
    assert int(out_bad[4]["invalid_actions"]) == 3
    assert int(out_bad[1].stats.invalid_actions) == 3
    assert int(out_stay[4]["invalid_actions"]) == 0
    _same("invalid", "agent_pos", out_bad[1].agent_pos, out_stay[1].agent_pos)
    _same("invalid", "pos of agents 0-2", out_bad[1].agent_pos[:3], rs["agent_pos"][:3])
    for a, b in zip(jax.tree.leaves(out_bad[0]), jax.tree.leaves(out_stay[0])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out_bad[1].health, out_stay[1].health)
    np.testing.assert_array_equal(out_bad[1].fire, out_stay[1].fire)
    assert out_bad[2] == out_stay[2]
    check_step("invalid actions", out_bad, ref.ref_step(rs, bad, coins))
    # negative actions are invalid too
    neg = np.array([-1, -7, 0, 0, 0], np.int32)
    out_neg = jax.device_get(h.transition(js, neg, coins))
    assert int(out_neg[4]["invalid_actions"]) == 2
    check_step("negative action", out_neg, ref.ref_step(rs, neg, coins))


def test_x64_dtypes_are_stable(x64):
    """Under x64 the state keeps its documented dtypes (int32 integers, float64 floats)
    through reset and transition, like make_state's; a drifting dtype retraces jit on every
    step and breaks `lax.scan` carries. Shapes only (`eval_shape`), nothing is compiled."""
    env = envs_jax.make("savethecity")
    want = jax.eval_shape(lambda: env.make_state([(FF, 7, 8)], [(F, 7, 7, 0.5, 0.5, 60)]))
    obs, s0 = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    _, s1, *_ = jax.eval_shape(env.transition, want, jnp.zeros(5, jnp.int32), jnp.zeros(10, bool))
    problems = []
    for name, got in (("make_state", want), ("reset", s0), ("transition", s1)):
        problems += [(name, jax.tree_util.keystr(p), str(g.dtype)) for (p, g) in
                     jax.tree_util.tree_leaves_with_path(got)
                     if g.dtype not in (jnp.int32, jnp.float64, jnp.bool_)]
    if obs.avail_actions.dtype != jnp.int32:
        problems.append(("reset obs", ".avail_actions", str(obs.avail_actions.dtype)))
    if obs.entities.dtype != jnp.float64:
        problems.append(("reset obs", ".entities", str(obs.entities.dtype)))
    assert not problems, f"leaves neither int32, float64 nor bool under x64: {problems}"


def test_x64_is_local():
    """Runs after the x64 tests of this module: the default dtypes are 32-bit again.

    (A fresh env on purpose: with jax 0.10.2 a jitted function first traced under x64 that
    closes over numpy int64 constants fails to lower when called again without x64.)"""
    assert not jax.config.jax_enable_x64
    assert jnp.asarray(1.0).dtype == jnp.float32
    assert jax.jit(lambda x: x * 2)(np.ones(2)).dtype == jnp.float32
    env = envs_jax.make("savethecity")
    obs, state = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    assert state.health.dtype == jnp.float32 and obs.entities.dtype == jnp.float32
    assert state.agent_pos.dtype == jnp.int32 and obs.avail_actions.dtype == jnp.int32
