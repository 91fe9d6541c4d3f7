"""A slow, obvious, plain-Python reference of SaveTheCity, written from the spec only.

Every rule below is transcribed from `shared/specs/savethecity.md` (section numbers in the
comments); nothing is taken from `envs_jax/savethecity/env.py`, so this module is an
independent oracle for the equivalence tests. It uses Python loops, Python floats
(float64), sets of agent types for the help rule and a literal sequential collision loop.

A state is a dict of numpy arrays with the `EnvState` field names (`agent_pos`,
`agent_type`, `agent_valid`, `bld_pos`, `bld_type`, `bld_valid`, `health`, `fire`, `period`,
`ttnf`, `tslf`, `t`, `scenario`) plus `stats`, a dict of the episode accumulators. Array
sizes are the scenario family's maxima A (agents) and B (buildings); padded slots have
`valid == False`.
"""

from __future__ import annotations

import copy
import math

import numpy as np

# ----------------------------------------------------------------- constants (section 1)
MAP_SIZE = 16
FAST_BURN, SLOW_BURN, FIREFIGHTER, BUILDER, GENERALIST = 0, 1, 2, 3, 4
N_ENTITY_TYPES = 5

# 1.3 agent types
FIRE_SPEED = {FIREFIGHTER: 1.0, BUILDER: 0.05, GENERALIST: 0.0}
BUILD_SPEED = {FIREFIGHTER: 0.05, BUILDER: 1.0, GENERALIST: 0.0}
CAN_FREEZE = {FIREFIGHTER: False, BUILDER: False, GENERALIST: True}
MAX_MOVE = {FIREFIGHTER: 1, BUILDER: 1, GENERALIST: 2}

# 1.4 building types
BURN_MULT = {FAST_BURN: 1.0, SLOW_BURN: 0.5}
MIN_FIRE_START_RATE, MAX_FIRE_START_RATE = 10, 80

# 1.5 game_config
FIRE_BURN_RATE = 0.035
FIRE_REDUCE_RATE = 0.25
FIRE_GROWTH_RATE = 1.1
BASE_BUILD_RATE = 0.125
GENERALIST_HELP_FACTOR = 0.45

# 1.6 reward_config
R_HEALTH_DELTA_MULT = 10.0
R_COMPLETE = 1.0
R_BURNED_DOWN = -20.0
R_EXTINGUISH = 0.5
R_SOLVED = 20.0
R_TS_PEN = 0.0
R_TASK_COMPLETE = 20.0  # 6.4 / 11.10: a completion pays +20 to its own task

# 1.7 / 1.8
EPISODE_LIMIT = 150
REWARD_SCALE = 20.0
MAX_MOVE_DIST = 2
N_ACTIONS = 1 + 4 * MAX_MOVE_DIST + 3  # 12
ENTITY_DIM = N_ENTITY_TYPES + 2 * MAP_SIZE + 2 + N_ACTIONS + 7  # 58
TIMER_DONE = 1000  # 6.3.8: ttnf of a complete or burned building

# 5.1 action layout; directions N, E, S, W
STAY = 0
EXTINGUISH, BUILD, FREEZE = N_ACTIONS - 3, N_ACTIONS - 2, N_ACTIONS - 1
DIRECTIONS = [(0, 1), (1, 0), (0, -1), (-1, 0)]

STAT_KEYS = (
    "fires_extinguished",
    "buildings_completed",
    "buildings_burned",
    "buildings_health_delta",
    "firefight_types",
    "firefight_pairs",
    "build_types",
    "build_pairs",
    "invalid_actions",
)


def move_of(action: int) -> tuple[int, tuple[int, int]] | None:
    """(distance, direction) of move action `1 + 4*(d-1) + k` (5.1), None for non-moves."""
    if 1 <= action <= 4 * MAX_MOVE_DIST:
        d = 1 + (action - 1) // 4
        k = (action - 1) % 4
        return d, DIRECTIONS[k]
    return None


def new_stats() -> dict:
    stats = {k: 0 for k in STAT_KEYS}
    stats["buildings_health_delta"] = 0.0
    # optional action-type counts (section 9, track_ac_type): rows F, B, G; cols ext, build, freeze
    stats["action_counts"] = [[0, 0, 0] for _ in range(3)]
    return stats


def state_from_jax(state) -> dict:
    """Plain numpy/Python copy of a JAX `EnvState` (only field access, no env logic)."""
    s = {
        "agent_pos": np.asarray(state.agent_pos).astype(np.int64),
        "agent_type": np.asarray(state.agent_type).astype(np.int64),
        "agent_valid": np.asarray(state.agent_valid).astype(bool),
        "bld_pos": np.asarray(state.bld_pos).astype(np.int64),
        "bld_type": np.asarray(state.bld_type).astype(np.int64),
        "bld_valid": np.asarray(state.bld_valid).astype(bool),
        "health": np.asarray(state.health).astype(np.float64),
        "fire": np.asarray(state.fire).astype(np.float64),
        "period": np.asarray(state.period).astype(np.int64),
        "ttnf": np.asarray(state.ttnf).astype(np.int64),
        "tslf": np.asarray(state.tslf).astype(np.int64),
        "t": int(state.t),
        "scenario": int(state.scenario),
    }
    stats = new_stats()
    for k in STAT_KEYS:
        v = np.asarray(getattr(state.stats, k))
        stats[k] = float(v) if k == "buildings_health_delta" else int(v)
    stats["action_counts"] = np.asarray(state.stats.action_counts).astype(int).tolist()
    s["stats"] = stats
    return s


# ------------------------------------------------------------------- small helpers
def _sizes(state) -> tuple[int, int]:
    return len(state["agent_valid"]), len(state["bld_valid"])


def _agents(state) -> list[int]:
    return [i for i in range(len(state["agent_valid"])) if state["agent_valid"][i]]


def _buildings(state) -> list[int]:
    return [b for b in range(len(state["bld_valid"])) if state["bld_valid"][b]]


def is_complete(state, b) -> bool:
    return bool(state["bld_valid"][b]) and float(state["health"][b]) == 1.0


def is_burned(state, b) -> bool:
    return bool(state["bld_valid"][b]) and float(state["health"][b]) == 0.0


def tasks_complete(state) -> list[bool]:
    """6.7: complete or burned for real buildings, True for padded ones."""
    return [
        (not state["bld_valid"][b]) or is_complete(state, b) or is_burned(state, b)
        for b in range(len(state["bld_valid"]))
    ]


def max_reward(n_buildings_max: int) -> float:
    """1.8: uses the family's maximum number of buildings (11.11)."""
    return 0.5 * R_HEALTH_DELTA_MULT * n_buildings_max + R_COMPLETE * n_buildings_max + R_SOLVED


def adjacent_building(state, x: int, y: int) -> int | None:
    """The (at most one, 2.2) real building 4-adjacent to cell (x, y)."""
    found = []
    for b in _buildings(state):
        bx, by = int(state["bld_pos"][b][0]), int(state["bld_pos"][b][1])
        if abs(bx - x) + abs(by - y) == 1:
            found.append(b)
    assert len(found) <= 1, "spacing >= 3 guarantees at most one adjacent building"
    return found[0] if found else None


def _occupied(state) -> set[tuple[int, int]]:
    """Cells holding a real agent or a real building (start of step, 11.1)."""
    cells = set()
    for i in _agents(state):
        cells.add((int(state["agent_pos"][i][0]), int(state["agent_pos"][i][1])))
    for b in _buildings(state):
        cells.add((int(state["bld_pos"][b][0]), int(state["bld_pos"][b][1])))
    return cells


def _inside(x: int, y: int) -> bool:
    return 0 <= x < MAP_SIZE and 0 <= y < MAP_SIZE


# ------------------------------------------------------------- availability (5.2)
def ref_avail(state) -> np.ndarray:
    """[A, 12] int: 0 unavailable, 1 available, 2+b interaction with building b."""
    A, _ = _sizes(state)
    avail = np.zeros((A, N_ACTIONS), np.int64)
    occupied = _occupied(state)
    for i in range(A):
        avail[i][STAY] = 1
        if not state["agent_valid"][i]:
            continue  # padded rows: [1, 0, ..., 0]
        ty = int(state["agent_type"][i])
        x, y = int(state["agent_pos"][i][0]), int(state["agent_pos"][i][1])
        # moves: only the destination is checked (generalists jump over the middle cell)
        for d in range(1, MAX_MOVE[ty] + 1):
            for k, (dx, dy) in enumerate(DIRECTIONS):
                nx, ny = x + d * dx, y + d * dy
                if _inside(nx, ny) and (nx, ny) not in occupied:
                    avail[i][1 + 4 * (d - 1) + k] = 1
        # interactions with the unique 4-adjacent building
        b = adjacent_building(state, x, y)
        if b is None:
            continue
        fire = float(state["fire"][b])
        if fire > 0:
            avail[i][EXTINGUISH] = 2 + b  # every type, even the generalist
            if CAN_FREEZE[ty]:
                avail[i][FREEZE] = 2 + b
        if not is_complete(state, b) and not is_burned(state, b) and fire == 0.0:
            avail[i][BUILD] = 2 + b  # every type, even the generalist
    return avail


# ------------------------------------------------------------------------ step (6)
def ref_step(state, actions, coins, episode_limit: int = EPISODE_LIMIT):
    """One transition. `coins[p]` for pair p in the order (0,1),(0,2),..,(1,2),.. over all
    A slots: True sends agent j (the higher slot) back, False sends agent i back.

    Returns (next_state, reward, task_rewards, tasks_terminated, tasks_changed, done, info).
    Invalid actions of real agents are executed as "stay" and counted (5.3); actions of
    padded slots are ignored. `info["debug"]` holds counters for test coverage.
    """
    A, B = _sizes(state)
    new = copy.deepcopy(state)
    stats = new["stats"]
    debug = {
        "collisions": 0,
        "max_contenders": 0,
        "jumps_over": 0,
        "interactions": {EXTINGUISH: 0, BUILD: 0, FREEZE: 0},
        "help_extinguish": 0,
        "help_build": 0,
        "generalist_only_extinguish": 0,
        "extinguished": 0,
        "completed": 0,
        "burned": 0,
        "ignitions": 0,
        "reignite_after_extinguish": 0,
    }

    # 6.1 validate against the start-of-step availability
    avail = ref_avail(state)
    acts = [STAY] * A
    n_invalid = 0
    for i in _agents(state):
        a = int(actions[i])
        if 0 <= a < N_ACTIONS and avail[i][a] >= 1:
            acts[i] = a
        else:
            n_invalid += 1  # 5.3: replaced by stay

    # 6.2 moves and interaction registration, agents in slot order
    occupied = _occupied(state)
    prev = [(int(p[0]), int(p[1])) for p in state["agent_pos"]]
    pos = list(prev)
    dec = [0.0] * B
    dlt = [0.0] * B
    frozen = [False] * B
    ext_types = [set() for _ in range(B)]  # X_b
    build_types = [set() for _ in range(B)]  # Y_b
    for i in _agents(state):
        a = acts[i]
        ty = int(state["agent_type"][i])
        mv = move_of(a)
        if mv is not None:
            d, (dx, dy) = mv
            pos[i] = (prev[i][0] + d * dx, prev[i][1] + d * dy)
            if d == 2 and (prev[i][0] + dx, prev[i][1] + dy) in occupied:
                debug["jumps_over"] += 1
        elif a in (EXTINGUISH, BUILD, FREEZE):
            b = int(avail[i][a]) - 2  # the adjacent building (11.3)
            row = {FIREFIGHTER: 0, BUILDER: 1, GENERALIST: 2}[ty]
            debug["interactions"][a] += 1
            if a == EXTINGUISH:
                dec[b] += FIRE_SPEED[ty] * FIRE_REDUCE_RATE
                ext_types[b].add(ty)
                stats["action_counts"][row][0] += 1
            elif a == BUILD:
                dlt[b] += BUILD_SPEED[ty] * BASE_BUILD_RATE
                build_types[b].add(ty)
                stats["action_counts"][row][1] += 1
            else:
                frozen[b] = True
                stats["action_counts"][row][2] += 1

    # 6.3 building update, every real building in order
    dh = [0.0] * B
    extinguished = [False] * B
    completed = [False] * B
    burned = [False] * B
    for b in _buildings(state):
        f = float(state["fire"][b])
        h = float(state["health"][b])
        beta = BURN_MULT[int(state["bld_type"][b])]
        # 6.3.1 fire
        if dec[b] == 0.0:  # nobody extinguishing, or only generalists (11.5)
            f_new = FIRE_GROWTH_RATE * f
            if ext_types[b]:
                debug["generalist_only_extinguish"] += 1
        else:
            if BUILDER in ext_types[b] and GENERALIST in ext_types[b]:
                dec[b] += GENERALIST_HELP_FACTOR * FIRE_REDUCE_RATE  # once (11.6)
                debug["help_extinguish"] += 1
            f_new = f - dec[b]
        f_new = min(max(f_new, 0.0), 1.0)
        # 6.3.2 build help
        if FIREFIGHTER in build_types[b] and GENERALIST in build_types[b]:
            dlt[b] += GENERALIST_HELP_FACTOR * BASE_BUILD_RATE
            debug["help_build"] += 1
        # 6.3.3 burn with the updated fire, unless frozen
        if not frozen[b]:
            dlt[b] -= f_new * beta * FIRE_BURN_RATE
        # 6.3.4 health
        h_new = min(max(h + dlt[b], 0.0), 1.0)
        dh[b] = h_new - h
        # 6.3.5 events on the clamped values
        extinguished[b] = f > 0 and f_new == 0.0
        completed[b] = h < 1 and h_new == 1.0
        burned[b] = h > 0 and h_new == 0.0
        if burned[b]:
            f_new = 0.0  # forced after the events: no extinguish event from it
        # 6.3.6 interaction statistics
        if ext_types[b]:
            stats["firefight_types"] += len(ext_types[b])
            stats["firefight_pairs"] += 1
        if build_types[b]:
            stats["build_types"] += len(build_types[b])
            stats["build_pairs"] += 1
        # 6.3.7 / 6.3.8 flags and fire timer
        now_complete = h_new == 1.0
        now_burned = h_new == 0.0
        ttnf, tslf = int(state["ttnf"][b]), int(state["tslf"][b])
        if not now_complete and not now_burned:
            ttnf -= 1
            tslf += 1
            if ttnf <= 0:
                if extinguished[b]:
                    debug["reignite_after_extinguish"] += 1
                f_new = 1.0
                ttnf = int(state["period"][b])
                tslf = 0
                debug["ignitions"] += 1
        else:
            ttnf, tslf = TIMER_DONE, 0
        new["fire"][b] = f_new
        new["health"][b] = h_new
        new["ttnf"][b] = ttnf
        new["tslf"][b] = tslf
        debug["extinguished"] += int(extinguished[b])
        debug["completed"] += int(completed[b])
        debug["burned"] += int(burned[b])

    # 6.4 rewards (unnormalised) and episode statistics
    reward = R_TS_PEN
    task_rewards = [0.0] * B
    for b in _buildings(state):
        r_b = (R_HEALTH_DELTA_MULT * dh[b] + R_BURNED_DOWN * burned[b]
               + R_EXTINGUISH * extinguished[b])
        reward += r_b + R_COMPLETE * completed[b]  # +1 globally per completion
        task_rewards[b] = r_b + R_TASK_COMPLETE * completed[b] + R_TS_PEN  # +20 to the task
        stats["fires_extinguished"] += int(extinguished[b])
        stats["buildings_completed"] += int(completed[b])
        stats["buildings_burned"] += int(burned[b])
        stats["buildings_health_delta"] += dh[b]
    stats["invalid_actions"] += n_invalid

    # 6.5 collisions: literal sequential pair loop over all slots, positions update as we go
    contenders: dict[tuple[int, int], int] = {}
    for i in _agents(state):
        contenders[pos[i]] = contenders.get(pos[i], 0) + 1
    debug["max_contenders"] = max(contenders.values(), default=0)
    p = 0
    for i in range(A):
        for j in range(i + 1, A):
            if state["agent_valid"][i] and state["agent_valid"][j] and pos[i] == pos[j]:
                debug["collisions"] += 1
                if coins[p]:
                    pos[j] = prev[j]
                else:
                    pos[i] = prev[i]
            p += 1
    for i in range(A):
        new["agent_pos"][i] = pos[i]

    # 6.6 time
    new["t"] = state["t"] + 1

    # 6.7 tasks
    prev_tasks = tasks_complete(state)
    now_tasks = tasks_complete(new)
    tasks_changed = any(a != b for a, b in zip(prev_tasks, now_tasks))

    # 6.8 termination (end_on_any_burn = False)
    timeout = False
    if all(now_tasks):
        done = True
    elif new["t"] >= episode_limit:
        done = True
        timeout = True
    else:
        done = False

    # 6.9 solved bonus, global only, terminal step only
    solved = done and all(is_complete(new, b) for b in _buildings(new))
    if solved:
        reward += R_SOLVED

    # 6.10 normalisation
    norm = REWARD_SCALE / max_reward(B)
    reward *= norm
    task_rewards = [r * norm for r in task_rewards]

    info = {
        "task_rewards": np.array(task_rewards, np.float64),
        "tasks_terminated": np.array(now_tasks, bool),
        "tasks_changed": tasks_changed,
        "invalid_actions": n_invalid,
        "debug": debug,
    }
    if done:  # section 9
        m = len(_buildings(new))
        info["solved"] = float(solved)
        info["prop_buildings_completed"] = sum(is_complete(new, b) for b in range(B)) / m
        if timeout:
            info["episode_limit"] = True
        for k in ("fires_extinguished", "buildings_completed", "buildings_burned"):
            info[k] = stats[k]
        info["buildings_health_delta"] = stats["buildings_health_delta"]
        if stats["firefight_pairs"] > 0:
            info["types_per_firefight"] = stats["firefight_types"] / stats["firefight_pairs"]
        if stats["build_pairs"] > 0:
            info["types_per_build"] = stats["build_types"] / stats["build_pairs"]
        # optional (track_ac_type): per agent type, fractions of its interaction actions
        info["action_types"] = [
            [c / max(sum(row), 1) for c in row] for row in stats["action_counts"]
        ]
        info["episode_invalid_actions"] = stats["invalid_actions"]
        info["n_agents"] = len(_agents(new))
        info["n_buildings"] = m
        info["episode_length"] = new["t"]
    return (
        new,
        reward,
        info["task_rewards"],
        info["tasks_terminated"],
        tasks_changed,
        done,
        info,
    )


# ----------------------------------------------------------- heuristic (section 10)
def ref_heuristic(state, return_ties: bool = False):
    """[A, B] bool one-hot allocation; optionally also the number of agents whose choice
    was decided by the lower-index tie break."""
    A, B = _sizes(state)
    alloc = np.zeros((A, B), bool)
    ties = 0
    active = [b for b in _buildings(state) if not is_complete(state, b) and not is_burned(state, b)]
    for i in _agents(state):
        x, y = int(state["agent_pos"][i][0]), int(state["agent_pos"][i][1])

        def dist(b, x=x, y=y):
            return abs(int(state["bld_pos"][b][0]) - x) + abs(int(state["bld_pos"][b][1]) - y)

        by_dist = sorted(active, key=dist)  # stable: ties keep the lower index first
        on_fire = [b for b in by_dist if float(state["fire"][b]) > 0]
        no_fire = [b for b in by_dist if not float(state["fire"][b]) > 0]
        ty = int(state["agent_type"][i])
        if ty == BUILDER:
            order = no_fire + on_fire
        else:  # firefighter and generalist: fires first
            order = on_fire + no_fire
        if order:
            alloc[i][order[0]] = True
            same_class = on_fire if order[0] in on_fire else no_fire
            ties += sum(1 for b in same_class if b != order[0] and dist(b) == dist(order[0]))
    return (alloc, ties) if return_ties else alloc


# -------------------------------------------------------------- observation (7)
def ref_obs(state, heuristic_alloc: bool = False) -> dict:
    """Entities [E, 58] float64 and masks (True = masked) of `state`."""
    A, B = _sizes(state)
    E = A + B
    avail = ref_avail(state)
    entities = np.zeros((E, ENTITY_DIM), np.float64)
    for i in _agents(state):
        x, y = int(state["agent_pos"][i][0]), int(state["agent_pos"][i][1])
        row = entities[i]
        row[int(state["agent_type"][i])] = 1.0
        row[5 + x] = 1.0
        row[21 + y] = 1.0
        row[37] = x / MAP_SIZE
        row[38] = y / MAP_SIZE
        for k in range(N_ACTIONS):
            row[39 + k] = 1.0 if avail[i][k] >= 1 else 0.0
    for b in _buildings(state):
        x, y = int(state["bld_pos"][b][0]), int(state["bld_pos"][b][1])
        row = entities[A + b]
        row[int(state["bld_type"][b])] = 1.0
        row[5 + x] = 1.0
        row[21 + y] = 1.0
        row[37] = x / MAP_SIZE
        row[38] = y / MAP_SIZE
        period = int(state["period"][b])
        row[51] = float(state["health"][b])
        row[52] = 1.0 if is_complete(state, b) else 0.0
        row[53] = 1.0 if is_burned(state, b) else 0.0
        row[54] = float(state["fire"][b])
        row[55] = 1.0 if float(state["fire"][b]) > 0 else 0.0
        row[56] = int(state["tslf"][b]) / period
        row[57] = (1.0 / period - 1.0 / MAX_FIRE_START_RATE) / (
            1.0 / MIN_FIRE_START_RATE - 1.0 / MAX_FIRE_START_RATE
        )

    real = [bool(v) for v in state["agent_valid"]] + [bool(v) for v in state["bld_valid"]]
    is_agent = [e < A for e in range(E)]
    obs_mask = np.ones((E, E), bool)
    for r in range(E):
        for c in range(E):
            if real[r] and real[c] and (is_agent[r] or not is_agent[c]):
                obs_mask[r][c] = False  # agents see everything, buildings only buildings
    entity_mask = np.array([not v for v in real], bool)
    entity2task = np.ones((E, B), bool)
    for b in _buildings(state):
        entity2task[A + b][b] = False
    if heuristic_alloc:
        alloc = ref_heuristic(state)
        for i in range(A):
            for b in range(B):
                if alloc[i][b]:
                    entity2task[i][b] = False
    return {
        "entities": entities,
        "avail_actions": avail,
        "obs_mask": obs_mask,
        "entity_mask": entity_mask,
        "entity2task_mask": entity2task,
        "task_mask": np.array(tasks_complete(state), bool),
    }


def nan_or(x) -> float:
    """Helper for comparisons of optional float keys (absent = NaN, section 9)."""
    return math.nan if x is None else float(x)
