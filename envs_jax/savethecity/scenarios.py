"""Scenario families of SaveTheCity as static numpy tables (spec section 2).

Everything here runs once, in plain Python, when an environment is made; the jitted
environment only sees the resulting constant arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement, product

import numpy as np

MAP_SIZE = 16

# Entity type ids: buildings first, then agents (spec 1.2).
FAST_BURN, SLOW_BURN, FIREFIGHTER, BUILDER, GENERALIST = 0, 1, 2, 3, 4
N_ENTITY_TYPES = 5
AGENT_LETTERS = {"F": FIREFIGHTER, "B": BUILDER, "G": GENERALIST}
BUILDING_LETTERS = {"F": FAST_BURN, "S": SLOW_BURN}


@dataclass(frozen=True)
class ScenarioTable:
    """Static description of a scenario family.

    `agent_types[s, i]` is the type id of agent slot `i` in scenario `s` (-1 when padded);
    `bld_types[s, b]` is a fixed building type or -1 when the type is drawn at reset;
    buildings per episode are uniform on `[min_blds[s], max_blds[s]]`.
    """

    name: str
    agent_types: np.ndarray  # [S, A] int
    n_agents: np.ndarray  # [S] int
    min_blds: np.ndarray  # [S] int
    max_blds: np.ndarray  # [S] int
    bld_types: np.ndarray  # [S, B] int, -1 = random
    max_agents: int
    max_buildings: int
    bld_spacing: int
    teams: tuple[str, ...]  # readable team strings, e.g. "BFG"

    @property
    def n_scenarios(self) -> int:
        return len(self.teams)


def _unique_teams(min_n: int, max_n: int) -> list[tuple[str, ...]]:
    teams: list[tuple[str, ...]] = []
    for size in range(min_n, max_n + 1):
        teams += list(combinations_with_replacement(sorted(AGENT_LETTERS), size))
    return teams


def _generated_teams(min_n: int, max_n: int, rs: np.random.RandomState) -> list[list[str]]:
    """All max-diversity teams, in the order the original's seeded shuffle leaves them."""
    teams = _unique_teams(min_n, max_n)
    rs.shuffle(teams)  # only fixes list order, which matters for `index=` resets
    n_types = len(AGENT_LETTERS)
    return [list(t) for t in teams if len(set(t)) >= min(n_types, len(t))]


def _overlap(a: str, b: str) -> float:
    common = sum(min(a.count(c), b.count(c)) for c in set(a) | set(b))
    return common / min(len(a), len(b))


def _table(name, teams, blds, max_agents, max_buildings, spacing) -> ScenarioTable:
    s = len(teams)
    agent_types = np.full((s, max_agents), -1, np.int32)
    bld_types = np.full((s, max_buildings), -1, np.int32)
    min_b = np.zeros(s, np.int32)
    max_b = np.zeros(s, np.int32)
    for k, (team, bspec) in enumerate(zip(teams, blds)):
        agent_types[k, : len(team)] = [AGENT_LETTERS[c] for c in team]
        if isinstance(bspec, tuple):
            min_b[k], max_b[k] = bspec
        else:  # an explicit list of building letters
            min_b[k] = max_b[k] = len(bspec)
            bld_types[k, : len(bspec)] = [BUILDING_LETTERS[c] for c in bspec]
    n_agents = (agent_types >= 0).sum(1).astype(np.int32)
    return ScenarioTable(
        name=name,
        agent_types=agent_types,
        n_agents=n_agents,
        min_blds=min_b,
        max_blds=max_b,
        bld_types=bld_types,
        max_agents=max_agents,
        max_buildings=max_buildings,
        bld_spacing=spacing,
        teams=tuple("".join(t) for t in teams),
    )


def _family(min_n: int, max_n: int, spacing: int = 3):
    def build(name: str, split: str) -> ScenarioTable:
        teams = _generated_teams(min_n, max_n, np.random.RandomState(0))
        blds = [(len(t) + 1, len(t) + 1) for t in teams]
        return _table(name, teams, blds, max_n, max_n + 1, spacing)

    return build


def _sim_family(lo: float, hi: float, min_n: int = 2, max_n: int = 8, spacing: int = 7):
    """Generalisation splits: fixed test teams, training teams ranked by similarity."""

    def build(name: str, split: str) -> ScenarioTable:
        teams = _generated_teams(min_n, max_n, np.random.RandomState(0))
        n_test = int(0.15 * len(teams))
        test, other = teams[:n_test], teams[n_test:]
        test_s = ["".join(t) for t in test]
        sims = [np.mean([_overlap("".join(t), c) for c in test_s]) for t in other]
        order = np.argsort(sims)
        chosen = test if split == "test" else [
            other[i] for i in order[int(lo * len(other)) : int(hi * len(other))]
        ]
        blds = [(len(t) + 1, len(t) + 1) for t in chosen]
        return _table(name, chosen, blds, max_n, max_n + 1, spacing)

    return build


def _single(name: str, split: str) -> ScenarioTable:
    agents = list("FFFBBBGG")
    blds = list("FFFFSSSS")
    return _table(name, [agents], [blds], len(agents), len(blds), 7)


def _sanity(name: str, split: str) -> ScenarioTable:
    """One builder, one fast-burn building: the smallest navigation task (not in the paper).

    With `init_fire_chance=0` the building's first fire comes at step 60-80, so the builder
    must walk to it and build before then; used to check learners, see benchmarks/."""
    return _table(name, [["B"]], [["F"]], 1, 1, 3)


SCENARIO_FAMILIES = {
    "2-5a_2-5b": _family(2, 5),
    "2-8a_2-8b": _family(2, 8),
    "2-10a_2-10b": _family(2, 10),
    "12a_12b": _family(12, 12),
    "16a_16b": _family(16, 16),
    "20a_20b": _family(20, 20),
    "24a_24b": _family(24, 24),
    "2-8a_2-8b_sim_Q1": _sim_family(0.0, 0.25),
    "2-8a_2-8b_sim_Q2": _sim_family(0.25, 0.5),
    "2-8a_2-8b_sim_Q3": _sim_family(0.5, 0.75),
    "2-8a_2-8b_sim_Q4": _sim_family(0.75, 1.0),
    "single_scen": _single,
    "1a_1b": _sanity,
}


def get_scenarios(name: str, split: str = "train") -> ScenarioTable:
    """The scenario table of family `name` for `split` ('train' or 'test')."""
    if name not in SCENARIO_FAMILIES:
        raise ValueError(
            f"unknown SaveTheCity scenario {name!r}; allowed: {sorted(SCENARIO_FAMILIES)}"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return SCENARIO_FAMILIES[name](name, split)


def building_candidates(spacing: int) -> np.ndarray:
    """Lattice cells buildings may occupy, x-major: [C, 2]."""
    axis = range(1, MAP_SIZE, spacing)
    return np.array(list(product(axis, axis)), np.int32)


def spawn_candidates(n_agents: int, spacing: int) -> np.ndarray:
    """Agent spawn cells for a team of `n_agents` (spec 2.3), row-major: [K, 2]."""
    free = np.ones((MAP_SIZE, MAP_SIZE), bool)
    cand = building_candidates(spacing)
    free[cand[:, 0], cand[:, 1]] = False
    kept = free.copy()
    shrink = free.copy()
    ring = 0
    # peel square rings while enough cells stay free; keep the last map that was big enough
    while shrink.sum() >= n_agents:
        kept = shrink.copy()
        shrink[ring, :] = shrink[-ring - 1, :] = False
        shrink[:, ring] = shrink[:, -ring - 1] = False
        ring += 1
    return np.argwhere(kept).astype(np.int32)
