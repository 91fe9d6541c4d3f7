"""SaveTheCity as a plain numpy environment with the SMAC-style entity methods.

A host-side twin of `envs_jax.savethecity` (rules: `shared/specs/savethecity.md`; section
numbers in comments) that the bridge tests and benchmarks drive through worker processes.
It follows the slow reference of the test suite rule by rule, on numpy arrays, one
environment per object. Its state is a dict with the reference's field names
(`state_dict()`), so the reference's `ref_step` can check `transition` step by step.

Methods: `get_env_info`, `info_spec`, `reset(seed)`, `step(actions)`, `get_entities`,
`get_masks`, `get_avail_actions`, `get_stats`, `close`. Randomness comes from a numpy
generator seeded at `reset(seed)`, so streams differ from the JAX env's while the
distributions agree. Imports numpy and the numpy-only scenario tables, never JAX.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from envs_jax.savethecity import scenarios as sc

MAP_SIZE = sc.MAP_SIZE
FIREFIGHTER, BUILDER, GENERALIST = sc.FIREFIGHTER, sc.BUILDER, sc.GENERALIST
# Per entity type id (buildings 0, 1 get zeros): section 1.3.
FIRE_SPEED = np.array([0.0, 0.0, 1.0, 0.05, 0.0])
BUILD_SPEED = np.array([0.0, 0.0, 0.05, 1.0, 0.0])
CAN_FREEZE = np.array([False, False, False, False, True])
MAX_MOVE = np.array([0, 0, 1, 1, 2])
BURN_MULT = np.array([1.0, 0.5])  # per building type (1.4)
PERIOD_RANGE = np.array([[60, 80], [10, 30]])
HEALTH_RANGES = np.array([[0.25, 0.40], [0.60, 0.75]])
MIN_PERIOD, MAX_PERIOD = 10, 80
DIRECTIONS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # N, E, S, W
MAX_MOVE_DIST = 2
N_ACTIONS = 1 + 4 * MAX_MOVE_DIST + 3
STAY, EXTINGUISH, BUILD, FREEZE = 0, N_ACTIONS - 3, N_ACTIONS - 2, N_ACTIONS - 1
ENTITY_DIM = sc.N_ENTITY_TYPES + 2 * MAP_SIZE + 2 + N_ACTIONS + 7
OFF_MAP = -100
TIMER_DONE = 1000
STAT_KEYS = ("fires_extinguished", "buildings_completed", "buildings_burned",
             "buildings_health_delta", "firefight_types", "firefight_pairs", "build_types",
             "build_pairs", "invalid_actions")

GAME_DEFAULTS = {"init_fire_chance": 0.4, "fire_burn_rate": 0.035, "fire_reduce_rate": 0.25,
                 "fire_growth_rate": 1.1, "base_build_rate": 0.125,
                 "generalist_help_factor": 0.45}
REWARD_DEFAULTS = {"health_delta_mult": 10.0, "complete": 1.0, "burned_down": -20.0,
                   "extinguish": 0.5, "solved": 20.0, "ts_pen": 0.0}


def _options(given: dict | None, defaults: dict, what: str) -> dict:
    given = dict(given or {})
    bad = sorted(set(given) - set(defaults))
    if bad:
        raise ValueError(f"unknown savethecity {what} option(s) {bad}; allowed: {sorted(defaults)}")
    return {**defaults, **{k: float(v) for k, v in given.items()}}


class HostSaveTheCity:
    """One SaveTheCity environment on numpy; options as `SaveTheCityParams`."""

    def __init__(self, scenario: str = "2-5a_2-5b", split: str = "train",
                 episode_limit: int = 150, reward_scale: float = 20.0,
                 end_on_any_burn: bool = False, heuristic_alloc: bool = False,
                 track_ac_type: bool = False, game: dict | None = None,
                 reward: dict | None = None, seed: int = 0):
        if episode_limit < 1:
            raise ValueError(f"episode_limit must be >= 1, got {episode_limit}")
        self.table = sc.get_scenarios(scenario, split)
        self.game = _options(game, GAME_DEFAULTS, "game")
        self.rw = _options(reward, REWARD_DEFAULTS, "reward")
        self.episode_limit = int(episode_limit)
        self.end_on_any_burn = bool(end_on_any_burn)
        self.heuristic_alloc = bool(heuristic_alloc)
        self.track_ac_type = bool(track_ac_type)
        t = self.table
        self.A, self.B = t.max_agents, t.max_buildings
        self.bld_cells = sc.building_candidates(t.bld_spacing)
        self.spawn = [sc.spawn_candidates(max(n, 1), t.bld_spacing) for n in range(self.A + 1)]
        r = self.rw
        # the family's maximum building count normalises every episode (spec 11.11)
        max_reward = 0.5 * r["health_delta_mult"] * self.B + r["complete"] * self.B + r["solved"]
        self.norm = float(reward_scale) / max_reward
        self.rng = np.random.default_rng(seed)
        self.s: dict[str, Any] | None = None
        self._avail: np.ndarray | None = None
        self.episodes = 0
        self.solved_episodes = 0

    # ---------------------------------------------------------------- interface sizes
    def get_env_info(self) -> dict[str, int]:
        return {"n_agents": self.A, "n_entities": self.A + self.B, "n_tasks": self.B,
                "n_actions": N_ACTIONS, "entity_shape": ENTITY_DIM,
                "episode_limit": self.episode_limit}

    def info_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-step info arrays, the keys and dtypes of the JAX env's `step_env` info."""
        f32, i32 = "float32", "int32"
        spec = {
            "task_rewards": ((self.B,), f32), "tasks_terminated": ((self.B,), "bool"),
            "tasks_changed": ((), "bool"), "invalid_actions": ((), i32),
            "solved": ((), f32), "prop_buildings_completed": ((), f32),
            "buildings_completed": ((), i32), "buildings_burned": ((), i32),
            "fires_extinguished": ((), i32), "buildings_health_delta": ((), f32),
            "episode_limit": ((), "bool"), "types_per_firefight": ((), f32),
            "types_per_build": ((), f32), "episode_invalid_actions": ((), i32),
            "n_agents": ((), i32), "n_buildings": ((), i32), "episode_length": ((), i32),
        }
        if self.track_ac_type:
            spec["action_types"] = ((3, 3), f32)
        return spec

    # -------------------------------------------------------------------- reset (4)
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode (reseeding first when `seed` is given); returns the entities."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        rng, t, A, B = self.rng, self.table, self.A, self.B
        k = int(rng.integers(t.n_scenarios))
        n = int(t.n_agents[k])
        m = int(rng.integers(t.min_blds[k], t.max_blds[k] + 1))
        fixed = t.bld_types[k]
        bld_type = np.where(fixed >= 0, fixed, (rng.random(B) >= 0.5).astype(np.int64))

        agent_pos = np.stack([OFF_MAP - 3 * np.arange(A), np.full(A, OFF_MAP)], -1)
        spawn = self.spawn[n]
        agent_pos[:n] = spawn[rng.permutation(len(spawn))[:n]]
        bld_pos = np.stack([np.full(B, OFF_MAP), OFF_MAP - 3 * np.arange(B)], -1)
        bld_pos[:m] = self.bld_cells[rng.permutation(len(self.bld_cells))[:m]]

        high = (rng.random(B) >= 0.5).astype(np.int64)
        u = rng.random(B)
        health = HEALTH_RANGES[high, 0] * u + HEALTH_RANGES[high, 1] * (1.0 - u)
        lo, hi = PERIOD_RANGE[bld_type, 0], PERIOD_RANGE[bld_type, 1]
        period = lo + np.minimum((rng.random(B) * (hi - lo + 1)).astype(np.int64), hi - lo)
        fire = np.where(rng.random(B) < self.game["init_fire_chance"], 1.0, 0.0)

        bld_valid = np.arange(B) < m
        self.s = {
            "agent_pos": agent_pos.astype(np.int64),
            "agent_type": np.where(np.arange(A) < n, t.agent_types[k], -1).astype(np.int64),
            "agent_valid": np.arange(A) < n,
            "bld_pos": bld_pos.astype(np.int64),
            "bld_type": np.where(bld_valid, bld_type, 0).astype(np.int64),
            "bld_valid": bld_valid,
            "health": np.where(bld_valid, health, 0.0),
            "fire": np.where(bld_valid, fire, 0.0),
            "period": np.where(bld_valid, period, 1).astype(np.int64),
            "ttnf": np.where(bld_valid, period, 0).astype(np.int64),
            "tslf": np.zeros(B, np.int64),
            "t": 0,
            "scenario": k,
            "stats": _new_stats(),
        }
        self._avail = None
        return self.get_entities()

    def set_state(self, state: dict) -> None:
        """Continue from a state in the reference's dict layout (tests)."""
        self.s = copy.deepcopy(state)
        self._avail = None

    def state_dict(self) -> dict:
        """A copy of the state in the reference's dict layout."""
        return copy.deepcopy(self.s)

    # ------------------------------------------------------------- availability (5.2)
    def _grids(self) -> tuple[np.ndarray, np.ndarray]:
        """Occupied cells and building index per cell (-1 none) of the current state."""
        s = self.s
        occ = np.zeros((MAP_SIZE, MAP_SIZE), bool)
        bidx = np.full((MAP_SIZE, MAP_SIZE), -1, np.int64)
        ax, ay = s["agent_pos"][s["agent_valid"]].T
        occ[ax, ay] = True
        real = np.flatnonzero(s["bld_valid"])
        bx, by = s["bld_pos"][real].T
        occ[bx, by] = True
        bidx[bx, by] = real
        return occ, bidx

    def _adjacent(self, bidx: np.ndarray, x: int, y: int) -> int:
        """The (unique, spacing >= 3) building 4-adjacent to (x, y), or -1."""
        for dx, dy in DIRECTIONS:
            nx, ny = x + dx, y + dy
            if 0 <= nx < MAP_SIZE and 0 <= ny < MAP_SIZE and bidx[nx, ny] >= 0:
                return int(bidx[nx, ny])
        return -1

    def get_avail_actions(self) -> np.ndarray:
        """[A, 12] int32 codes: 0 no, 1 yes, 2+b interact with building b; padded [1,0..]."""
        # entities, the step and the runner all ask for the same state's availability
        if self._avail is None:
            self._avail = self._compute_avail()
        return self._avail.copy()

    def _compute_avail(self) -> np.ndarray:
        s = self.s
        occ, bidx = self._grids()
        avail = np.zeros((self.A, N_ACTIONS), np.int32)
        avail[:, STAY] = 1
        for i in np.flatnonzero(s["agent_valid"]):
            x, y = (int(v) for v in s["agent_pos"][i])
            ty = int(s["agent_type"][i])
            for d in range(1, MAX_MOVE[ty] + 1):
                for k, (dx, dy) in enumerate(DIRECTIONS):
                    nx, ny = x + d * dx, y + d * dy
                    # only the destination counts: generalists jump over the middle cell
                    if 0 <= nx < MAP_SIZE and 0 <= ny < MAP_SIZE and not occ[nx, ny]:
                        avail[i, 1 + 4 * (d - 1) + k] = 1
            b = self._adjacent(bidx, x, y)
            if b < 0:
                continue
            fire, h = s["fire"][b], s["health"][b]
            if fire > 0.0:
                avail[i, EXTINGUISH] = 2 + b
                if CAN_FREEZE[ty]:
                    avail[i, FREEZE] = 2 + b
            if fire == 0.0 and 0.0 < h < 1.0:
                avail[i, BUILD] = 2 + b
        return avail

    # ------------------------------------------------------------------- step (6)
    def step(self, actions: Any) -> tuple[float, bool, dict]:
        """One transition; collision coins come from the env's generator."""
        coins = self.rng.random(self.A * (self.A - 1) // 2) < 0.5
        return self.transition(actions, coins)

    def transition(self, actions: Any, coins: Any) -> tuple[float, bool, dict]:
        """Deterministic step given one coin per slot pair (0,1),(0,2),..,(1,2),..: True
        sends the higher slot of a colliding pair back. Returns (reward, done, info)."""
        s, g, rw = self.s, self.game, self.rw
        A, B = self.A, self.B
        actions = np.asarray(actions).reshape(-1)
        stats = s["stats"]
        avail = self.get_avail_actions()
        prev_tasks = self._tasks_complete(s["health"].copy())
        self._avail = None  # the state changes below

        # 6.1 invalid actions of real agents become "stay" (5.3)
        valid_agents = np.flatnonzero(s["agent_valid"])
        acts = np.full(A, STAY, np.int64)
        n_invalid = 0
        for i in valid_agents:
            a = int(actions[i])
            if 0 <= a < N_ACTIONS and avail[i, a] >= 1:
                acts[i] = a
            else:
                n_invalid += 1

        # 6.2 moves and interactions (start-of-step positions)
        prev = s["agent_pos"].copy()
        pos = prev.copy()
        dec, dlt = np.zeros(B), np.zeros(B)
        frozen = np.zeros(B, bool)
        ext_types: list[set] = [set() for _ in range(B)]
        bld_types: list[set] = [set() for _ in range(B)]
        for i in valid_agents:
            a, ty = int(acts[i]), int(s["agent_type"][i])
            if 1 <= a <= 4 * MAX_MOVE_DIST:
                d, (dx, dy) = 1 + (a - 1) // 4, DIRECTIONS[(a - 1) % 4]
                pos[i] = prev[i] + d * np.array([dx, dy])
            elif a in (EXTINGUISH, BUILD, FREEZE):
                b = int(avail[i, a]) - 2
                row = ty - FIREFIGHTER
                if a == EXTINGUISH:
                    dec[b] += FIRE_SPEED[ty] * g["fire_reduce_rate"]
                    ext_types[b].add(ty)
                    stats["action_counts"][row][0] += 1
                elif a == BUILD:
                    dlt[b] += BUILD_SPEED[ty] * g["base_build_rate"]
                    bld_types[b].add(ty)
                    stats["action_counts"][row][1] += 1
                else:
                    frozen[b] = True
                    stats["action_counts"][row][2] += 1

        # 6.3 buildings
        dh = np.zeros(B)
        extinguished = np.zeros(B, bool)
        completed = np.zeros(B, bool)
        burned = np.zeros(B, bool)
        for b in np.flatnonzero(s["bld_valid"]):
            f, h = float(s["fire"][b]), float(s["health"][b])
            if dec[b] == 0.0:  # nobody extinguishing, or generalists only (speed 0)
                f_new = g["fire_growth_rate"] * f
            else:
                if BUILDER in ext_types[b] and GENERALIST in ext_types[b]:
                    dec[b] += g["generalist_help_factor"] * g["fire_reduce_rate"]
                f_new = f - dec[b]
            f_new = min(max(f_new, 0.0), 1.0)
            if FIREFIGHTER in bld_types[b] and GENERALIST in bld_types[b]:
                dlt[b] += g["generalist_help_factor"] * g["base_build_rate"]
            if not frozen[b]:
                dlt[b] -= f_new * BURN_MULT[int(s["bld_type"][b])] * g["fire_burn_rate"]
            h_new = min(max(h + dlt[b], 0.0), 1.0)
            dh[b] = h_new - h
            extinguished[b] = f > 0.0 and f_new == 0.0
            completed[b] = h < 1.0 and h_new == 1.0
            burned[b] = h > 0.0 and h_new == 0.0
            if burned[b]:
                f_new = 0.0
            if ext_types[b]:
                stats["firefight_types"] += len(ext_types[b])
                stats["firefight_pairs"] += 1
            if bld_types[b]:
                stats["build_types"] += len(bld_types[b])
                stats["build_pairs"] += 1
            ttnf, tslf = int(s["ttnf"][b]), int(s["tslf"][b])
            if 0.0 < h_new < 1.0:
                ttnf, tslf = ttnf - 1, tslf + 1
                if ttnf <= 0:  # periodic ignition (6.3.8)
                    f_new, ttnf, tslf = 1.0, int(s["period"][b]), 0
            else:
                ttnf, tslf = TIMER_DONE, 0
            s["fire"][b], s["health"][b], s["ttnf"][b], s["tslf"][b] = f_new, h_new, ttnf, tslf

        # 6.4 rewards: a completion pays +complete globally but +solved to its own task
        real = s["bld_valid"]
        r_b = (rw["health_delta_mult"] * dh + rw["burned_down"] * burned
               + rw["extinguish"] * extinguished)
        reward = rw["ts_pen"] + float(np.sum(np.where(real, r_b + rw["complete"] * completed, 0)))
        task_r = np.where(real, r_b + rw["solved"] * completed + rw["ts_pen"], 0.0)
        stats["fires_extinguished"] += int(extinguished.sum())
        stats["buildings_completed"] += int(completed.sum())
        stats["buildings_burned"] += int(burned.sum())
        stats["buildings_health_delta"] += float(dh[real].sum())
        stats["invalid_actions"] += n_invalid

        # 6.5 collisions: sequential pair loop, the coin picks who goes back
        p = 0
        valid = s["agent_valid"]
        for i in range(A):
            for j in range(i + 1, A):
                if valid[i] and valid[j] and pos[i, 0] == pos[j, 0] and pos[i, 1] == pos[j, 1]:
                    if coins[p]:
                        pos[j] = prev[j]
                    else:
                        pos[i] = prev[i]
                p += 1
        s["agent_pos"] = pos
        s["t"] = int(s["t"]) + 1

        # 6.7 - 6.9 tasks and termination
        now_tasks = self._tasks_complete(s["health"])
        complete = real & (s["health"] == 1.0)
        terminal = bool(np.all(now_tasks))
        if self.end_on_any_burn:
            terminal = terminal or bool(np.all(complete | ~real)) or bool(
                np.any(real & (s["health"] == 0.0)))
        timeout = not terminal and s["t"] >= self.episode_limit
        done = terminal or timeout
        solved = done and bool(np.all(complete | ~real))
        if solved:
            reward += rw["solved"]

        m = int(real.sum())
        info: dict[str, Any] = {
            "task_rewards": task_r * self.norm,
            "tasks_terminated": now_tasks,
            "tasks_changed": bool(np.any(now_tasks != prev_tasks)),
            "invalid_actions": n_invalid,
            "solved": float(solved),
            "prop_buildings_completed": complete.sum() / m,
            "buildings_completed": stats["buildings_completed"],
            "buildings_burned": stats["buildings_burned"],
            "fires_extinguished": stats["fires_extinguished"],
            "buildings_health_delta": stats["buildings_health_delta"],
            "episode_limit": timeout,
            "types_per_firefight": _ratio(stats["firefight_types"], stats["firefight_pairs"]),
            "types_per_build": _ratio(stats["build_types"], stats["build_pairs"]),
            "episode_invalid_actions": stats["invalid_actions"],
            "n_agents": int(s["agent_valid"].sum()),
            "n_buildings": m,
            "episode_length": s["t"],
        }
        if self.track_ac_type:
            counts = np.asarray(stats["action_counts"], np.float64)
            info["action_types"] = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        if done:
            self.episodes += 1
            self.solved_episodes += int(solved)
        return reward * self.norm, done, info

    def _tasks_complete(self, health: np.ndarray) -> np.ndarray:
        """6.7: finished (complete or burned) real buildings and every padded slot."""
        real = self.s["bld_valid"]
        return ~real | (health == 1.0) | (health == 0.0)

    # ---------------------------------------------------------- observation (7)
    def get_entities(self) -> np.ndarray:
        """[A + B, 58] float32 entity features (7.1); padded rows are zeros."""
        s, A = self.s, self.A
        ent = np.zeros((self.A + self.B, ENTITY_DIM), np.float32)
        avail = self.get_avail_actions()
        rows = [(i, s["agent_pos"][i], s["agent_type"][i]) for i in np.flatnonzero(
            s["agent_valid"])]
        rows += [(A + b, s["bld_pos"][b], s["bld_type"][b]) for b in np.flatnonzero(
            s["bld_valid"])]
        for r, (x, y), ty in rows:
            ent[r, ty] = 1.0
            ent[r, 5 + x] = 1.0
            ent[r, 21 + y] = 1.0
            ent[r, 37] = x / MAP_SIZE
            ent[r, 38] = y / MAP_SIZE
        for i in np.flatnonzero(s["agent_valid"]):
            ent[i, 39:39 + N_ACTIONS] = avail[i] >= 1
        for b in np.flatnonzero(s["bld_valid"]):
            period, h, f = s["period"][b], s["health"][b], s["fire"][b]
            ent[A + b, 51:58] = (
                h, h == 1.0, h == 0.0, f, f > 0.0, s["tslf"][b] / period,
                (1.0 / period - 1.0 / MAX_PERIOD) / (1.0 / MIN_PERIOD - 1.0 / MAX_PERIOD),
            )
        return ent

    def get_masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obs_mask [E,E], entity_mask [E], entity2task_mask [E,B], task_mask [B]), 1=masked."""
        s, A, B = self.s, self.A, self.B
        real = np.concatenate([s["agent_valid"], s["bld_valid"]])
        is_agent = np.arange(A + B) < A
        # agents see every real entity, buildings only buildings (7.2)
        sees = real[:, None] & real[None, :] & (is_agent[:, None] | ~is_agent[None, :])
        e2t = np.ones((A + B, B), bool)
        bld = np.flatnonzero(s["bld_valid"])
        e2t[A + bld, bld] = False
        if self.heuristic_alloc:
            e2t[:A] = ~self.heuristic()
        return ~sees, ~real, e2t, self._tasks_complete(s["health"])

    def heuristic(self) -> np.ndarray:
        """Section 10 allocation: [A, B] bool one-hot per real agent (none without targets)."""
        s = self.s
        alloc = np.zeros((self.A, self.B), bool)
        active = [b for b in np.flatnonzero(s["bld_valid"]) if 0.0 < s["health"][b] < 1.0]
        for i in np.flatnonzero(s["agent_valid"]):
            x, y = s["agent_pos"][i]
            by_dist = sorted(active, key=lambda b: abs(s["bld_pos"][b][0] - x)
                             + abs(s["bld_pos"][b][1] - y))
            fires = [b for b in by_dist if s["fire"][b] > 0.0]
            calm = [b for b in by_dist if not s["fire"][b] > 0.0]
            order = calm + fires if s["agent_type"][i] == BUILDER else fires + calm
            if order:
                alloc[i, order[0]] = True
        return alloc

    def get_stats(self) -> dict[str, float]:
        return {"episodes": self.episodes, "solved": self.solved_episodes,
                "solve_rate": self.solved_episodes / max(self.episodes, 1)}

    def close(self) -> None:
        self.s = None


def _new_stats() -> dict:
    stats: dict[str, Any] = {k: 0 for k in STAT_KEYS}
    stats["buildings_health_delta"] = 0.0
    stats["action_counts"] = [[0, 0, 0] for _ in range(3)]
    return stats


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


__all__ = ["ENTITY_DIM", "N_ACTIONS", "HostSaveTheCity"]
