"""ALMA's multi-army StarCraft setting, game-independent part 2: the rules, as pure functions
of a unit snapshot (spec `shared/specs/starcraft.md` A.4-A.10, A.13).

Everything here acts on `Units`: the episode's units in entity order (agents, then enemies, no
padding), as numpy arrays. Dead units keep their last known position and have health 0, as in
the original (a unit missing from the game's observation is dead). Nothing here knows where
the snapshot came from. Numpy only (runs inside bridge workers).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

SHOOT_RANGE = 6.0
BASE_RADIUS = 2.0
FAR = 1000.0  # distance recorded for pairs with a dead unit (never visible or in range)
MIN_SWITCH, MAX_SWITCH = 10, 20
BOOST_MULT = 4.0
ALLY_CODE = 1000
HEURISTIC_TOKENS = ("attacking", "type", "unassigned", "diff", "dynamic")
DEFAULT_STYLE = "attacking-type-unassigned-diff"
STOP, NORTH, SOUTH, EAST, WEST = 1, 2, 3, 4, 5
N_NO_ATTACK = 6


@dataclass
class MapInfo:
    """Static facts of the map the backend reports at launch."""

    map_x: int
    map_y: int
    playable_x: float  # playable width (max_distance_x in the original)
    playable_y: float
    pathing: np.ndarray  # [map_x, map_y] bool, indexed [x, y]

    @property
    def centre(self) -> tuple[float, float]:
        """Spawn and base centre: (map_x // 2, map_y // 2)."""
        return float(self.map_x // 2), float(self.map_y // 2)


@dataclass
class Units:
    """The episode's units in entity order: agents 0..n_agents-1, then enemies."""

    n_agents: int
    kind: np.ndarray  # [n] int: index into the family's type one-hot
    medivac: np.ndarray  # [n] bool
    flying: np.ndarray  # [n] bool
    health: np.ndarray  # [n] float
    health_max: np.ndarray
    shield: np.ndarray
    shield_max: np.ndarray
    energy: np.ndarray
    energy_max: np.ndarray
    cooldown: np.ndarray  # weapon cooldown in game loops
    max_cooldown: np.ndarray  # per-type normaliser (A.8)
    x: np.ndarray
    y: np.ndarray

    @property
    def n(self) -> int:
        return len(self.health)

    @property
    def n_enemies(self) -> int:
        return self.n - self.n_agents

    @property
    def alive(self) -> np.ndarray:
        return self.health > 0

    def copy(self) -> Units:
        return replace(self, **{f.name: np.array(getattr(self, f.name))
                                for f in fields(self) if f.name != "n_agents"})


def make_units(n_agents: int, **arrays) -> Units:
    """Units from keyword arrays; unspecified fields default (alive, max values from current)."""
    n = len(arrays["health"])
    z = np.zeros(n)
    health = np.asarray(arrays["health"], float)
    defaults = {"kind": np.zeros(n, int), "medivac": np.zeros(n, bool),
                "flying": np.zeros(n, bool), "health_max": np.maximum(health, 1.0),
                "shield": z, "shield_max": z, "energy": z, "energy_max": z, "cooldown": z,
                "max_cooldown": np.full(n, 15.0), "x": z, "y": z}
    vals = {**defaults, **arrays}
    vals["flying"] = np.asarray(vals["flying"], bool) | np.asarray(vals["medivac"], bool)
    return Units(n_agents, **{k: np.array(v, dtype=_dtype(k)) for k, v in vals.items()})


def _dtype(name: str):
    return int if name == "kind" else bool if name in ("medivac", "flying") else float


@dataclass(frozen=True)
class Layout:
    """Entity feature offsets (A.8) for a family's padding sizes."""

    max_agents: int
    max_enemies: int
    n_actions: int
    type_bits: int
    shields: bool

    @property
    def n_entities(self) -> int:
        return self.max_agents + self.max_enemies

    @property
    def avail(self) -> int:
        return self.n_entities

    @property
    def type(self) -> int:
        return self.avail + self.n_actions - 2

    @property
    def health(self) -> int:
        return self.type + self.type_bits

    @property
    def energy(self) -> int:
        return self.health + 1 + int(self.shields)

    @property
    def pos(self) -> int:
        return self.energy + 2

    @property
    def phase(self) -> int:
        return self.pos + 4

    @property
    def vel(self) -> int:
        return self.phase + 2

    @property
    def dim(self) -> int:
        return self.vel + 2


# ------------------------------------------------------------------------------ geometry
def distance_matrix(u: Units) -> np.ndarray:
    """[n, n] distances; FAR where either unit is dead, 0 on the diagonal (A.9)."""
    d = np.hypot(u.x[:, None] - u.x[None, :], u.y[:, None] - u.y[None, :])
    both = u.alive[:, None] & u.alive[None, :]
    d = np.where(both, d, FAR)
    np.fill_diagonal(d, 0.0)
    return d


def can_move(u: Units, i: int, m: MapInfo, move_amount: float) -> list[bool]:
    """North, south, east, west: the cell half a move away is on the map and pathable."""
    h = move_amount / 2
    x, y = u.x[i], u.y[i]
    out = []
    for px, py in ((x, y + h), (x, y - h), (x + h, y), (x - h, y)):
        cx, cy = int(px), int(py)
        out.append(bool(0 <= cx < m.map_x and 0 <= cy < m.map_y and m.pathing[cx, cy]))
    return out


# --------------------------------------------------------------------- availability (A.9)
def avail_actions(u: Units, dist: np.ndarray, ally_tags: np.ndarray, enemy_tags: np.ndarray,
                  enemy_army: np.ndarray, layout: Layout, m: MapInfo, move_amount: float = 2.0,
                  shoot_range: float = SHOOT_RANGE) -> np.ndarray:
    """[max_agents, n_actions] int32 codes: 1 general, 2+army attack, 1000+ally heal.

    Dead and padding agents can only no-op."""
    na = u.n_agents
    out = np.zeros((layout.max_agents, layout.n_actions), np.int32)
    out[:, 0] = 1
    for i in range(na):
        if not u.alive[i]:
            continue
        row = out[i]
        row[0] = 0
        row[STOP] = 1
        row[NORTH:WEST + 1] = can_move(u, i, m, move_amount)
        if u.medivac[i]:
            # Medivacs heal non-flying allies (never themselves: they fly)
            for j in range(na):
                if not u.flying[j] and dist[i, j] <= shoot_range:
                    row[N_NO_ATTACK + ally_tags[j]] = ALLY_CODE + j
        else:
            for e in range(u.n_enemies):
                if dist[i, na + e] <= shoot_range:
                    row[N_NO_ATTACK + enemy_tags[e]] = 2 + enemy_army[e]
    return out


# ------------------------------------------------------------------------ features (A.8)
def entity_features(layout: Layout, u: Units, ally_tags: np.ndarray, enemy_tags: np.ndarray,
                    avail: np.ndarray, army_attacking: np.ndarray, army_since: np.ndarray,
                    enemy_army: np.ndarray, m: MapInfo, prev: Units | None,
                    move_amount: float = 2.0, max_switch: float = MAX_SWITCH) -> np.ndarray:
    """[max_agents + max_enemies, dim] float32 entity features; padding rows are zeros."""
    L, na, ne = layout, u.n_agents, u.n_enemies
    ent = np.zeros((L.n_entities, L.dim), np.float32)
    rows = np.concatenate([np.arange(na), L.max_agents + np.arange(ne)]).astype(int)
    is_ally = np.arange(u.n) < na
    tags = np.concatenate([ally_tags, enemy_tags]).astype(int)
    ent[rows, tags] = 1.0
    ent[:na, L.avail:L.avail + L.n_actions - 2] = avail[:na, 2:] >= 1
    if L.type_bits:
        ent[rows, L.type + u.kind] = 1.0
    cx, cy = m.map_x / 2, m.map_y / 2
    com_x, com_y = u.x.mean(), u.y.mean()  # over every unit of the episode, dead included
    spread = np.hypot(u.x - com_x, u.y - com_y).max()
    spread = spread if spread > 0 else 1.0
    alive = u.alive
    for k, r in enumerate(rows):
        if not alive[k]:
            continue
        ent[r, L.health] = u.health[k] / u.health_max[k]
        if L.shields:
            ent[r, L.health + 1] = u.shield[k] / u.shield_max[k] if u.shield_max[k] > 0 else 0.0
        if is_ally[k]:
            if u.energy_max[k] > 0:
                ent[r, L.energy] = u.energy[k] / u.energy_max[k]
            ent[r, L.energy + 1] = u.cooldown[k] / u.max_cooldown[k]
        ent[r, L.pos:L.pos + 4] = ((u.x[k] - cx) / m.playable_x, (u.y[k] - cy) / m.playable_y,
                                   (u.x[k] - com_x) / spread, (u.y[k] - com_y) / spread)
    er = L.max_agents + np.arange(ne)
    ent[er, L.phase] = np.asarray(army_attacking, float)[enemy_army]
    ent[er, L.phase + 1] = np.asarray(army_since, float)[enemy_army] / max_switch
    if prev is not None:
        ent[rows, L.vel] = (u.x - prev.x) / move_amount
        ent[rows, L.vel + 1] = (u.y - prev.y) / move_amount
    return ent


# ---------------------------------------------------------------------------- masks (A.9)
def obs_mask(dist: np.ndarray, layout: Layout, n_agents: int, sight_range: float
             ) -> np.ndarray:
    """[E, E] bool, True = row cannot see column (far, dead, padding); units see themselves."""
    n = len(dist)
    rows = np.concatenate([np.arange(n_agents), layout.max_agents + np.arange(n - n_agents)])
    mask = np.ones((layout.n_entities, layout.n_entities), bool)
    mask[np.ix_(rows, rows)] = dist > sight_range
    return mask


def entity_mask(u: Units, layout: Layout) -> np.ndarray:
    """[E] bool, True = dead or padding."""
    mask = np.ones(layout.n_entities, bool)
    mask[:u.n_agents] = ~u.alive[:u.n_agents]
    mask[layout.max_agents:layout.max_agents + u.n_enemies] = ~u.alive[u.n_agents:]
    return mask


def entity2task_mask(layout: Layout, n_agents: int, enemy_army: np.ndarray, n_tasks: int,
                     agent_alloc: np.ndarray | None = None) -> np.ndarray:
    """[E, n_tasks] bool, True = not in task: enemies belong to their army; agents to nothing
    unless an allocation [max_agents, n_tasks] is given; padding to nothing."""
    mask = np.ones((layout.n_entities, n_tasks), bool)
    if agent_alloc is not None:
        mask[:layout.max_agents] = ~np.asarray(agent_alloc, bool)
        mask[n_agents:layout.max_agents] = True
    ne = len(enemy_army)
    mask[layout.max_agents + np.arange(ne), enemy_army] = False
    return mask


# ---------------------------------------------------------------------- outcomes (A.5)
def only_medivacs_left(u: Units, ally: bool, has_medivac: bool) -> bool:
    """No living non-Medivac unit on that side (always False without Medivacs in the family)."""
    if not has_medivac:
        return False
    side = np.arange(u.n) < u.n_agents if ally else np.arange(u.n) >= u.n_agents
    return not np.any(side & u.alive & ~u.medivac)


def game_end_code(u: Units, has_medivac: bool) -> int | None:
    """-1 loss, 1 win, 0 draw, None running: the original's checks, in its order."""
    na_alive = int(u.alive[:u.n_agents].sum())
    ne_alive = int(u.alive[u.n_agents:].sum())
    if (na_alive == 0 and ne_alive > 0) or only_medivacs_left(u, True, has_medivac):
        return -1
    if (na_alive > 0 and ne_alive == 0) or only_medivacs_left(u, False, has_medivac):
        return 1
    if na_alive == 0 and ne_alive == 0:
        return 0
    return None


def task_end_codes(u: Units, enemy_army: np.ndarray, n_armies: int, centre: tuple,
                   n_tasks: int = 3, base_radius: float = BASE_RADIUS) -> np.ndarray:
    """[n_tasks] int: -1 infiltrated, +1 defeated (or absent), 0 active."""
    codes = np.ones(n_tasks, int)
    na = u.n_agents
    ex, ey, alive, med = u.x[na:], u.y[na:], u.alive[na:], u.medivac[na:]
    in_base = np.hypot(ex - centre[0], ey - centre[1]) < base_radius  # dead units included
    for k in range(n_armies):
        member = enemy_army == k
        if not member.any():
            continue
        if np.any(member & in_base & ~med):
            codes[k] = -1
        elif not np.any(member & alive):
            codes[k] = 1
        else:
            codes[k] = 0
    return codes


# ---------------------------------------------------------------------------- rewards (A.6)
@dataclass(frozen=True)
class RewardParams:
    sparse: bool = False
    only_positive: bool = True
    death_value: float = 10.0
    win: float = 200.0
    defeat: float = 0.0
    negative_scale: float = 0.5
    scale: bool = True
    scale_rate: float = 20.0


def health_deltas(prev: Units, now: Units, dead_before: np.ndarray, side: slice
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(damage, died) per unit of `side` not already counted as dead: drop in health+shield,
    or the whole previous health+shield for a unit that died this step."""
    ph = prev.health[side] + prev.shield[side]
    nh = now.health[side] + now.shield[side]
    died = ~dead_before & (now.health[side] == 0)
    damage = np.where(dead_before, 0.0, np.where(died, ph, ph - nh))
    return damage, died


def battle_reward(prev: Units, now: Units, dead_enemy: np.ndarray, dead_ally: np.ndarray,
                  p: RewardParams) -> tuple[float, np.ndarray, np.ndarray]:
    """Unscaled global shaped reward (no win bonus) and the enemies' (damage, died)."""
    na = now.n_agents
    damage, died = health_deltas(prev, now, dead_enemy, slice(na, None))
    if p.sparse:
        return 0.0, damage, died
    reward = float(damage.sum() + p.death_value * died.sum())
    if not p.only_positive:
        a_damage, a_died = health_deltas(prev, now, dead_ally, slice(0, na))
        reward -= p.negative_scale * float(a_damage.sum() + p.death_value * a_died.sum())
    return reward, damage, died


def army_damage_rewards(damage: np.ndarray, died: np.ndarray, enemy_army: np.ndarray,
                        n_tasks: int, p: RewardParams, faithful: bool = True) -> np.ndarray:
    """Unscaled per-army damage term. `faithful` reproduces the original, which misses the
    killing blow (remaining health and death value of enemies dying this step)."""
    out = np.zeros(n_tasks)
    if p.sparse:
        return out
    w = np.where(died, 0.0, damage) if faithful else damage + p.death_value * died
    np.add.at(out, enemy_army, w)
    return out


def max_reward(enemy_health_max: np.ndarray, enemy_shield_max: np.ndarray,
               p: RewardParams) -> float:
    """Normaliser from the largest composition's spawned enemies (A.6)."""
    n = len(enemy_health_max)
    return float(n * p.death_value + p.win + np.sum(enemy_health_max + enemy_shield_max))


# ------------------------------------------------------------------------ health boost (A.7)
def boost_fraction(n_agents: int, n_enemies: int, n_armies: int,
                   mult: float = BOOST_MULT) -> float:
    return mult * (n_enemies - n_agents) / (n_agents * max(n_armies - 1, 1))


def nearest_army(x: np.ndarray, y: np.ndarray, spawn_points: np.ndarray) -> np.ndarray:
    """Index of the closest army spawn point (first on ties)."""
    d = np.hypot(x[:, None] - spawn_points[None, :, 0], y[:, None] - spawn_points[None, :, 1])
    return np.argmin(d, axis=1)


def boost_recipients(u: Units, codes: np.ndarray, tasks_complete: np.ndarray,
                     spawn_points: np.ndarray) -> tuple[list[int], list[float]]:
    """Agents to boost this step and the healed fractions to log (the original's bookkeeping:
    the list accumulates over armies defeated in the same step; fractions are logged only
    while some task is still active)."""
    na = u.n_agents
    near = nearest_army(u.x[:na], u.y[:na], spawn_points)
    heal: list[int] = []
    fracs: list[float] = []
    for k, code in enumerate(codes):
        if code == 1 and not tasks_complete[k]:
            heal += [i for i in range(na) if u.alive[i] and near[i] == k]
            if not np.all(codes != 0):
                fracs.append(len(heal) / na)
    return heal, fracs


def apply_boost(u: Units, agents: list[int], frac: float, shields: bool
                ) -> list[tuple[int, str, float]]:
    """Raise health (and shields) of `agents` by frac of the maximum, capped; edits `u` in
    place and returns the (agent index, 'life'|'shields', value) settings to send."""
    out = []
    for i in agents:
        u.health[i] = min(u.health[i] + u.health_max[i] * frac, u.health_max[i])
        out.append((i, "life", float(u.health[i])))
        if shields:
            u.shield[i] = min(u.shield[i] + u.shield_max[i] * frac, u.shield_max[i])
            out.append((i, "shields", float(u.shield[i])))
    return out


# -------------------------------------------------------------------- scripted enemies (A.4)
class ArmyScript:
    """Attack/retreat timing of the enemy armies.

    `reset` draws the first countdowns; `switch` (after every agent step and once at reset)
    returns the orders to give: (army, 'attack') = attack-move to the map centre,
    (army, 'retreat') = move back to the army's spawn point."""

    def __init__(self) -> None:
        self.countdown = np.zeros(0, int)
        self.since = np.zeros(0, float)
        self.attacking = np.zeros(0, bool)

    def reset(self, rng: np.random.Generator, n_armies: int,
              train_n_armies: int | None = None, train_n_enemies: int | None = None) -> None:
        self.countdown = rng.integers(0, MAX_SWITCH, size=n_armies)
        if train_n_armies is not None and train_n_enemies is not None \
                and n_armies > train_n_armies:
            diff = n_armies - train_n_armies  # generalisation: stagger the extra armies
            for i in range(diff):
                self.countdown[int((n_armies / diff) * i)] += MAX_SWITCH
        self.since = np.zeros(n_armies)
        self.countdown -= self.countdown.min()
        self.attacking = np.zeros(n_armies, bool)

    def switch(self, rng: np.random.Generator, medivacs_only: np.ndarray
               ) -> list[tuple[int, str]]:
        orders = []
        for k in range(len(self.countdown)):
            if medivacs_only[k]:
                if self.attacking[k]:
                    orders.append((k, "retreat"))
                    self.attacking[k] = False
                self.since[k] = -MAX_SWITCH
                continue
            if self.countdown[k] == 0:
                orders.append((k, "retreat" if self.attacking[k] else "attack"))
                self.attacking[k] = not self.attacking[k]
                self.countdown[k] = rng.integers(MIN_SWITCH + 1, MAX_SWITCH + 1)
                self.since[k] = -1
        self.countdown -= 1
        self.since += 1
        return orders


def medivacs_only(u: Units, enemy_army: np.ndarray, n_armies: int) -> np.ndarray:
    """[n_armies] bool: the army has living units and all of them are Medivacs."""
    na = u.n_agents
    alive, med = u.alive[na:], u.medivac[na:]
    out = np.zeros(n_armies, bool)
    for k in range(n_armies):
        live = (enemy_army == k) & alive
        out[k] = live.any() and bool(np.all(med[live]))
    return out


# -------------------------------------------------------------- heuristic allocators (A.13)
def parse_style(style: str) -> tuple[str, ...]:
    tokens = tuple(style.split("-"))
    bad = [t for t in tokens if t not in HEURISTIC_TOKENS]
    if bad or not tokens:
        raise ValueError(f"heuristic_style {style!r}: unknown criteria {bad}; use a dash-"
                         f"separated list of {list(HEURISTIC_TOKENS)}")
    return tokens


def heuristic_allocation(style: tuple[str, ...], order: np.ndarray, agent_types: np.ndarray,
                         agent_alive: np.ndarray, enemy_types: np.ndarray,
                         enemy_alive: np.ndarray, enemy_army: np.ndarray, n_armies: int,
                         tasks_complete: np.ndarray, attacking: np.ndarray, max_agents: int,
                         n_tasks: int = 3) -> np.ndarray:
    """[max_agents, n_tasks] bool one-hot rows: each agent (visited in `order`) takes the
    open army ranked first by the style's criteria, largest first, ties to the lowest id.
    Types are compared by unit name or type index (agents' and enemies' must agree)."""
    dynamic = "dynamic" in style
    crit = [c for c in style if c != "dynamic"]
    type2armies: dict = {}
    remaining: dict[int, int] = {}
    for e in range(len(enemy_army)):
        if dynamic and not enemy_alive[e]:
            continue
        k = int(enemy_army[e])
        type2armies.setdefault(enemy_types[e], []).append(k)
        remaining[k] = remaining.get(k, 0) + 1
    count = dict.fromkeys(range(n_armies), 0)
    alloc = np.zeros((max_agents, n_tasks), bool)
    open_armies = [k for k in range(n_armies) if not tasks_complete[k]]
    for i in order:
        i = int(i)
        if dynamic and not agent_alive[i]:
            continue
        mine = type2armies.setdefault(agent_types[i], [])
        fns = {"attacking": lambda k: bool(attacking[k]),
               "type": lambda k, mine=mine: k in mine,
               "unassigned": lambda k: count[k] == 0,
               "diff": lambda k: remaining.get(k, 0)}
        ranked = sorted(open_armies, key=lambda k: tuple(fns[c](k) for c in crit),
                        reverse=True)
        if not ranked:
            continue
        k = ranked[0]
        if k in mine:
            mine.remove(k)
        remaining[k] = remaining.get(k, 0) - 1
        count[k] += 1
        alloc[i, k] = True
    return alloc


__all__ = [
    "ALLY_CODE",
    "BASE_RADIUS",
    "DEFAULT_STYLE",
    "MAX_SWITCH",
    "MIN_SWITCH",
    "SHOOT_RANGE",
    "ArmyScript",
    "Layout",
    "MapInfo",
    "RewardParams",
    "Units",
    "apply_boost",
    "army_damage_rewards",
    "avail_actions",
    "battle_reward",
    "boost_fraction",
    "boost_recipients",
    "distance_matrix",
    "entity2task_mask",
    "entity_features",
    "entity_mask",
    "game_end_code",
    "health_deltas",
    "heuristic_allocation",
    "make_units",
    "max_reward",
    "medivacs_only",
    "nearest_army",
    "obs_mask",
    "parse_style",
    "task_end_codes",
]
