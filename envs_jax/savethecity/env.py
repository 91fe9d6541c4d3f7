"""SaveTheCity as a pure JAX environment (the contract is `shared/specs/savethecity.md`).

One instance is a pytree of fixed-shape arrays (`EnvState`); every per-episode size (agents,
buildings) is a mask over the scenario family's static maxima. Section numbers in comments
refer to the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, Observation
from envs_jax.rng import hash_bits, hash_uniforms
from envs_jax.savethecity import scenarios as sc

# Per agent type (indexed by type id 0..4; building ids get zeros): section 1.3.
FIRE_SPEED = np.array([0.0, 0.0, 1.0, 0.05, 0.0])
BUILD_SPEED = np.array([0.0, 0.0, 0.05, 1.0, 0.0])
CAN_FREEZE = np.array([False, False, False, False, True])
MAX_MOVE = np.array([0, 0, 1, 1, 2])
# Per building type: burn multiplier and inclusive fire-period range (section 1.4).
BURN_MULT = np.array([1.0, 0.5])
PERIOD_RANGE = np.array([[60, 80], [10, 30]])
MIN_PERIOD, MAX_PERIOD = 10, 80
HEALTH_RANGES = np.array([[0.25, 0.40], [0.60, 0.75]])

# N, E, S, W as (dx, dy); move action 1 + 4*(d-1) + k goes d cells in direction k.
DIRECTIONS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], np.int32)
MAX_MOVE_DIST = 2
N_ACTIONS = 1 + 4 * MAX_MOVE_DIST + 3
STAY, EXTINGUISH, BUILD, FREEZE = 0, N_ACTIONS - 3, N_ACTIONS - 2, N_ACTIONS - 1
MOVE_DELTA = np.zeros((N_ACTIONS, 2), np.int32)
MOVE_DIST = np.zeros(N_ACTIONS, np.int32)
for _d in range(1, MAX_MOVE_DIST + 1):
    for _k in range(4):
        MOVE_DELTA[1 + 4 * (_d - 1) + _k] = _d * DIRECTIONS[_k]
        MOVE_DIST[1 + 4 * (_d - 1) + _k] = _d

ENTITY_DIM = sc.N_ENTITY_TYPES + 2 * sc.MAP_SIZE + 2 + N_ACTIONS + 7  # 58
OFF_MAP = -100  # padded entities sit far outside the map, on distinct cells
TIMER_DONE = 1000  # ttnf of a finished building: it never ignites again


def _float():
    """float64 when x64 is enabled (equivalence tests), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


@struct.dataclass
class EpisodeStats:
    """Running sums over the current episode (section 9)."""

    fires_extinguished: jax.Array
    buildings_completed: jax.Array
    buildings_burned: jax.Array
    buildings_health_delta: jax.Array
    firefight_types: jax.Array  # sum over (building, step) pairs of distinct extinguishing types
    firefight_pairs: jax.Array
    build_types: jax.Array
    build_pairs: jax.Array
    action_counts: jax.Array  # [3, 3] agent type (F, B, G) x (extinguish, build, freeze)
    invalid_actions: jax.Array  # unavailable actions replaced by "stay"


@struct.dataclass
class EnvState:
    """State of one SaveTheCity instance. Padded slots have valid=False and off-map cells."""

    agent_pos: jax.Array  # [A, 2] int32
    agent_type: jax.Array  # [A] int32, -1 padded
    agent_valid: jax.Array  # [A] bool
    bld_pos: jax.Array  # [B, 2] int32
    bld_type: jax.Array  # [B] int32
    bld_valid: jax.Array  # [B] bool
    health: jax.Array  # [B] float
    fire: jax.Array  # [B] float
    period: jax.Array  # [B] int32
    ttnf: jax.Array  # [B] int32, steps to next fire
    tslf: jax.Array  # [B] int32, steps since last fire
    t: jax.Array  # () int32
    scenario: jax.Array  # () int32, index into the scenario table
    stats: EpisodeStats

    @property
    def complete(self) -> jax.Array:
        return self.bld_valid & (self.health == 1.0)

    @property
    def burned(self) -> jax.Array:
        return self.bld_valid & (self.health == 0.0)

    @property
    def tasks_complete(self) -> jax.Array:
        """Task termination vector: finished or padded (section 6.7)."""
        return ~self.bld_valid | (self.health == 1.0) | (self.health == 0.0)


@dataclass(frozen=True)
class GameConfig:
    init_fire_chance: float = 0.4
    fire_burn_rate: float = 0.035
    fire_reduce_rate: float = 0.25
    fire_growth_rate: float = 1.1
    base_build_rate: float = 0.125
    generalist_help_factor: float = 0.45


@dataclass(frozen=True)
class RewardConfig:
    health_delta_mult: float = 10.0
    complete: float = 1.0
    burned_down: float = -20.0
    extinguish: float = 0.5
    solved: float = 20.0
    ts_pen: float = 0.0


@dataclass(frozen=True)
class SaveTheCityParams:
    """Static options of the environment (section 1.7); defaults are the paper's."""

    scenario: str = "2-5a_2-5b"
    split: str = "train"
    episode_limit: int = 150
    reward_scale: float = 20.0
    end_on_any_burn: bool = False
    heuristic_alloc: bool = False
    track_ac_type: bool = False
    game: GameConfig = field(default_factory=GameConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


class SaveTheCity(Environment):
    """Pure-JAX SaveTheCity. All methods act on one instance; use `jax.vmap` for batches."""

    def __init__(self, params: SaveTheCityParams | None = None):
        self.params = params or SaveTheCityParams()
        p = self.params
        if p.episode_limit < 1:
            raise ValueError(f"episode_limit must be >= 1, got {p.episode_limit}")
        self.table = sc.get_scenarios(p.scenario, p.split)
        t = self.table
        self.n_agents = t.max_agents
        self.n_buildings = t.max_buildings
        self.n_tasks = t.max_buildings
        self.n_entities = t.max_agents + t.max_buildings
        self.n_actions = N_ACTIONS
        self.entity_dim = ENTITY_DIM
        self.episode_limit = p.episode_limit
        r = p.reward
        # Normalisation uses the family's maximum building count, not the episode's (11.11).
        self.max_reward = (
            0.5 * r.health_delta_mult * t.max_buildings + r.complete * t.max_buildings + r.solved
        )
        self.reward_norm = p.reward_scale / self.max_reward

        self.bld_cells = sc.building_candidates(t.bld_spacing)  # [C, 2]
        spawn = [sc.spawn_candidates(max(n, 1), t.bld_spacing) for n in range(t.max_agents + 1)]
        k_max = max(len(s) for s in spawn)
        self.spawn_cells = np.zeros((t.max_agents + 1, k_max, 2), np.int32)
        self.spawn_count = np.array([len(s) for s in spawn], np.int32)
        for n, s in enumerate(spawn):
            self.spawn_cells[n, : len(s)] = s
        if len(self.bld_cells) < t.max_buildings:
            raise ValueError(f"scenario {p.scenario!r} has more buildings than lattice cells")
        a_idx = np.arange(t.max_agents)
        self._agent_off_map = np.stack(
            [OFF_MAP - 3 * a_idx, np.full_like(a_idx, OFF_MAP)], -1
        ).astype(np.int32)
        b_idx = np.arange(t.max_buildings)
        self._bld_off_map = np.stack(
            [np.full_like(b_idx, OFF_MAP), OFF_MAP - 3 * b_idx], -1
        ).astype(np.int32)
        self.n_pairs = t.max_agents * (t.max_agents - 1) // 2
        self._n_reset_draws = 2 + 5 * t.max_buildings + t.max_agents + t.max_buildings

    # ------------------------------------------------------------------ reset (section 4)
    def reset(
        self, key: jax.Array, index: jax.Array | int | None = None, n_tasks: int | None = None
    ) -> tuple[Observation, EnvState]:
        """A fresh episode. `index` forces a scenario; `n_tasks` forces the building count."""
        u = hash_uniforms(key, self._n_reset_draws, _float())
        state = self._reset_from_uniforms(u, index, n_tasks)
        return self.get_obs(state), state

    def _reset_from_uniforms(self, u, index=None, n_tasks=None) -> EnvState:
        t = self.table
        A, B = t.max_agents, t.max_buildings
        fdt = _float()
        draws = iter(_split_sizes(u, [1, 1, B, A, B, B, B, B, B]))
        u_scen, u_m, u_btype, u_spawn, u_cells, u_range, u_health, u_period, u_fire = draws

        n_scen = t.n_scenarios
        if index is not None:
            s = jnp.asarray(index, jnp.int32)
        elif n_tasks is not None:
            ok = jnp.asarray((t.min_blds <= n_tasks) & (n_tasks <= t.max_blds))
            if not bool(np.any((t.min_blds <= n_tasks) & (n_tasks <= t.max_blds))):
                raise ValueError(f"no scenario of {t.name!r} allows n_tasks={n_tasks}")
            # uniform over the admissible scenarios, as the original's rejection sampling
            cum = jnp.cumsum(ok) / jnp.sum(ok)
            s = jnp.sum(cum <= u_scen[0]).astype(jnp.int32)
        else:
            s = jnp.minimum((u_scen[0] * n_scen).astype(jnp.int32), n_scen - 1)

        agent_type = _lookup(t.agent_types, s)
        n = _lookup(t.n_agents, s)
        lo_b, hi_b = _lookup(t.min_blds, s), _lookup(t.max_blds, s)
        if n_tasks is not None:
            lo_b = hi_b = jnp.asarray(n_tasks, jnp.int32)
        m = jnp.minimum(lo_b + (u_m[0] * (hi_b - lo_b + 1)).astype(jnp.int32), hi_b)

        agent_valid = jnp.arange(A) < n
        bld_valid = jnp.arange(B) < m
        fixed = _lookup(t.bld_types, s)
        bld_type = jnp.where(fixed >= 0, fixed, (u_btype >= 0.5).astype(jnp.int32))

        # Agents then buildings pop uniformly random entries of their candidate lists (4.5, 4.6a).
        cells = _lookup(self.spawn_cells, n)  # [K, 2]
        pick = _draw_without_replacement(u_spawn, _lookup(self.spawn_count, n),
                                         self.spawn_cells.shape[1])
        agent_pos = _lookup(cells, pick, axis=-1)
        agent_pos = jnp.where(agent_valid[:, None], agent_pos, self._agent_off_map)
        pick = _draw_without_replacement(u_cells, len(self.bld_cells), len(self.bld_cells))
        per_row = len(range(1, sc.MAP_SIZE, t.bld_spacing))  # lattice is x-major
        bld_pos = 1 + t.bld_spacing * jnp.stack([pick // per_row, pick % per_row], -1)
        bld_pos = jnp.where(bld_valid[:, None], bld_pos, self._bld_off_map)

        high = u_range >= 0.5
        lo_h = jnp.where(high, HEALTH_RANGES[1, 0], HEALTH_RANGES[0, 0]).astype(fdt)
        hi_h = jnp.where(high, HEALTH_RANGES[1, 1], HEALTH_RANGES[0, 1]).astype(fdt)
        health = lo_h * u_health + hi_h * (1.0 - u_health)
        lo_p = _lookup(PERIOD_RANGE[:, 0], bld_type)
        hi_p = _lookup(PERIOD_RANGE[:, 1], bld_type)
        period = jnp.minimum(lo_p + (u_period * (hi_p - lo_p + 1)).astype(jnp.int32), hi_p)
        on_fire = u_fire < self.params.game.init_fire_chance
        fire = jnp.where(on_fire, 1.0, 0.0).astype(fdt)

        zero_i = jnp.zeros((), jnp.int32)
        zero_f = jnp.zeros((), fdt)
        stats = EpisodeStats(
            fires_extinguished=zero_i,
            buildings_completed=zero_i,
            buildings_burned=zero_i,
            buildings_health_delta=zero_f,
            firefight_types=zero_i,
            firefight_pairs=zero_i,
            build_types=zero_i,
            build_pairs=zero_i,
            action_counts=jnp.zeros((3, 3), jnp.int32),
            invalid_actions=zero_i,
        )
        return EnvState(
            agent_pos=agent_pos.astype(jnp.int32),
            agent_type=jnp.where(agent_valid, agent_type, -1).astype(jnp.int32),
            agent_valid=agent_valid,
            bld_pos=bld_pos.astype(jnp.int32),
            bld_type=jnp.where(bld_valid, bld_type, 0).astype(jnp.int32),
            bld_valid=bld_valid,
            health=jnp.where(bld_valid, health, 0.0).astype(fdt),
            fire=jnp.where(bld_valid, fire, 0.0).astype(fdt),
            period=jnp.where(bld_valid, period, 1).astype(jnp.int32),
            ttnf=jnp.where(bld_valid, period, 0).astype(jnp.int32),
            tslf=jnp.zeros((B,), jnp.int32),
            t=zero_i,
            scenario=s.astype(jnp.int32),
            stats=stats,
        )

    # ------------------------------------------------------------ availability (5.2)
    def _neighbourhood(self, state: EnvState) -> tuple[jax.Array, jax.Array]:
        """Occupied offsets around each agent and its adjacent building.

        Returns `near` [A] int32, with bit `(dx+2)*5 + (dy+2)` set when a real entity sits at
        offset (dx, dy), |dx|,|dy| <= 2, and `adjacent` [A, B] bool (building b is
        4-adjacent to agent i; at most one per row because of the lattice spacing).
        A bitmask per agent is far cheaper than comparing every destination with every cell.
        """
        occ_pos = jnp.concatenate([state.agent_pos, state.bld_pos], 0)
        occ_valid = jnp.concatenate([state.agent_valid, state.bld_valid], 0)
        dx = occ_pos[None, :, 0] - state.agent_pos[:, None, 0]  # [A, E]
        dy = occ_pos[None, :, 1] - state.agent_pos[:, None, 1]
        close = occ_valid[None] & (jnp.abs(dx) <= 2) & (jnp.abs(dy) <= 2)
        # entities occupy distinct cells, so summing distinct bits is a bitwise or
        near = jnp.sum(
            jnp.where(close, jnp.left_shift(1, (dx + 2) * 5 + dy + 2), 0), 1, dtype=jnp.int32
        )
        A = self.n_agents
        adjacent = (jnp.abs(dx[:, A:]) + jnp.abs(dy[:, A:]) == 1) & occ_valid[None, A:]
        return near, adjacent & state.agent_valid[:, None]

    def avail_actions(self, state: EnvState, neighbourhood=None) -> jax.Array:
        """Coded availability [A, n_actions] int32: 1 = available, 2+b = interact with b."""
        near, adjacent = neighbourhood or self._neighbourhood(state)
        delta = MOVE_DELTA[1:EXTINGUISH]  # [8, 2] static
        dest = state.agent_pos[:, None, :] + delta[None]  # [A, 8, 2]
        inside = jnp.all((dest >= 0) & (dest < sc.MAP_SIZE), -1)
        codes = (delta[:, 0] + 2) * 5 + delta[:, 1] + 2
        free = (jnp.right_shift(near[:, None], codes[None]) & 1) == 0
        reach = MOVE_DIST[None, 1:EXTINGUISH] <= _lookup(MAX_MOVE, state.agent_type)[:, None]
        move_ok = inside & free & reach & state.agent_valid[:, None]

        target = jnp.sum(jnp.where(adjacent, jnp.arange(self.n_buildings), 0), 1, dtype=jnp.int32)
        on_fire = state.fire > 0.0
        buildable = ~state.complete & ~state.burned & (state.fire == 0.0)
        adj_fire = jnp.any(adjacent & on_fire[None], 1)
        adj_build = jnp.any(adjacent & buildable[None], 1)
        can_freeze = _lookup(CAN_FREEZE, state.agent_type)
        code = 2 + target
        interact = jnp.stack(
            [
                jnp.where(adj_fire, code, 0),
                jnp.where(adj_build, code, 0),
                jnp.where(adj_fire & can_freeze, code, 0),
            ],
            -1,
        )
        stay = jnp.ones((self.n_agents, 1), jnp.int32)
        return jnp.concatenate([stay, move_ok.astype(jnp.int32), interact], -1)

    # -------------------------------------------------------------- step (section 6)
    takes_avail = True  # step_env and get_obs accept the state's availability

    def step_env(self, key: jax.Array, state: EnvState, actions: jax.Array, avail=None):
        """One transition without auto-reset; the only randomness is the collision coins.
        `avail`: optionally the coded availability of `state` (its observation's), which
        then is not recomputed."""
        words = hash_bits(key, max(1, -(-self.n_pairs // 32)))
        bit = jnp.arange(max(self.n_pairs, 1))
        coins = ((words[bit // 32] >> (bit % 32).astype(jnp.uint32)) & 1).astype(bool)
        return self.transition(state, actions, coins, avail)

    def transition(self, state: EnvState, actions: jax.Array, coins: jax.Array, avail=None):
        """Deterministic step given per-pair collision coins, in the order (0,1),(0,2),..,(1,2),...

        `coins[p]` True sends the higher slot of colliding pair p back, False the lower one.
        `avail` as in `step_env`. Returns (obs, state, reward, done, info).
        """
        g, rw = self.params.game, self.params.reward
        fdt = _float()
        if avail is None:
            avail = self.avail_actions(state)
        actions = jnp.asarray(actions, jnp.int32)
        chosen = _lookup(avail, actions, axis=1)  # 0 for out-of-range actions
        ok = chosen >= 1
        invalid = state.agent_valid & ~ok
        actions = jnp.where(ok & state.agent_valid, actions, STAY)
        # An available interaction's code is 2 + the unique 4-adjacent building (5.2), so
        # the codes alone say which building each interacting agent acts on.
        adjacent = jnp.arange(self.n_buildings)[None, :] == (chosen - 2)[:, None]  # [A, B]

        # Moves: destination was checked against start-of-step occupancy (11.1).
        prev_pos = state.agent_pos
        pos = prev_pos + _move_delta(actions)

        # Interactions target the unique adjacent building (11.3).
        is_ext = (actions == EXTINGUISH)[:, None] & adjacent  # [A, B]
        is_bld = (actions == BUILD)[:, None] & adjacent
        is_frz = (actions == FREEZE)[:, None] & adjacent
        fire_speed = _lookup(FIRE_SPEED.astype(fdt), state.agent_type)
        build_speed = _lookup(BUILD_SPEED.astype(fdt), state.agent_type)
        dec = jnp.sum(is_ext * fire_speed[:, None], 0) * g.fire_reduce_rate
        dlt = jnp.sum(is_bld * build_speed[:, None], 0) * g.base_build_rate
        frozen = jnp.any(is_frz, 0)
        agent_types = jnp.arange(sc.FIREFIGHTER, sc.GENERALIST + 1)
        of_type = state.agent_type[:, None] == agent_types[None]  # [A, 3] F, B, G
        ext_by_type = jnp.any(is_ext[:, :, None] & of_type[:, None, :], 0)  # [B, 3]
        bld_by_type = jnp.any(is_bld[:, :, None] & of_type[:, None, :], 0)
        F, Bu, G = 0, 1, 2

        # Buildings (6.3); finished buildings are fixed points, padded ones are masked.
        f, h = state.fire, state.health
        help_ext = ext_by_type[:, Bu] & ext_by_type[:, G]
        f_new = jnp.where(
            dec == 0.0,
            g.fire_growth_rate * f,
            f - (dec + jnp.where(help_ext, g.generalist_help_factor * g.fire_reduce_rate, 0.0)),
        )
        f_new = jnp.clip(f_new, 0.0, 1.0)
        help_bld = bld_by_type[:, F] & bld_by_type[:, G]
        dlt = dlt + jnp.where(help_bld, g.generalist_help_factor * g.base_build_rate, 0.0)
        burn = f_new * _lookup(BURN_MULT.astype(fdt), state.bld_type) * g.fire_burn_rate
        dlt = dlt - jnp.where(frozen, 0.0, burn)
        h_new = jnp.clip(h + dlt, 0.0, 1.0)
        valid = state.bld_valid
        extinguished = valid & (f > 0.0) & (f_new == 0.0)
        completed = valid & (h < 1.0) & (h_new == 1.0)
        burned = valid & (h > 0.0) & (h_new == 0.0)
        f_new = jnp.where(burned, 0.0, f_new)
        h_new = jnp.where(valid, h_new, h)
        f_new = jnp.where(valid, f_new, f)
        dh = jnp.where(valid, h_new - h, 0.0)

        # Fire timers (6.3.8): periodic ignition while the building is active.
        active = valid & (h_new < 1.0) & (h_new > 0.0)
        ttnf = state.ttnf - 1
        ignite = active & (ttnf <= 0)
        f_new = jnp.where(ignite, 1.0, f_new)
        ttnf = jnp.where(ignite, state.period, ttnf)
        tslf = jnp.where(ignite, 0, state.tslf + 1)
        finished = valid & ~active
        ttnf = jnp.where(finished, TIMER_DONE, jnp.where(valid, ttnf, state.ttnf))
        tslf = jnp.where(finished, 0, jnp.where(valid, tslf, state.tslf))

        # Rewards (6.4): completion pays +1 globally but +solved to its own task.
        r_b = (
            rw.health_delta_mult * dh
            + rw.burned_down * burned
            + rw.extinguish * extinguished
        )
        task_r = jnp.where(valid, r_b + rw.solved * completed + rw.ts_pen, 0.0)
        reward = rw.ts_pen + jnp.sum(jnp.where(valid, r_b + rw.complete * completed, 0.0))

        # Collisions (6.5): sequential pair loop, the chosen agent goes back.
        lost = _collision_losers(pos, state.agent_valid, coins)
        pos = jnp.where(lost[:, None], prev_pos, pos).astype(jnp.int32)

        t_new = state.t + 1
        ext_types = jnp.sum(ext_by_type, 1)
        bld_types = jnp.sum(bld_by_type, 1)
        if self.params.track_ac_type:
            counts = jnp.stack([jnp.any(is_ext, 1), jnp.any(is_bld, 1), jnp.any(is_frz, 1)], -1)
            action_counts = state.stats.action_counts + jnp.sum(
                of_type[:, :, None] & counts[:, None, :], 0
            )
        else:
            action_counts = state.stats.action_counts
        st = state.stats
        stats = EpisodeStats(
            fires_extinguished=st.fires_extinguished + jnp.sum(extinguished),
            buildings_completed=st.buildings_completed + jnp.sum(completed),
            buildings_burned=st.buildings_burned + jnp.sum(burned),
            buildings_health_delta=st.buildings_health_delta + jnp.sum(dh),
            firefight_types=st.firefight_types + jnp.sum(ext_types),
            firefight_pairs=st.firefight_pairs + jnp.sum(ext_types > 0),
            build_types=st.build_types + jnp.sum(bld_types),
            build_pairs=st.build_pairs + jnp.sum(bld_types > 0),
            action_counts=action_counts,
            invalid_actions=st.invalid_actions + jnp.sum(invalid),
        )
        new_state = state.replace(
            agent_pos=pos, health=h_new, fire=f_new, ttnf=ttnf, tslf=tslf, t=t_new, stats=stats
        )
        # keep every leaf's dtype (sums of bools are int64 under x64), so scans can carry it
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)

        # Tasks and termination (6.7-6.9).
        tasks_prev = state.tasks_complete
        tasks_now = new_state.tasks_complete
        all_complete = jnp.all(new_state.complete | ~valid)
        any_burned = jnp.any(new_state.burned)
        terminal = jnp.all(tasks_now)
        if self.params.end_on_any_burn:
            terminal = terminal | all_complete | any_burned
        timeout = ~terminal & (t_new >= self.episode_limit)
        done = terminal | timeout
        solved = done & all_complete
        reward = reward + jnp.where(solved, rw.solved, 0.0)

        m = jnp.sum(valid)
        info = {
            "task_rewards": (task_r * self.reward_norm).astype(fdt),
            "tasks_terminated": tasks_now,
            "tasks_changed": jnp.any(tasks_now != tasks_prev),
            "invalid_actions": jnp.sum(invalid),
            # End-of-episode statistics: meaningful on steps where done is True.
            "solved": solved.astype(fdt),
            "prop_buildings_completed": jnp.sum(new_state.complete) / m,
            "buildings_completed": stats.buildings_completed,
            "buildings_burned": stats.buildings_burned,
            "fires_extinguished": stats.fires_extinguished,
            "buildings_health_delta": stats.buildings_health_delta,
            "episode_limit": timeout,
            "types_per_firefight": _nan_ratio(stats.firefight_types, stats.firefight_pairs, fdt),
            "types_per_build": _nan_ratio(stats.build_types, stats.build_pairs, fdt),
            "episode_invalid_actions": stats.invalid_actions,
            "n_agents": jnp.sum(state.agent_valid).astype(jnp.int32),
            "n_buildings": m.astype(jnp.int32),
            "episode_length": t_new,
        }
        if self.params.track_ac_type:
            total = jnp.sum(stats.action_counts, 1, keepdims=True)
            info["action_types"] = stats.action_counts / jnp.maximum(total, 1)
        obs = self.get_obs(new_state)
        return obs, new_state, (reward * self.reward_norm).astype(fdt), done, info

    # ------------------------------------------------------- observation (section 7)
    def get_obs(self, state: EnvState, avail: jax.Array | None = None) -> Observation:
        """Entities, coded available actions and masks of `state`; `avail`, when given, is
        `state`'s coded availability (not recomputed)."""
        A, B = self.n_agents, self.n_buildings
        fdt = _float()
        if avail is None:
            avail = self.avail_actions(state)
        col = jnp.arange(ENTITY_DIM)

        def rows(pos, etype, valid, tail, tail_start):
            # The feature blocks side by side in one concatenation: XLA writes the
            # [rows, 58] output once (a 0/1 placement matrix product, the previous form,
            # materialised a second array of that size; pieces are cheap to recompute).
            n, width = tail.shape
            onehot = (col[:37] == etype[:, None]) | (col[:37] == pos[:, :1] + 5) | (
                col[:37] == pos[:, 1:] + 21)
            pieces = [onehot.astype(fdt), pos.astype(fdt) / sc.MAP_SIZE,
                      jnp.zeros((n, tail_start - 39), fdt), tail.astype(fdt),
                      jnp.zeros((n, ENTITY_DIM - tail_start - width), fdt)]
            val = jnp.concatenate([p for p in pieces if p.shape[1]], 1)
            return jnp.where(valid[:, None], val, 0.0)

        period = state.period.astype(fdt)
        bld_feat = jnp.stack(
            [
                state.health,
                state.complete.astype(fdt),
                state.burned.astype(fdt),
                state.fire,
                (state.fire > 0.0).astype(fdt),
                state.tslf.astype(fdt) / period,
                (1.0 / period - 1.0 / MAX_PERIOD) / (1.0 / MIN_PERIOD - 1.0 / MAX_PERIOD),
            ],
            -1,
        )
        entities = jnp.concatenate(
            [
                rows(state.agent_pos, state.agent_type, state.agent_valid,
                     (avail >= 1).astype(fdt), 39),
                rows(state.bld_pos, state.bld_type, state.bld_valid, bld_feat, 39 + N_ACTIONS),
            ],
            0,
        )
        valid = jnp.concatenate([state.agent_valid, state.bld_valid], 0)

        is_agent = jnp.arange(A + B) < A
        sees = valid[:, None] & valid[None, :] & (is_agent[:, None] | ~is_agent[None, :])
        bld_task = jnp.eye(B, dtype=bool) & state.bld_valid[:, None]
        if self.params.heuristic_alloc:
            agent_task = heuristic_from_state(state)
        else:
            agent_task = jnp.zeros((A, B), bool)
        entity2task = jnp.concatenate([agent_task, bld_task], 0)
        return Observation(
            entities=entities,
            avail_actions=avail,
            obs_mask=~sees,
            entity_mask=~valid,
            entity2task_mask=~entity2task,
            task_mask=state.tasks_complete,
        )

    def make_state(
        self,
        agents: list[tuple[int, int, int]],
        buildings: list[tuple],
        t: int = 0,
        scenario: int = 0,
    ) -> EnvState:
        """A hand-built state for tests and demos.

        agents: (type_id, x, y) per real agent; buildings: (type_id, x, y, health, fire,
        period[, ttnf[, tslf]]) per real building (ttnf defaults to period, tslf to 0).
        """
        A, B = self.n_agents, self.n_buildings
        if len(agents) > A or len(buildings) > B:
            raise ValueError(f"at most {A} agents and {B} buildings in {self!r}")
        cells = [tuple(a[1:3]) for a in agents] + [tuple(b[1:3]) for b in buildings]
        if len(set(cells)) < len(cells):
            raise ValueError(f"two entities share a cell: {cells}")
        if any(not (0 <= c < sc.MAP_SIZE) for cell in cells for c in cell):
            raise ValueError(f"cells must lie in [0, {sc.MAP_SIZE}): {cells}")
        for i, p in enumerate(buildings):
            for q in buildings[:i]:
                # spacing >= 3 is what makes the 4-adjacent building of an agent unique
                if max(abs(p[1] - q[1]), abs(p[2] - q[2])) < 3:
                    raise ValueError(f"buildings {q[1:3]} and {p[1:3]} are closer than 3 cells")
        if any(a[0] not in (sc.FIREFIGHTER, sc.BUILDER, sc.GENERALIST) for a in agents):
            raise ValueError("agent types must be 2 (firefighter), 3 (builder) or 4 (generalist)")
        fdt = _float()
        agent_pos = np.array(self._agent_off_map, np.int32)
        agent_type = np.full(A, -1, np.int32)
        for i, (ty, x, y) in enumerate(agents):
            agent_type[i], agent_pos[i] = ty, (x, y)
        bld_pos = np.array(self._bld_off_map, np.int32)
        bld_type = np.zeros(B, np.int32)
        health, fire = np.zeros(B), np.zeros(B)
        period, ttnf, tslf = np.ones(B, np.int32), np.zeros(B, np.int32), np.zeros(B, np.int32)
        for b, spec in enumerate(buildings):
            ty, x, y, h, f, per = spec[:6]
            bld_type[b], bld_pos[b], health[b], fire[b], period[b] = ty, (x, y), h, f, per
            ttnf[b] = spec[6] if len(spec) > 6 else per
            tslf[b] = spec[7] if len(spec) > 7 else 0
        if getattr(self, "_template", None) is None or self._template.health.dtype != fdt:
            self._template = jax.jit(self._reset_from_uniforms)(jnp.zeros(self._n_reset_draws, fdt))
        base = self._template
        return base.replace(
            agent_pos=jnp.asarray(agent_pos),
            agent_type=jnp.asarray(agent_type),
            agent_valid=jnp.arange(A) < len(agents),
            bld_pos=jnp.asarray(bld_pos),
            bld_type=jnp.asarray(bld_type),
            bld_valid=jnp.arange(B) < len(buildings),
            health=jnp.asarray(health, fdt),
            fire=jnp.asarray(fire, fdt),
            period=jnp.asarray(period),
            ttnf=jnp.asarray(ttnf),
            tslf=jnp.asarray(tslf),
            t=jnp.asarray(t, jnp.int32),
            scenario=jnp.asarray(scenario, jnp.int32),
        )

    def replace_params(self, **kw) -> SaveTheCity:
        return SaveTheCity(replace(self.params, **kw))

    def __repr__(self) -> str:
        return (
            f"SaveTheCity(scenario={self.params.scenario!r}, agents={self.n_agents}, "
            f"buildings={self.n_buildings}, scenarios={self.table.n_scenarios})"
        )


# ---------------------------------------------------------------------- helpers
def _lookup(table, idx, axis: int = 0):
    """`table[idx]` along `axis` as a one-hot select: vectorises on CPU where a gather does not.

    A numpy table is indexed along axis 0 by `idx` of any shape; with `axis=1` a traced
    [N, K] table is indexed per row by `idx` [N]. Out-of-range indices give 0.
    """
    if axis == 1:
        hit = jnp.arange(table.shape[1]) == idx[:, None]
        return jnp.sum(jnp.where(hit, table, 0), 1, dtype=table.dtype)
    if axis == -1:  # rows of a traced table [K, D] picked by idx [n] -> [n, D]
        hit = jnp.arange(table.shape[0])[None, :] == idx[:, None]
        return jnp.sum(jnp.where(hit[:, :, None], table[None], 0), 1, dtype=table.dtype)
    table = jnp.asarray(table)
    if jnp.issubdtype(table.dtype, jnp.integer):
        table = table.astype(jnp.int32)  # numpy int64 tables would leak int64 under x64
    k = table.shape[0]
    hit = jnp.asarray(idx)[..., None] == jnp.arange(k)  # [..., K]
    hit = hit.reshape(hit.shape + (1,) * (table.ndim - 1))
    axis = idx.ndim if hasattr(idx, "ndim") else 0
    return jnp.sum(jnp.where(hit, table, 0), axis, dtype=table.dtype)


def _move_delta(actions: jax.Array) -> jax.Array:
    """`MOVE_DELTA[actions]` [..., 2] by arithmetic on the action index: move a = 1 + 4(d-1) + k
    goes d cells along DIRECTIONS[k] = (0,1), (1,0), (0,-1), (-1,0); every other action stays.
    (The one-hot lookup over the 12 actions it replaces cost ~4% of the trainer's step.)"""
    m = actions - 1
    is_move = (m >= 0) & (m < 4 * MAX_MOVE_DIST)
    d = jnp.where(is_move, m // 4 + 1, 0)
    k = m % 4
    dx = (k == 1).astype(jnp.int32) - (k == 3).astype(jnp.int32)
    dy = (k == 0).astype(jnp.int32) - (k == 2).astype(jnp.int32)
    return jnp.stack([d * dx, d * dy], -1).astype(jnp.int32)


def _split_sizes(u: jax.Array, sizes: list[int]) -> list[jax.Array]:
    out, i = [], 0
    for s in sizes:
        out.append(u[i : i + s])
        i += s
    return out


def _draw_without_replacement(u: jax.Array, n_items, n_max: int) -> jax.Array:
    """Indices into a list of `n_items` (<= n_max, static), popping entry floor(u_k * remaining)
    at each draw k: the original's `list.pop(randint(len(list)))` loop without a list.

    A "taken" mask over the n_max slots stands in for the list: the r-th remaining item is
    the first slot where the running count of free slots exceeds r. A chain of k steps of
    O(n_max) each. u: [k] uniforms; returns [k] int32 (valid while k <= n_items).

    For n_max <= 32 (every scenario family) the mask is one uint32 word and the r-th free
    slot is the number of slots whose prefix of the word holds at most r free bits: one
    fused reduction per draw instead of a running sum (an XLA reduce-window), a search and
    an update, which made a full reset several times cheaper.
    """
    if n_max > 32:
        return _draw_without_replacement_slots(u, n_items, n_max)
    slots = jnp.arange(n_max, dtype=jnp.uint32)
    prefix = (jnp.uint32(2) << slots) - jnp.uint32(1)  # bits 0..j (wraps to all ones at 31)
    n_items = jnp.asarray(n_items, jnp.int32)
    free = jnp.where(n_items >= 32, jnp.uint32(0xFFFFFFFF),
                     (jnp.uint32(1) << jnp.minimum(n_items, 31).astype(jnp.uint32))
                     - jnp.uint32(1))
    picks = []
    for k in range(u.shape[0]):
        remaining = n_items - k
        r = jnp.minimum((u[k] * remaining).astype(jnp.int32), remaining - 1)
        below = jax.lax.population_count(free & prefix).astype(jnp.int32) <= r
        x = jnp.sum(below, dtype=jnp.int32)
        free = free & ~(jnp.uint32(1) << x.astype(jnp.uint32))
        picks.append(x)
    return jnp.stack(picks)


def _draw_without_replacement_slots(u: jax.Array, n_items, n_max: int) -> jax.Array:
    """`_draw_without_replacement` with a boolean slot mask (any n_max)."""
    slots = jnp.arange(n_max)
    free = slots < n_items
    picks = []
    for k in range(u.shape[0]):
        remaining = n_items - k
        r = jnp.minimum((u[k] * remaining).astype(jnp.int32), remaining - 1)
        x = jnp.argmax(jnp.cumsum(free) > r).astype(jnp.int32)
        free = free & (slots != x)
        picks.append(x)
    return jnp.stack(picks)


def _collision_losers(pos: jax.Array, valid: jax.Array, coins: jax.Array) -> jax.Array:
    """Which agents go back to their previous cell (6.5): [A] bool.

    The original loops over pairs (i, j), i < j, in slot order and sends one member of a
    pair sharing a cell back. A loser's previous cell is free and unique (nobody may enter
    a cell occupied at step start), so it never collides again, and within one cell the
    pair loop is "king of the hill": each later contender j challenges the current holder
    h with the coin of pair (h, j). Walking j in slot order with a per-agent "holds its
    cell" flag therefore reproduces the loop with a chain of A steps instead of A(A-1)/2
    (the pair chain made XLA's compile and run time blow up at 24 agents).
    """
    A = pos.shape[0]
    if A < 2:
        return jnp.zeros(A, bool)
    cell = pos[:, 0] * 1024 + pos[:, 1]  # distinct for distinct (x, y), off-map included
    slot = jnp.arange(A)
    holding = jnp.zeros(A, bool)
    lost = jnp.zeros(A, bool)
    for j in range(A):
        rival = holding & (cell == cell[j]) & (slot < j) & valid[j]  # at most one: the holder
        # the coin of pair (h, j) for the holder h, as a masked any over constant pair
        # indices: no index search for h, no data-dependent gather
        i = np.arange(A)
        pair = np.clip(i * (2 * A - i - 1) // 2 + (j - i - 1), 0, coins.shape[0] - 1)
        coin_j = coins[pair]  # coin of pair (i, j) in loop order (meaningful for i < j)
        j_loses = jnp.any(rival & coin_j)
        h_loses = rival & ~j_loses
        holding = (holding & ~h_loses).at[j].set(valid[j] & ~j_loses)
        lost = (lost | h_loses).at[j].set(j_loses)
    return lost


def _nan_ratio(num, den, dtype):
    return jnp.where(den > 0, num / jnp.maximum(den, 1), jnp.nan).astype(dtype)


def _heuristic(agent_pos, agent_type, agent_valid, bld_pos, active, on_fire) -> jax.Array:
    """Spec section 10 as arithmetic: [A, B] bool one-hot (all False without a target)."""
    B = bld_pos.shape[0]
    dist = jnp.sum(jnp.abs(agent_pos[:, None, :] - bld_pos[None, :, :]), -1)  # [A, B]
    prefers_fire = agent_type != sc.BUILDER  # firefighters and generalists go to fires first
    second = on_fire[None, :] != prefers_fire[:, None]
    span = 4 * sc.MAP_SIZE * B
    score = second * span + dist * B + jnp.arange(B)[None, :]
    score = jnp.where(active[None, :], score, 2 * span)
    best = jnp.argmin(score, 1)
    onehot = jnp.arange(B)[None, :] == best[:, None]
    return onehot & jnp.any(active)[None] & agent_valid[:, None]


def decode_entities(entities: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Entity features [..., E, F] -> (type ids [..., E], cell (x, y) [..., E, 2]) read from
    the one-hot blocks (section 4); the inverse of the feature layout for these two fields."""
    base = sc.N_ENTITY_TYPES
    etype = jnp.argmax(entities[..., :base], -1)
    x = jnp.argmax(entities[..., base : base + sc.MAP_SIZE], -1)
    y = jnp.argmax(entities[..., base + sc.MAP_SIZE : base + 2 * sc.MAP_SIZE], -1)
    return etype, jnp.stack([x, y], -1)


def heuristic_from_state(state: EnvState) -> jax.Array:
    active = state.bld_valid & ~state.tasks_complete
    return _heuristic(
        state.agent_pos, state.agent_type, state.agent_valid, state.bld_pos, active,
        state.fire > 0.0,
    )


def heuristic_allocation(obs_or_state: Observation | EnvState | Any) -> jax.Array:
    """The heuristic allocation (spec section 10) as an agent-to-subtask one-hot [A, T] bool.

    Works from an `EnvState` or from an `Observation` (types, positions and fire are read
    from the entity features; finished buildings from `task_mask`).
    """
    if isinstance(obs_or_state, EnvState):
        return heuristic_from_state(obs_or_state)
    obs = obs_or_state
    A = obs.avail_actions.shape[0]
    ent = obs.entities
    etype, pos = decode_entities(ent)
    present = ~obs.entity_mask
    active = present[A:] & ~obs.task_mask
    on_fire = ent[A:, ENTITY_DIM - 3] > 0
    return _heuristic(pos[:A], etype[:A], present[:A], pos[A:], active, on_fire)
