"""ALMA's multi-army StarCraft setting, game-independent part 1: unit kinds, scenario families,
static sizes and seeded episode generation (spec `shared/specs/starcraft.md` A.2, A.3).

Numpy only: it runs inside bridge workers. The rules that act on unit snapshots (features,
masks, availability, rewards, end codes, health boost, scripted enemies, heuristic allocators)
are in `sc2multiarmy_rules.py`; the environment that drives a game backend is
`host_sc2multiarmy.py`.

A *team* is a tuple of `(unit name, count)` pairs with positive counts. A family lists every
(ally team, enemy team) composition in the order ALMA's scenario generator produced them, so a
composition `index` means the same composition as in the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations_with_replacement, product
from typing import Any

import numpy as np

Team = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class UnitKind:
    """A unit type of the setting: SC2 ids (standard for enemies, ALMA's "RL" variant for
    agents, defined by the map empty_passive), race and the cooldown normaliser of A.8."""

    name: str
    type_id: int
    rl_id: int
    race: str
    max_cooldown: float
    flying: bool = False


UNITS = {
    "Marine": UnitKind("Marine", 48, 1939, "Terran", 15.0),
    "Marauder": UnitKind("Marauder", 51, 1938, "Terran", 25.0),
    "Medivac": UnitKind("Medivac", 54, 1940, "Terran", 200.0, flying=True),
    "Zealot": UnitKind("Zealot", 73, 1942, "Protoss", 22.0),
    "Stalker": UnitKind("Stalker", 74, 1941, "Protoss", 35.0),
}
NAME_BY_ID = {**{u.type_id: u.name for u in UNITS.values()},
              **{u.rl_id: u.name for u in UNITS.values()}}
MEDIVAC = "Medivac"

MAP_NAME = "empty_passive"
MAX_ARMY_SIZE = 4
MAX_N_ARMIES = 3
SEPARATION = 14.0
JITTER = 1.0
EPISODE_LIMIT = 150
STEP_MUL = 8
RELEASED_TEAM_SIZES = (3, 8)  # what the released generator gives (A.2); (6, 8) matches the names

# (sub-team specs: (unit names, (min, max count))), extra enemy unit names or None
_FAMILY_SPECS: dict[str, tuple[tuple, tuple | None]] = {
    "6-8sz_maxsize4_maxarmies3_symmetric":
        (((("Stalker", "Zealot"), (3, 8)),), None),
    "6-8sz_maxsize4_maxarmies3_unitdisadvantage":
        (((("Stalker", "Zealot"), (3, 8)),), ("Stalker", "Zealot")),
    "6-8MMM_maxsize4_maxarmies3_symmetric":
        (((("Marine", "Marauder"), (3, 6)), (("Medivac",), (0, 2))), None),
    "6-8MMM_maxsize4_maxarmies3_unitdisadvantage":
        (((("Marine", "Marauder"), (3, 6)), (("Medivac",), (0, 2))), ("Marine", "Marauder")),
}
SCENARIOS = tuple(_FAMILY_SPECS)


def unique_teams(names: tuple[str, ...], lo: int, hi: int) -> list[Team]:
    """Every multiset of `names` with lo..hi units, by size, then in combination order."""
    teams = []
    for n in range(lo, hi + 1):
        for combo in combinations_with_replacement(names, n):
            teams.append(tuple((u, combo.count(u)) for u in names if combo.count(u)))
    return teams


def team_size(team: Team) -> int:
    return sum(n for _, n in team)


def add_unit(team: Team, name: str) -> Team:
    counts = dict(team)
    counts[name] = counts.get(name, 0) + 1
    return tuple(counts.items())


def _largest(teams: list[Team]) -> Team:
    # ALMA: sorted by (number of types, number of units), reversed; ties keep list order
    return max(teams, key=lambda t: (len(t), team_size(t)))  # max returns the first maximum


@dataclass(frozen=True)
class Family:
    """One scenario family (A.2) with its padding sizes and feature layout sizes."""

    name: str
    compositions: tuple[tuple[Team, Team], ...]  # (ally team, enemy team), size-filtered
    largest: tuple[Team, Team]  # fixes the padding and the reward normaliser
    max_agents: int
    max_enemies: int
    type_names: tuple[str, ...]  # one-hot order: sorted by standard SC2 type id
    race: str
    shields: bool
    has_medivac: bool
    n_actions: int
    entity_dim: int
    team_sizes: tuple[int, int]

    @property
    def n_entities(self) -> int:
        return self.max_agents + self.max_enemies

    @property
    def type_bits(self) -> int:
        return len(self.type_names) if len(self.type_names) > 1 else 0

    def type_index(self, name: str) -> int:
        return self.type_names.index(name)

    def sizes(self) -> dict[str, int]:
        return {"n_agents": self.max_agents, "n_entities": self.n_entities,
                "n_actions": self.n_actions, "entity_dim": self.entity_dim}


def make_family(name: str, team_sizes: tuple[int, int] | list[int] = RELEASED_TEAM_SIZES
                ) -> Family:
    """The family `name` with ally teams of team_sizes[0]..team_sizes[1] units (A.2)."""
    if name not in _FAMILY_SPECS:
        raise ValueError(f"unknown sc2multiarmy scenario {name!r}; allowed: {sorted(SCENARIOS)}")
    lo, hi = (int(v) for v in team_sizes)
    if not RELEASED_TEAM_SIZES[0] <= lo <= hi <= RELEASED_TEAM_SIZES[1]:
        raise ValueError(f"team_sizes must satisfy 3 <= min <= max <= 8, got {team_sizes!r}")
    subs, extra = _FAMILY_SPECS[name]
    parts = [unique_teams(names, a, b) for names, (a, b) in subs]
    allies = [sum(p, ()) for p in product(*parts)]
    if extra is None:
        enemies = list(allies)
    else:
        # one extra unit per composition, drawn once with RandomState(0) (A.2)
        rs = np.random.RandomState(0)
        deltas = unique_teams(extra, 1, 1)
        enemies = [add_unit(t, deltas[rs.choice(len(deltas))][0][0]) for t in allies]
    largest = (_largest(allies), _largest(enemies))
    comps = tuple((a, e) for a, e in zip(allies, enemies) if lo <= team_size(a) <= hi)
    names = {u for team in largest for u, _ in team}
    type_names = tuple(sorted(names, key=lambda u: UNITS[u].type_id))
    races = {UNITS[u].race for u in names}
    if len(races) != 1:
        raise ValueError(f"family {name} mixes races {races}")
    race = races.pop()
    max_agents, max_enemies = team_size(largest[0]), team_size(largest[1])
    has_medivac = MEDIVAC in names
    n_actions = 6 + max_enemies + (max_agents if has_medivac else 0)
    shields = race == "Protoss"
    tb = len(type_names) if len(type_names) > 1 else 0
    entity_dim = (max_agents + max_enemies + (n_actions - 2) + tb + 1 + int(shields) + 2 + 4
                  + 4)
    return Family(name, comps, largest, max_agents, max_enemies, type_names, race, shields,
                  has_medivac, n_actions, entity_dim, (lo, hi))


# ------------------------------------------------------------------------ episode generation
@dataclass
class EpisodePlan:
    """What to spawn for one episode (A.3 steps 1-4). Offsets are relative to the map centre."""

    index: int  # composition index in the family's list (-1: the largest composition)
    allies: Team
    enemies: Team
    n_armies: int
    army_sizes: list[int]
    army_units: list[list[str]]  # enemy unit names per army (after the shuffle)
    army_positions: np.ndarray  # [n_armies, 2] spawn offsets
    ally_offsets: dict[str, np.ndarray]  # one jitter offset per ally type group
    spread: float
    theta: float

    def spawns(self) -> list[tuple[str, int, int, float, float]]:
        """(unit name, owner, count, dx, dy) groups: agents owner 1, enemies owner 2."""
        out = [(u, 1, n, float(self.ally_offsets[u][0]), float(self.ally_offsets[u][1]))
               for u, n in self.allies]
        for units, pos in zip(self.army_units, self.army_positions):
            for u in sorted(set(units), key=lambda v: UNITS[v].type_id):
                out.append((u, 2, units.count(u), float(pos[0]), float(pos[1])))
        return out


def army_count_range(n_enemies: int) -> tuple[int, int]:
    """Admissible numbers of armies for n_enemies (A.3 step 2)."""
    lo = max(min(2, MAX_N_ARMIES), math.ceil(n_enemies / MAX_ARMY_SIZE))
    return lo, min(n_enemies, MAX_N_ARMIES)


def army_sizes(rng: np.random.Generator, n_enemies: int, n_armies: int) -> list[int]:
    """Sizes in order, each uniform in its admissible range (A.3 step 3)."""
    sizes: list[int] = []
    for i in range(n_armies):
        rem = n_enemies - sum(sizes)
        after = n_armies - i - 1
        lo = max(1, rem - after * MAX_ARMY_SIZE)
        hi = min(rem - after, MAX_ARMY_SIZE)
        sizes.append(int(rng.integers(lo, hi + 1)))
    return sizes


def _pick_for_n_tasks(rng: np.random.Generator, family: Family, n_tasks: int,
                      train_n_armies: int | None, train_n_enemies: int | None) -> int:
    """A.11: keep drawing compositions until one admits n_tasks armies."""
    for _ in range(100_000):
        k = int(rng.integers(len(family.compositions)))
        n_e = team_size(family.compositions[k][1])
        if train_n_armies is not None and train_n_enemies is not None:
            if n_tasks > train_n_armies and n_e <= train_n_enemies:
                continue
            if n_tasks <= train_n_armies and n_e > train_n_enemies:
                continue
        lo, hi = army_count_range(n_e)
        if lo <= n_tasks <= hi:
            return k
    raise ValueError(f"no composition of {family.name} admits n_tasks={n_tasks} armies")


def plan_episode(family: Family, rng: np.random.Generator, *, first: bool = False,
                 index: int | None = None, n_tasks: int | None = None,
                 spread_armies: bool = True, train_n_armies: int | None = None,
                 train_n_enemies: int | None = None) -> EpisodePlan:
    """Draw one episode's composition, armies and geometry (A.3 steps 1-4).

    `first`: the first episode after the game launches uses the largest composition.
    """
    n_armies = None
    if first:
        k, (allies, enemies) = -1, family.largest
    else:
        if n_tasks is not None:
            k = _pick_for_n_tasks(rng, family, int(n_tasks), train_n_armies, train_n_enemies)
            n_armies = int(n_tasks)
        elif index is not None:
            k = int(index)
            if not 0 <= k < len(family.compositions):
                raise ValueError(f"composition index {k} out of range "
                                 f"[0, {len(family.compositions)})")
        else:
            k = int(rng.integers(len(family.compositions)))
        allies, enemies = family.compositions[k]
    offsets = {u: (rng.random(2) - 0.5) * 2 * JITTER for u, _ in allies}
    theta = float(rng.random() * 2 * np.pi)
    n_e = team_size(enemies)
    lo, hi = army_count_range(n_e)
    if n_armies is None:
        n_armies = int(rng.integers(lo, hi + 1))
    sizes = army_sizes(rng, n_e, n_armies)
    units = [u for u, n in enemies for _ in range(n)]
    rng.shuffle(units)
    chunks, start, positions, spread = [], 0, [], 1.0
    for i, size in enumerate(sizes):
        spread = 1.0 if spread_armies else float(rng.random())
        angle = theta + (i / n_armies) * 2 * np.pi * spread
        positions.append((SEPARATION * np.cos(angle), SEPARATION * np.sin(angle)))
        chunks.append(list(units[start:start + size]))
        start += size
    return EpisodePlan(k, allies, enemies, n_armies, sizes, chunks, np.array(positions),
                       offsets, spread, theta)


def scenario_strings(family: Family, army_units: list[list[str]]) -> list[str]:
    """Per-army composition strings for logging, ALMA style (e.g. 'S2Z1')."""
    names = sorted(family.type_names)
    cut = 1
    while len({n[:cut] for n in names}) < len(names):  # shortest distinct prefixes
        cut += 1
    out = []
    for units in army_units:
        out.append("".join(f"{n[:cut]}{units.count(n)}" for n in names))
    return out


def describe(name: str, **kw: Any) -> dict[str, Any]:
    """Static facts of a family (for docs and errors)."""
    fam = make_family(name, **kw)
    return {**fam.sizes(), "n_tasks": MAX_N_ARMIES, "episode_limit": EPISODE_LIMIT,
            "compositions": len(fam.compositions), "types": fam.type_names}


__all__ = [
    "EPISODE_LIMIT",
    "MAP_NAME",
    "MAX_ARMY_SIZE",
    "MAX_N_ARMIES",
    "NAME_BY_ID",
    "SCENARIOS",
    "SEPARATION",
    "STEP_MUL",
    "UNITS",
    "EpisodePlan",
    "Family",
    "Team",
    "UnitKind",
    "army_count_range",
    "army_sizes",
    "make_family",
    "plan_episode",
    "scenario_strings",
    "team_size",
    "unique_teams",
]
