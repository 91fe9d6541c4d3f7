"""SaveTheCity rules against hand-computed values (spec section 12, items 1-12)."""

from __future__ import annotations

import itertools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.savethecity import heuristic_allocation
from envs_jax.savethecity.scenarios import building_candidates, get_scenarios, spawn_candidates

F_BLD, S_BLD, FF, BU, GE = 0, 1, 2, 3, 4  # type ids
NORM = 20.0 / 56.0
NO_COINS = jnp.zeros(10, bool)


@pytest.fixture(scope="module")
def env():
    return envs_jax.make("savethecity")


@pytest.fixture(scope="module")
def transition(env):
    return jax.jit(env.transition)


def act(*a, n=5):
    return jnp.array(list(a) + [0] * (n - len(a)), jnp.int32)


# ------------------------------------------------------------------ 1-3: constants, tables
def test_constants(env):
    assert (env.n_agents, env.n_buildings, env.n_entities, env.n_tasks) == (5, 6, 11, 6)
    assert (env.n_actions, env.entity_dim, env.episode_limit) == (12, 58, 150)
    assert env.max_reward == 56.0
    assert env.reward_norm == pytest.approx(20 / 56)
    obs, state = jax.jit(env.reset)(jax.random.key(0))
    assert obs.entities.shape == (11, 58) and obs.entities.dtype == jnp.float32
    assert obs.avail_actions.shape == (5, 12) and obs.avail_actions.dtype == jnp.int32
    for m, shape in [("obs_mask", (11, 11)), ("entity_mask", (11,)),
                     ("entity2task_mask", (11, 6)), ("task_mask", (6,))]:
        assert getattr(obs, m).shape == shape and getattr(obs, m).dtype == jnp.bool_


def test_scenario_table_is_the_papers():
    t = get_scenarios("2-5a_2-5b")
    assert t.teams == ("BG", "FG", "BFG", "BFFFG", "BFFGG", "BBBFG", "BBFG", "BBFFG", "BF",
                       "BFGG", "BFFG", "BBFGG", "BFGGG")
    assert Counter(len(s) for s in t.teams) == {2: 3, 3: 1, 4: 3, 5: 6}
    np.testing.assert_array_equal(t.min_blds, t.n_agents + 1)
    np.testing.assert_array_equal(t.max_blds, t.n_agents + 1)
    letters = {"B": BU, "F": FF, "G": GE}
    for k, team in enumerate(t.teams):
        assert list(t.agent_types[k, : len(team)]) == [letters[c] for c in team]
    assert get_scenarios("2-8a_2-8b").n_scenarios == 59
    assert get_scenarios("24a_24b").n_scenarios == 253
    single = get_scenarios("single_scen")
    assert single.teams == ("FFFBBBGG",) and list(single.bld_types[0]) == [0, 0, 0, 0, 1, 1, 1, 1]

    sanity = get_scenarios("1a_1b")  # the one-agent navigation check used by benchmarks/
    assert sanity.teams == ("B",) and list(sanity.bld_types[0]) == [0]
    env = envs_jax.make("savethecity", scenario="1a_1b", game={"init_fire_chance": 0.0})
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert (env.n_agents, env.n_tasks) == (1, 1)
    assert float(state.fire[0]) == 0.0 and int(state.ttnf[0]) >= 60  # fast burn: 60..80


def test_decode_entities_inverts_the_features():
    """Types and cells read back from observations equal the state's, for a batch of resets."""
    from envs_jax.savethecity.env import decode_entities

    env = envs_jax.make("savethecity")
    obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(3), 16))
    etype, pos = decode_entities(obs.entities)  # [16, E], [16, E, 2]
    n_agents = env.n_agents
    for e in range(16):
        a, b = np.asarray(state.agent_valid[e]), np.asarray(state.bld_valid[e])
        np.testing.assert_array_equal(pos[e, :n_agents][a], state.agent_pos[e][a])
        np.testing.assert_array_equal(etype[e, :n_agents][a], state.agent_type[e][a])
        np.testing.assert_array_equal(pos[e, n_agents:][b], state.bld_pos[e][b])
        np.testing.assert_array_equal(etype[e, n_agents:][b], state.bld_type[e][b])


def test_spawn_and_lattice_cells():
    assert {tuple(c) for c in spawn_candidates(2, 3)} == {(7, 8), (8, 7), (8, 8)}
    assert {tuple(c) for c in spawn_candidates(3, 3)} == {(7, 8), (8, 7), (8, 8)}
    block = {(x, y) for x in range(6, 10) for y in range(6, 10)} - {(7, 7)}
    for n in (4, 5, 15):
        assert {tuple(c) for c in spawn_candidates(n, 3)} == block
    cells = building_candidates(3)
    assert len(cells) == 25 and tuple(cells[0]) == (1, 1) and tuple(cells[1]) == (1, 4)


def test_bad_names_give_clear_errors():
    with pytest.raises(ValueError, match="allowed"):
        envs_jax.make("savethecity", scenario="nope")
    with pytest.raises(ValueError, match="allowed"):
        envs_jax.make("savethecity", colour="red")
    with pytest.raises(ValueError, match="allowed"):
        envs_jax.make("savethecity", game={"fire_speed": 2.0})
    with pytest.raises(ValueError, match="allowed"):
        envs_jax.make("starcraft3")


# ------------------------------------------------------------------------ 4: reset
def test_reset_distributions(env):
    n_resets = 100_000
    _, st = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(1), n_resets))
    st = jax.tree.map(np.asarray, st)
    n = st.agent_valid.sum(1)
    m = st.bld_valid.sum(1)
    np.testing.assert_array_equal(m, n + 1)
    for size, p in {2: 3 / 13, 3: 1 / 13, 4: 3 / 13, 5: 6 / 13}.items():
        se = np.sqrt(p * (1 - p) / n_resets)
        assert abs(np.mean(n == size) - p) < 5 * se, size
    v = st.bld_valid
    nb = v.sum()

    def close(frac, p):
        assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / nb), (frac, p)

    close(np.mean(st.bld_type[v] == S_BLD), 0.5)
    close(np.mean(st.fire[v] == 1.0), 0.4)
    assert set(np.unique(st.fire[v])) == {0.0, 1.0}
    h = st.health[v]
    low = (h > 0.25) & (h <= 0.40)
    high = (h > 0.60) & (h <= 0.75)
    assert np.all(low | high)
    close(np.mean(low), 0.5)
    per, bt = st.period[v], st.bld_type[v]
    assert set(np.unique(per[bt == F_BLD])) == set(range(60, 81))
    assert set(np.unique(per[bt == S_BLD])) == set(range(10, 31))
    counts = np.bincount(per[bt == S_BLD] - 10, minlength=21)
    expected = counts.sum() / 21
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    np.testing.assert_array_equal(st.ttnf[v], st.period[v])
    assert np.all(st.tslf == 0) and np.all(st.t == 0)

    # Positions: agents distinct, in the spawn cluster; buildings on distinct lattice cells.
    lattice = {tuple(c) for c in building_candidates(3)}
    for i in range(0, n_resets, 997):
        ag = [tuple(p) for p in st.agent_pos[i][st.agent_valid[i]]]
        bl = [tuple(p) for p in st.bld_pos[i][st.bld_valid[i]]]
        assert len(set(ag)) == len(ag) and len(set(bl)) == len(bl)
        assert set(bl) <= lattice and not set(ag) & lattice
        assert set(ag) <= {tuple(c) for c in spawn_candidates(len(ag), 3)}
    # every spawn cell and lattice cell gets used
    firsts = {tuple(p) for p in st.agent_pos[n == 5][:, 0]}
    assert len(firsts) == 15
    assert len({tuple(p) for p in st.bld_pos[:, 0]}) == 25


def test_reset_options(env):
    keys = jax.random.split(jax.random.key(2), 200)
    _, st = jax.jit(jax.vmap(lambda k: env.reset(k, index=5)))(keys)
    assert np.all(np.asarray(st.scenario) == 5)
    assert np.all(np.asarray(st.agent_type)[:, :5] == [BU, BU, BU, FF, GE])
    _, st = jax.jit(jax.vmap(lambda k: env.reset(k, n_tasks=5)))(keys)
    assert np.all(np.asarray(st.bld_valid).sum(1) == 5)
    assert set(np.asarray(st.scenario)) == {6, 9, 10}  # the three 4-agent teams
    with pytest.raises(ValueError, match="n_tasks"):
        env.reset(keys[0], n_tasks=9)


# ------------------------------------------------------------------ 5: availability
def test_availability(env):
    st = env.make_state(
        agents=[(FF, 0, 0), (BU, 0, 1), (GE, 2, 0), (GE, 5, 4), (FF, 4, 5)],
        buildings=[(F_BLD, 4, 4, 0.5, 0.3, 60), (S_BLD, 1, 1, 0.5, 0.0, 20)],
    )
    av = np.asarray(env.avail_actions(st))
    # firefighter at the corner: N is the builder, E free, S and W off the map, no jumps
    np.testing.assert_array_equal(av[0, :9], [1, 0, 1, 0, 0, 0, 0, 0, 0])
    # (0,0) is diagonal to building (1,1): no interaction
    np.testing.assert_array_equal(av[0, 9:], [0, 0, 0])
    # builder at (0,1): E is building 1 (not on fire, active) -> build with code 2+1
    np.testing.assert_array_equal(av[1], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0])
    # generalist at (2,0): W2 jumps over... (0,0) is occupied -> no; N2 (2,2) free
    np.testing.assert_array_equal(av[2, :9], [1, 1, 1, 0, 1, 1, 1, 0, 0])
    # generalist at (5,4) east of burning building 0: extinguish and freeze with code 2
    # W is the building, W2 (3,4) free (jump over the building), N (5,5) free
    np.testing.assert_array_equal(av[3], [1, 1, 1, 1, 0, 1, 1, 1, 1, 2, 0, 2])
    # firefighter north of building 0: extinguish only (no freeze), S blocked by the building
    np.testing.assert_array_equal(av[4], [1, 1, 1, 0, 1, 0, 0, 0, 0, 2, 0, 0])
    # complete and burned buildings offer nothing; padded agent rows are [1, 0, ...]
    done = st.replace(health=st.health.at[0].set(1.0), fire=st.fire.at[0].set(0.0))
    assert np.all(np.asarray(env.avail_actions(done))[[3, 4], 9:] == 0)
    burnt = st.replace(health=st.health.at[0].set(0.0), fire=st.fire.at[0].set(0.0))
    assert np.all(np.asarray(env.avail_actions(burnt))[[3, 4], 9:] == 0)
    small = env.make_state([(FF, 8, 8)], [(F_BLD, 1, 1, 0.5, 0.0, 60)])
    np.testing.assert_array_equal(np.asarray(env.avail_actions(small))[1:], [[1] + [0] * 11] * 4)


def test_generalist_jumps_over_agent(env, transition):
    st = env.make_state([(GE, 8, 8), (FF, 8, 9)], [(F_BLD, 1, 1, 0.5, 0.0, 60)])
    av = np.asarray(env.avail_actions(st))
    assert av[0, 1] == 0 and av[0, 5] == 1  # N blocked, N2 over the firefighter allowed
    _, s2, *_ = transition(st, act(5, 0), NO_COINS)
    assert tuple(np.asarray(s2.agent_pos[0])) == (8, 10)


# ---------------------------------------------------------------- 6: building dynamics
def _one_building(env, agents, fire=0.5, health=0.5, btype=F_BLD):
    """Agents around a building at (5,5) in N, E, S, W order."""
    cells = [(5, 6), (6, 5), (5, 4), (4, 5)]
    return env.make_state([(t, *cells[k]) for k, t in enumerate(agents)],
                          [(btype, 5, 5, health, fire, 60)])


@pytest.mark.parametrize(
    "agents,actions,fire,health",
    [
        ([GE], [9], 0.55, 0.5 - 0.55 * 0.035),  # generalist alone: fire grows
        ([BU, GE], [9, 9], 0.375, 0.5 - 0.375 * 0.035),
        ([BU, FF, GE], [9, 9, 9], 0.125, 0.5 - 0.125 * 0.035),
        ([FF, GE], [9, 9], 0.25, 0.5 - 0.25 * 0.035),
        ([GE], [11], 0.55, 0.5),  # freeze: growth but no damage
        ([FF, GE], [9, 11], 0.25, 0.5),
        ([BU, GE, GE], [9, 9, 9], 0.375, 0.5 - 0.375 * 0.035),  # help counted once
        ([FF, FF], [9, 9], 0.0, 0.5),  # two firefighters: 0.5 removed -> out, extinguish event
    ],
)
def test_fire_dynamics(env, transition, agents, actions, fire, health):
    st = _one_building(env, agents, fire=0.5)
    _, s2, *_ = transition(st, act(*actions), NO_COINS)
    assert float(s2.fire[0]) == pytest.approx(fire, abs=1e-6)
    assert float(s2.health[0]) == pytest.approx(health, abs=1e-6)


@pytest.mark.parametrize(
    "agents,actions,health",
    [
        ([FF, GE], [10, 10], 0.5625),
        ([BU, GE], [10, 10], 0.625),
        ([GE], [10], 0.5),
        ([FF], [10], 0.50625),
        ([BU, BU], [10, 10], 0.75),
    ],
)
def test_build_dynamics(env, transition, agents, actions, health):
    st = _one_building(env, agents, fire=0.0)
    _, s2, *_ = transition(st, act(*actions), NO_COINS)
    assert float(s2.health[0]) == pytest.approx(health, abs=1e-6)
    assert float(s2.fire[0]) == 0.0


def test_extinguish_and_completion_rewards(env, transition):
    st = _one_building(env, [FF], fire=0.25)
    _, s2, r, done, info = transition(st, act(9), NO_COINS)
    assert float(s2.fire[0]) == 0.0
    assert float(r) == pytest.approx(0.5 * NORM, abs=1e-6)
    assert float(info["task_rewards"][0]) == pytest.approx(0.5 * NORM, abs=1e-6)
    assert int(s2.stats.fires_extinguished) == 1

    # two buildings so that completing one does not end the episode
    st = env.make_state([(BU, 5, 6)], [(F_BLD, 5, 5, 0.95, 0.0, 60), (S_BLD, 13, 13, 0.5, 0, 20)])
    _, s2, r, done, info = transition(st, act(10), NO_COINS)
    assert float(s2.health[0]) == 1.0 and not bool(done)
    assert float(r) == pytest.approx((10 * 0.05 + 1.0) * NORM, abs=1e-5)
    assert float(info["task_rewards"][0]) == pytest.approx((10 * 0.05 + 20) * NORM, abs=1e-5)
    assert bool(info["tasks_terminated"][0]) and bool(info["tasks_changed"])
    assert int(s2.ttnf[0]) == 1000 and int(s2.tslf[0]) == 0


def test_burn_down(env, transition):
    st = env.make_state([(FF, 8, 8)], [(F_BLD, 5, 5, 0.02, 1.0, 60), (S_BLD, 13, 13, 0.5, 0, 20)])
    _, s2, r, done, info = transition(st, act(0), NO_COINS)
    assert float(s2.health[0]) == 0.0 and float(s2.fire[0]) == 0.0
    assert int(s2.stats.buildings_burned) == 1 and int(s2.stats.fires_extinguished) == 0
    assert float(r) == pytest.approx((10 * -0.02 - 20) * NORM, abs=1e-5)
    assert bool(info["tasks_terminated"][0]) and not bool(done)


# --------------------------------------------------------------------------- 7: timers
def test_fire_timer_ignores_extinguishing(env, transition):
    period = 12
    st = env.make_state([(FF, 5, 6)], [(S_BLD, 5, 5, 0.9, 0.0, period),
                                       (S_BLD, 13, 13, 0.5, 0.0, 30)])
    ignitions = []
    for t in range(1, 3 * period + 1):
        fire_before = float(st.fire[0])
        # extinguish whenever burning (timer must not be reset by it), else wait
        a = 9 if fire_before > 0 else 0
        _, st, r, done, info = transition(st, act(a), NO_COINS)
        if float(st.fire[0]) == 1.0:
            ignitions.append(t)
            if fire_before > 0:
                # ignition on the step of an extinguish event: fire 1.0 and +0.5 still paid
                assert int(st.stats.fires_extinguished) >= 1
        assert int(st.t) == t
    assert ignitions == [period, 2 * period, 3 * period]


def test_ignition_same_step_as_extinguish(env, transition):
    st = env.make_state([(FF, 5, 6)], [(S_BLD, 5, 5, 0.9, 0.25, 20, 1, 19),
                                       (S_BLD, 13, 13, 0.5, 0.0, 30)])
    _, s2, r, _, info = transition(st, act(9), NO_COINS)
    assert float(s2.fire[0]) == 1.0 and int(s2.ttnf[0]) == 20 and int(s2.tslf[0]) == 0
    assert int(s2.stats.fires_extinguished) == 1
    burn = 0.0  # extinguished fire does no damage this step
    assert float(info["task_rewards"][0]) == pytest.approx((0.5 - burn) * NORM, abs=1e-6)


# ------------------------------------------------------------------------ 8: collisions
@pytest.mark.parametrize(
    "agents,actions,expected",
    [
        # two contenders for (5,5)
        ([(FF, 4, 5), (BU, 6, 5)], [2, 4], [1 / 2, 1 / 2]),
        ([(FF, 4, 5), (BU, 6, 5), (FF, 5, 6)], [2, 4, 3], [1 / 4, 1 / 4, 1 / 2]),
        ([(FF, 4, 5), (BU, 6, 5), (FF, 5, 6), (BU, 5, 4)], [2, 4, 3, 1],
         [1 / 8, 1 / 8, 1 / 4, 1 / 2]),
        # a generalist jumping in from distance 2 is the fifth contender
        ([(FF, 4, 5), (BU, 6, 5), (FF, 5, 6), (BU, 5, 4), (GE, 5, 3)], [2, 4, 3, 1, 5],
         [1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2]),
    ],
)
def test_collision_winner_frequencies(env, transition, agents, actions, expected):
    """Exact: enumerate every coin table, count who ends in the contested cell."""
    st = env.make_state(agents, [(F_BLD, 13, 13, 0.5, 0.0, 60)])
    tables = jnp.array(list(itertools.product([False, True], repeat=10)))
    run = jax.jit(jax.vmap(lambda c: transition(st, act(*actions), c)[1].agent_pos))
    pos = np.asarray(run(tables))
    k = len(agents)
    in_cell = np.all(pos[:, :k] == [5, 5], -1)
    assert np.all(in_cell.sum(1) == 1)
    np.testing.assert_allclose(in_cell.mean(0), expected)
    # losers are back where they started
    starts = np.array([a[1:] for a in agents])
    assert np.all(np.all(pos[:, :k] == starts, -1) | in_cell)


def test_random_coins_and_invariants(env):
    st = env.make_state([(FF, 4, 5), (BU, 6, 5)], [(F_BLD, 13, 13, 0.5, 0.0, 60)])
    keys = jax.random.split(jax.random.key(3), 4000)
    pos = jax.jit(jax.vmap(lambda k: env.step_env(k, st, act(2, 4))[1].agent_pos))(keys)
    first_wins = np.mean(np.all(np.asarray(pos)[:, 0] == [5, 5], -1))
    assert abs(first_wins - 0.5) < 5 * np.sqrt(0.25 / 4000)


def _random_rollout(env, key, n_envs=256, n_steps=200):
    """Random valid actions biased towards moves: returns stacked per-step outputs."""
    step = jax.vmap(env.step)

    def body(carry, k):
        obs, state = carry
        ka, ks = jax.random.split(k)
        logits = jnp.where(obs.avail_actions > 0, 0.0, -jnp.inf)
        a = jax.random.categorical(ka, logits).astype(jnp.int32)
        obs2, state2, r, d, info = step(jax.random.split(ks, n_envs), state, a)
        out = dict(state=state, next_state=state2, obs=obs2, reward=r, done=d, info=info)
        return (obs2, state2), out

    obs, state = jax.vmap(env.reset)(jax.random.split(key, n_envs))
    _, outs = jax.lax.scan(body, (obs, state), jax.random.split(key, n_steps))
    return outs


@pytest.fixture(scope="module")
def rollout(env):
    out = jax.jit(lambda k: _random_rollout(env, k))(jax.random.key(7))
    return jax.tree.map(np.asarray, out)


def test_position_invariants(rollout):
    st = rollout["next_state"]
    pos, valid = st.agent_pos, st.agent_valid
    inside = np.all((pos >= 0) & (pos < 16), -1)
    assert np.all(inside[valid])
    T, N, A, _ = pos.shape
    cells = pos[..., 0] * 16 + pos[..., 1]
    bcells = st.bld_pos[..., 0] * 16 + st.bld_pos[..., 1]
    for t in range(0, T, 7):
        for n in range(N):
            c = cells[t, n][valid[t, n]]
            assert len(set(c)) == len(c)
            assert not set(c) & set(bcells[t, n][st.bld_valid[t, n]])


# --------------------------------------------------------------------------- 9: rewards
def test_reward_identity(rollout):
    """reward - sum(task_rewards) = (20/56)(20 solved_now - 19 completions_now) per step."""
    info = rollout["info"]
    completions = (
        rollout["next_state"].stats.buildings_completed - rollout["state"].stats.buildings_completed
    )
    done = rollout["done"]
    # on a done step the next state is a fresh episode: read completions from the end stats
    completions = np.where(done, info["buildings_completed"]
                           - rollout["state"].stats.buildings_completed, completions)
    lhs = rollout["reward"] - info["task_rewards"].sum(-1)
    rhs = NORM * (20 * info["solved"] * done - 19 * completions)
    np.testing.assert_allclose(lhs, rhs, atol=2e-5)
    assert done.sum() > 100  # the rollout contains many episode ends


def test_solved_bonus_only_on_terminal_step(env, transition):
    st = env.make_state([(BU, 5, 6)], [(F_BLD, 5, 5, 0.95, 0.0, 60)])
    _, s2, r, done, info = transition(st, act(10), NO_COINS)
    assert bool(done) and float(info["solved"]) == 1.0 and not bool(info["episode_limit"])
    assert float(r) == pytest.approx((0.5 + 1 + 20) * NORM, abs=1e-5)
    assert float(info["task_rewards"][0]) == pytest.approx((0.5 + 20) * NORM, abs=1e-5)
    assert float(info["prop_buildings_completed"]) == 1.0


# ----------------------------------------------------------------------- 10: termination
def test_termination_cases(env, transition):
    two = [(F_BLD, 5, 5, 0.5, 0.0, 60), (S_BLD, 13, 13, 0.5, 0.0, 30)]
    st = env.make_state([(BU, 8, 8)], two, t=149)
    _, s2, r, done, info = transition(st, act(0), NO_COINS)
    assert bool(done) and bool(info["episode_limit"]) and float(info["solved"]) == 0.0
    st = env.make_state([(BU, 8, 8)], two, t=100)
    assert not bool(transition(st, act(0), NO_COINS)[3])
    # finishing the last task on step 150 is a true terminal, not a timeout
    st = env.make_state([(BU, 5, 6)], [(F_BLD, 5, 5, 0.95, 0.0, 60)], t=149)
    _, s2, r, done, info = transition(st, act(10), NO_COINS)
    assert bool(done) and not bool(info["episode_limit"]) and float(info["solved"]) == 1.0
    # all buildings finished, one burned: terminal, not solved
    st = env.make_state([(BU, 5, 6)], [(F_BLD, 5, 5, 0.95, 0.0, 60),
                                       (F_BLD, 13, 13, 0.01, 1.0, 60)])
    _, s2, r, done, info = transition(st, act(10), NO_COINS)
    assert bool(done) and float(info["solved"]) == 0.0
    assert float(info["prop_buildings_completed"]) == 0.5
    assert int(info["buildings_burned"]) == 1 and int(info["buildings_completed"]) == 1


def test_end_on_any_burn(transition):
    env = envs_jax.make("savethecity", end_on_any_burn=True)
    st = env.make_state([(FF, 8, 8)], [(F_BLD, 5, 5, 0.02, 1.0, 60), (S_BLD, 13, 13, 0.5, 0, 20)])
    assert bool(jax.jit(env.transition)(st, act(0), NO_COINS)[3])


def test_episode_statistics_types_per_firefight(env, transition):
    st = _one_building(env, [BU, GE, GE], fire=1.0)
    _, s2, _, _, info = transition(st, act(9, 9, 11), NO_COINS)
    assert float(info["types_per_firefight"]) == 2.0  # builder and generalist types
    assert np.isnan(float(info["types_per_build"]))


# ------------------------------------------------------------------------------ 11: masks
def test_mask_polarity(env):
    st = env.make_state([(FF, 8, 8), (GE, 9, 9)],
                        [(F_BLD, 1, 1, 0.5, 0.0, 60), (F_BLD, 4, 4, 1.0, 0.0, 60),
                         (S_BLD, 7, 13, 0.0, 0.0, 20)])
    obs = env.get_obs(st)
    om = np.asarray(obs.obs_mask).astype(int)
    real = [0, 1, 5, 6, 7]
    expected = np.ones((11, 11), int)
    for r in (0, 1):
        expected[r, real] = 0
    for r in (5, 6, 7):
        expected[r, [5, 6, 7]] = 0  # buildings see buildings only
    np.testing.assert_array_equal(om, expected)
    np.testing.assert_array_equal(obs.entity_mask, [0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    e2t = np.asarray(obs.entity2task_mask).astype(int)
    expected = np.ones((11, 6), int)
    for b in range(3):
        expected[5 + b, b] = 0
    np.testing.assert_array_equal(e2t, expected)
    np.testing.assert_array_equal(obs.task_mask, [0, 1, 1, 1, 1, 1])
    ent = np.asarray(obs.entities)
    assert np.all(ent[[2, 3, 4, 8, 9, 10]] == 0)
    # building features: health, complete, burned, fire, on fire, tslf/period, period feature
    period_feat = lambda p: (1 / p - 1 / 80) / (1 / 10 - 1 / 80)  # noqa: E731
    np.testing.assert_allclose(ent[6, 51:], [1, 1, 0, 0, 0, 0, period_feat(60)], rtol=1e-6)
    np.testing.assert_allclose(ent[7, 51:], [0, 0, 1, 0, 0, 0, period_feat(20)], rtol=1e-6)
    assert period_feat(10) == 1 and period_feat(80) == 0
    assert ent[0, FF] == 1 and ent[0, 5 + 8] == 1 and ent[0, 21 + 8] == 1
    assert ent[0, 37] == 0.5 and ent[0, 38] == 0.5


def test_task_mask_matches_tasks_terminated(rollout):
    info, obs, done = rollout["info"], rollout["obs"], rollout["done"]
    term_obs = info["terminal_obs"]
    np.testing.assert_array_equal(term_obs.task_mask, info["tasks_terminated"])
    not_done = ~done
    np.testing.assert_array_equal(obs.task_mask[not_done], info["tasks_terminated"][not_done])


def _heuristic_ref(agents, blds):
    """Spec section 10 written out: agents (type,x,y); blds (x,y,active,on_fire)."""
    out = []
    for ty, x, y in agents:
        order = sorted((abs(bx - x) + abs(by - y), b) for b, (bx, by, act, _) in enumerate(blds)
                       if act)
        fire = [b for _, b in order if blds[b][3]]
        calm = [b for _, b in order if not blds[b][3]]
        prio = calm + fire if ty == BU else fire + calm
        out.append(prio[0] if prio else -1)
    return out


def test_heuristic_allocation_with_ties(env):
    from_state = jax.jit(heuristic_allocation)
    from_obs = jax.jit(lambda st: heuristic_allocation(env.get_obs(st)))
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = rng.integers(1, 6), rng.integers(1, 7)
        cells = building_candidates(3)[rng.choice(25, m, replace=False)]
        free = [c for c in itertools.product(range(16), range(16)) if c not in map(tuple, cells)]
        apos = [free[i] for i in rng.choice(len(free), n, replace=False)]
        types = rng.choice([FF, BU, GE], n)
        health = rng.choice([0.0, 0.5, 1.0], m, p=[0.15, 0.7, 0.15])
        fire = np.where((health > 0) & (health < 1), rng.choice([0.0, 0.6], m), 0.0)
        st = env.make_state([(int(t), *map(int, p)) for t, p in zip(types, apos)],
                            [(F_BLD, int(c[0]), int(c[1]), float(h), float(f), 60)
                             for c, h, f in zip(cells, health, fire)])
        blds = [(int(c[0]), int(c[1]), 0 < h < 1, f > 0) for c, h, f in zip(cells, health, fire)]
        ref = _heuristic_ref([(t, *p) for t, p in zip(types, apos)], blds)
        for alloc in (from_state(st), from_obs(st)):
            alloc = np.asarray(alloc)
            got = [int(np.argmax(r)) if r.any() else -1 for r in alloc[:n]]
            assert got == ref
            assert not alloc[n:].any()
    # ties: equal distance goes to the lower building index
    st = env.make_state([(FF, 7, 8)], [(F_BLD, 7, 10, 0.5, 0.5, 60), (F_BLD, 7, 6, 0.5, 0.5, 60)])
    assert int(np.argmax(heuristic_allocation(st)[0])) == 0


def test_heuristic_alloc_flag_fills_entity2task():
    env = envs_jax.make("savethecity", heuristic_alloc=True)
    obs, st = env.reset(jax.random.key(4))
    alloc = np.asarray(heuristic_allocation(st))
    np.testing.assert_array_equal(np.asarray(obs.entity2task_mask)[:5], ~alloc)


# ---------------------------------------------------------------------- 12: JAX hygiene
def test_jit_matches_eager_and_vmap_matches_loop(env):
    key = jax.random.key(11)
    obs, st = env.reset(key)
    a = act(1, 2, 3, 4, 0)
    eager = env.step(key, st, a)
    jitted = jax.jit(env.step)(key, st, a)
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    keys = jax.random.split(key, 8)
    obs_b, st_b = jax.jit(jax.vmap(env.reset))(keys)
    acts = jnp.tile(a, (8, 1))
    batched = jax.jit(jax.vmap(env.step))(keys, st_b, acts)
    step = jax.jit(env.step)
    for i in range(8):
        single = step(keys[i], jax.tree.map(lambda x, i=i: x[i], st_b), acts[i])
        for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y)[i], rtol=1e-6, atol=1e-6)


def test_vmap_over_many_envs_compiles_once(env):
    traces = []

    def step(k, s, a):
        traces.append(1)
        return env.step(k, s, a)

    f = jax.jit(jax.vmap(step))
    reset = jax.jit(jax.vmap(env.reset))
    n = 1024
    for seed in range(3):
        keys = jax.random.split(jax.random.key(seed), n)
        _, st = reset(keys)
        out = f(keys, st, jnp.zeros((n, 5), jnp.int32))
    jax.block_until_ready(out)
    assert len(traces) == 1


def test_auto_reset_keeps_terminal_observation(env):
    st = env.make_state([(BU, 5, 6)], [(F_BLD, 5, 5, 0.95, 0.0, 60)])
    key = jax.random.key(5)
    obs, s2, r, done, info = jax.jit(env.step)(key, st, act(10))
    assert bool(done)
    term = info["terminal_obs"]
    assert float(term.entities[5, 51]) == 1.0  # the completed building, health 1
    assert bool(term.task_mask[0])
    assert int(s2.t) == 0 and int(s2.stats.buildings_completed) == 0  # a fresh episode
    assert int(info["buildings_completed"]) == 1
    expected_obs = jax.jit(env.get_obs)(s2)
    for x, y in zip(jax.tree.leaves(obs), jax.tree.leaves(expected_obs)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("scenario", ["2-8a_2-8b", "single_scen", "12a_12b", "2-8a_2-8b_sim_Q2"])
def test_other_families_step(scenario):
    env = envs_jax.make("savethecity", scenario=scenario)
    obs, st = jax.jit(env.reset)(jax.random.key(0))
    assert obs.entities.shape == (env.n_entities, 58)
    assert obs.avail_actions.shape == (env.n_agents, 12)
    acts = jnp.zeros(env.n_agents, jnp.int32)
    obs2, st2, r, d, info = jax.jit(env.step)(jax.random.key(1), st, acts)
    assert np.isfinite(float(r))
    n, m = int(st.agent_valid.sum()), int(st.bld_valid.sum())
    table = get_scenarios(scenario)
    s = int(st.scenario)
    assert n == table.n_agents[s] and table.min_blds[s] <= m <= table.max_blds[s]
    if scenario == "single_scen":
        assert list(np.asarray(st.bld_type)) == [0, 0, 0, 0, 1, 1, 1, 1]


# ------------------------------------------- the vectorised loops against their literal forms
@pytest.mark.parametrize("impl", ["bits", "slots"])
def test_draw_without_replacement_is_the_list_pop_loop(impl):
    """Sampling positions (spec 4.5, 4.6a) equals `lst.pop(int(u * len(lst)))`, 24 of 25 too;
    the one-word bitmask form (n_max <= 32, bit 31 included) and the slot-mask form alike."""
    from envs_jax.savethecity import env as env_module

    draw = (env_module._draw_without_replacement if impl == "bits"
            else env_module._draw_without_replacement_slots)
    rng = np.random.default_rng(0)
    for k, n, n_max in ((1, 1, 4), (3, 9, 9), (5, 7, 25), (24, 25, 25), (25, 25, 25),
                        (32, 32, 32), (10, 31, 32), (6, 30, 40)):
        u = rng.random((200, k)).astype(np.float32)
        got = np.asarray(jax.vmap(lambda r, n=n, m=n_max: draw(r, jnp.int32(n), m))(u))
        want = []
        for row in u:
            lst = list(range(n))
            want.append([lst.pop(min(int(np.float32(x) * np.float32(len(lst))), len(lst) - 1))
                         for x in row])
        np.testing.assert_array_equal(got, np.array(want))


def test_collision_walk_equals_pair_loop_with_many_agents():
    """The king-of-the-hill walk (spec 6.5) equals the original's pair loop, up to 24 agents
    crowded on a few cells (the enumerated k <= 5 cases above cover the probabilities)."""
    from envs_jax.savethecity.env import _collision_losers

    def pair_loop(pos, valid, coins):
        lost, p = np.zeros(len(pos), bool), 0
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                if (valid[i] and valid[j] and not lost[i] and not lost[j]
                        and tuple(pos[i]) == tuple(pos[j])):
                    lost[j if coins[p] else i] = True
                p += 1
        return lost

    rng = np.random.default_rng(1)
    for a in (2, 5, 11, 24):
        pos = rng.integers(0, 3, size=(300, a, 2))
        valid = rng.random((300, a)) < 0.9
        coins = rng.random((300, a * (a - 1) // 2)) < 0.5
        got = np.asarray(jax.jit(jax.vmap(_collision_losers))(pos, valid, coins))
        want = np.stack([pair_loop(*x) for x in zip(pos, valid, coins)])
        np.testing.assert_array_equal(got, want)
        assert want.any()


def test_move_delta_arithmetic_is_the_table():
    """The arithmetic move offsets equal the MOVE_DELTA table for every action index."""
    from envs_jax.savethecity.env import MOVE_DELTA, N_ACTIONS, _move_delta

    got = np.asarray(_move_delta(jnp.arange(N_ACTIONS)))
    np.testing.assert_array_equal(got, MOVE_DELTA)
