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
        self._agent_off_map = np.stack([OFF_MAP - 3 * a_idx, np.full_like(a_idx, OFF_MAP)], -1)
        b_idx = np.arange(t.max_buildings)
        self._bld_off_map = np.stack([np.full_like(b_idx, OFF_MAP), OFF_MAP - 3 * b_idx], -1)
        self.n_pairs = t.max_agents * (t.max_agents - 1) // 2
        self._n_reset_draws = 2 + 5 * t.max_buildings + k_max + len(self.bld_cells)

    # ------------------------------------------------------------------ reset (section 4)
    def reset(
        self, key: jax.Array, index: jax.Array | int | None = None, n_tasks: int | None = None
    ) -> tuple[Observation, EnvState]:
        """A fresh episode. `index` forces a scenario; `n_tasks` forces the building count."""
        u = jax.random.uniform(key, (self._n_reset_draws,), _float())
        state = self._reset_from_uniforms(u, index, n_tasks)
        return self.get_obs(state), state

    def _reset_from_uniforms(self, u, index=None, n_tasks=None) -> EnvState:
        t = self.table
        A, B = t.max_agents, t.max_buildings
        fdt = _float()
        draws = iter(_split_sizes(u, [1, 1, B, self.spawn_cells.shape[1], len(self.bld_cells),
                                      B, B, B, B]))
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

        agent_type = jnp.asarray(t.agent_types)[s]
        n = jnp.asarray(t.n_agents)[s]
        lo_b, hi_b = jnp.asarray(t.min_blds)[s], jnp.asarray(t.max_blds)[s]
        if n_tasks is not None:
            lo_b = hi_b = jnp.asarray(n_tasks, jnp.int32)
        m = jnp.minimum(lo_b + (u_m[0] * (hi_b - lo_b + 1)).astype(jnp.int32), hi_b)

        agent_valid = jnp.arange(A) < n
        bld_valid = jnp.arange(B) < m
        fixed = jnp.asarray(t.bld_types)[s]
        bld_type = jnp.where(fixed >= 0, fixed, (u_btype >= 0.5).astype(jnp.int32))

        # Agents: a uniformly random ordering of the spawn cells, first n (2.3).
        cells = jnp.asarray(self.spawn_cells)[n]
        count = jnp.asarray(self.spawn_count)[n]
        rank = _ranks(jnp.where(jnp.arange(cells.shape[0]) < count, u_spawn, 2.0))
        agent_pos = _pick_by_rank(rank, cells, A)
        agent_pos = jnp.where(agent_valid[:, None], agent_pos, self._agent_off_map)

        # Buildings: distinct lattice cells, first m of a random ordering (4.6a).
        bld_pos = _pick_by_rank(_ranks(u_cells), jnp.asarray(self.bld_cells), B)
        bld_pos = jnp.where(bld_valid[:, None], bld_pos, self._bld_off_map)

        ranges = jnp.asarray(HEALTH_RANGES, fdt)[(u_range >= 0.5).astype(jnp.int32)]
        health = ranges[:, 0] * u_health + ranges[:, 1] * (1.0 - u_health)
        prange = jnp.asarray(PERIOD_RANGE)[bld_type]
        period = jnp.minimum(
            prange[:, 0] + (u_period * (prange[:, 1] - prange[:, 0] + 1)).astype(jnp.int32),
            prange[:, 1],
        )
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
            bld_type=jnp.where(bld_valid, bld_type, 0),
            bld_valid=bld_valid,
            health=jnp.where(bld_valid, health, 0.0).astype(fdt),
            fire=jnp.where(bld_valid, fire, 0.0).astype(fdt),
            period=jnp.where(bld_valid, period, 1),
            ttnf=jnp.where(bld_valid, period, 0),
            tslf=jnp.zeros((B,), jnp.int32),
            t=zero_i,
            scenario=s,
            stats=stats,
        )

    # ------------------------------------------------------------ availability (5.2)
    def _adjacent(self, state: EnvState) -> jax.Array:
        """[A, B] bool: building b is 4-adjacent to agent i (at most one per row)."""
        nbr = state.agent_pos[:, None, :] + DIRECTIONS[None]  # [A, 4, 2]
        hit = jnp.all(nbr[:, :, None, :] == state.bld_pos[None, None], -1)  # [A, 4, B]
        return jnp.any(hit, 1) & state.bld_valid[None] & state.agent_valid[:, None]

    def avail_actions(self, state: EnvState, adjacent: jax.Array | None = None) -> jax.Array:
        """Coded availability [A, n_actions] int32: 1 = available, 2+b = interact with b."""
        if adjacent is None:
            adjacent = self._adjacent(state)
        dest = state.agent_pos[:, None, :] + MOVE_DELTA[None, 1 : EXTINGUISH]  # [A, 8, 2]
        inside = jnp.all((dest >= 0) & (dest < sc.MAP_SIZE), -1)
        occ_pos = jnp.concatenate([state.agent_pos, state.bld_pos], 0)
        occ_valid = jnp.concatenate([state.agent_valid, state.bld_valid], 0)
        occupied = jnp.any(jnp.all(dest[:, :, None] == occ_pos[None, None], -1) & occ_valid, -1)
        reach = MOVE_DIST[None, 1:EXTINGUISH] <= jnp.asarray(MAX_MOVE)[
            jnp.maximum(state.agent_type, 0)
        ][:, None]
        move_ok = inside & ~occupied & reach

        has_adj = jnp.any(adjacent, 1)
        target = jnp.argmax(adjacent, 1).astype(jnp.int32)
        on_fire = state.fire > 0.0
        buildable = ~state.complete & ~state.burned & (state.fire == 0.0)
        adj_fire = jnp.any(adjacent & on_fire[None], 1)
        adj_build = jnp.any(adjacent & buildable[None], 1)
        can_freeze = jnp.asarray(CAN_FREEZE)[jnp.maximum(state.agent_type, 0)]
        code = 2 + target
        interact = jnp.stack(
            [
                jnp.where(has_adj & adj_fire, code, 0),
                jnp.where(has_adj & adj_build, code, 0),
                jnp.where(has_adj & adj_fire & can_freeze, code, 0),
            ],
            -1,
        )
        moves = (move_ok & state.agent_valid[:, None]).astype(jnp.int32)
        stay = jnp.ones((self.n_agents, 1), jnp.int32)
        return jnp.concatenate([stay, moves, interact * state.agent_valid[:, None]], -1)

    # -------------------------------------------------------------- step (section 6)
    def step_env(self, key: jax.Array, state: EnvState, actions: jax.Array):
        """One transition without auto-reset; the only randomness is the collision coins."""
        coins = jax.random.bernoulli(key, 0.5, (max(self.n_pairs, 1),))
        return self.transition(state, actions, coins)

    def transition(self, state: EnvState, actions: jax.Array, coins: jax.Array):
        """Deterministic step given per-pair collision coins, in the order (0,1),(0,2),..,(1,2),...

        `coins[p]` True sends the higher slot of colliding pair p back, False the lower one.
        Returns (obs, state, reward, done, info).
        """
        g, rw = self.params.game, self.params.reward
        fdt = _float()
        A, B = self.n_agents, self.n_buildings
        adjacent = self._adjacent(state)
        avail = self.avail_actions(state, adjacent)
        actions = jnp.asarray(actions, jnp.int32)
        chosen = jnp.take_along_axis(avail, jnp.clip(actions, 0, N_ACTIONS - 1)[:, None], 1)[:, 0]
        ok = (actions >= 0) & (actions < N_ACTIONS) & (chosen >= 1)
        invalid = state.agent_valid & ~ok
        actions = jnp.where(ok & state.agent_valid, actions, STAY)

        # Moves: destination was checked against start-of-step occupancy (11.1).
        prev_pos = state.agent_pos
        pos = prev_pos + jnp.asarray(MOVE_DELTA)[actions]

        # Interactions target the unique adjacent building (11.3).
        atype = jnp.maximum(state.agent_type, 0)
        is_ext = (actions == EXTINGUISH)[:, None] & adjacent  # [A, B]
        is_bld = (actions == BUILD)[:, None] & adjacent
        is_frz = (actions == FREEZE)[:, None] & adjacent
        fire_speed = jnp.asarray(FIRE_SPEED, fdt)[atype]
        build_speed = jnp.asarray(BUILD_SPEED, fdt)[atype]
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
        burn = f_new * jnp.asarray(BURN_MULT, fdt)[state.bld_type] * g.fire_burn_rate
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
        pos = _resolve_collisions(pos, prev_pos, state.agent_valid, coins)

        t_new = state.t + 1
        ext_types = jnp.sum(ext_by_type, 1)
        bld_types = jnp.sum(bld_by_type, 1)
        counts = jnp.stack([jnp.sum(is_ext, 1), jnp.sum(is_bld, 1), jnp.sum(is_frz, 1)], -1)
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
            action_counts=st.action_counts + jnp.einsum("at,ak->tk", of_type, counts),
            invalid_actions=st.invalid_actions + jnp.sum(invalid),
        )
        new_state = state.replace(
            agent_pos=pos, health=h_new, fire=f_new, ttnf=ttnf, tslf=tslf, t=t_new, stats=stats
        )

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
    def get_obs(self, state: EnvState) -> Observation:
        """Entities, coded available actions and masks of `state`."""
        A, B = self.n_agents, self.n_buildings
        fdt = _float()
        avail = self.avail_actions(state)
        pos = jnp.concatenate([state.agent_pos, state.bld_pos], 0)  # [E, 2]
        etype = jnp.concatenate([state.agent_type, state.bld_type], 0)
        valid = jnp.concatenate([state.agent_valid, state.bld_valid], 0)
        grid = jnp.arange(sc.MAP_SIZE)
        common = jnp.concatenate(
            [
                etype[:, None] == jnp.arange(sc.N_ENTITY_TYPES)[None],
                pos[:, :1] == grid[None],
                pos[:, 1:] == grid[None],
            ],
            -1,
        ).astype(fdt)
        scaled = pos.astype(fdt) / sc.MAP_SIZE
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
        agent_rows = jnp.concatenate(
            [common[:A], scaled[:A], (avail >= 1).astype(fdt), jnp.zeros((A, 7), fdt)], -1
        )
        bld_rows = jnp.concatenate(
            [common[A:], scaled[A:], jnp.zeros((B, N_ACTIONS), fdt), bld_feat], -1
        )
        entities = jnp.concatenate([agent_rows, bld_rows], 0) * valid[:, None]

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
        base = self._reset_from_uniforms(jnp.zeros(self._n_reset_draws, fdt))
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
def _split_sizes(u: jax.Array, sizes: list[int]) -> list[jax.Array]:
    out, i = [], 0
    for s in sizes:
        out.append(u[i : i + s])
        i += s
    return out


def _ranks(keys: jax.Array) -> jax.Array:
    """Rank of each key in ascending order, ties by index: a sort-free permutation [K]."""
    k = keys.shape[0]
    idx = jnp.arange(k)
    before = (keys[None, :] < keys[:, None]) | (
        (keys[None, :] == keys[:, None]) & (idx[None, :] < idx[:, None])
    )
    return jnp.sum(before, 1)


def _pick_by_rank(rank: jax.Array, cells: jax.Array, n: int) -> jax.Array:
    """Row i = the cell whose rank is i, for i < n: [n, 2]."""
    onehot = rank[None, :] == jnp.arange(n)[:, None]  # [n, K]
    return jnp.sum(onehot[:, :, None] * cells[None], 1)


def _resolve_collisions(pos, prev_pos, valid, coins):
    """Pairwise loop in slot order; a colliding pair sends one member back (6.5)."""
    A = pos.shape[0]
    p = 0
    for i in range(A):
        for j in range(i + 1, A):
            clash = valid[i] & valid[j] & jnp.all(pos[i] == pos[j])
            back_j = clash & coins[p]
            back_i = clash & ~coins[p]
            pos = pos.at[i].set(jnp.where(back_i, prev_pos[i], pos[i]))
            pos = pos.at[j].set(jnp.where(back_j, prev_pos[j], pos[j]))
            p += 1
    return pos


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
    etype = jnp.argmax(ent[:, : sc.N_ENTITY_TYPES], -1)
    base = sc.N_ENTITY_TYPES
    x = jnp.argmax(ent[:, base : base + sc.MAP_SIZE], -1)
    y = jnp.argmax(ent[:, base + sc.MAP_SIZE : base + 2 * sc.MAP_SIZE], -1)
    pos = jnp.stack([x, y], -1)
    present = ~obs.entity_mask
    active = present[A:] & ~obs.task_mask
    on_fire = ent[A:, ENTITY_DIM - 3] > 0
    return _heuristic(pos[:A], etype[:A], present[:A], pos[A:], active, on_fire)
