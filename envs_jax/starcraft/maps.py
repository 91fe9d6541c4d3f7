"""SMAC's maps as team compositions (smac/env/starcraft2/maps/smac_maps.py).

Each map: the agents' and the enemies' units as (type, count) in the one-hot order SMAC uses
for that map family, the episode limit, and the family's unit-type one-hot (empty where SMAC
uses no type bits: marine-only maps, 2c_vs_64zg).
"""

from __future__ import annotations

from dataclasses import dataclass

from envs_jax.starcraft.units import TYPE_ID

# SMAC's type one-hot per map family (`get_unit_type_id`).
FAMILY_TYPES = {
    "marines": (),
    "MMM": ("marauder", "marine", "medivac"),
    "stalkers_and_zealots": ("stalker", "zealot"),
    "colossi_stalkers_zealots": ("colossus", "stalker", "zealot"),
    "colossus": (),
}


@dataclass(frozen=True)
class MapSpec:
    name: str
    agents: tuple[tuple[str, int], ...]
    enemies: tuple[tuple[str, int], ...]
    limit: int
    family: str
    size: tuple[float, float] = (32.0, 32.0)
    # Where each team spawns (the maps' "Team 1" / "Team 2" points); the enemies attack-move
    # to the agents' point.
    starts: tuple[tuple[float, float], tuple[float, float]] = ((9.0, 16.0), (23.0, 16.0))

    @property
    def type_names(self) -> tuple[str, ...]:
        return FAMILY_TYPES[self.family]

    def unit_list(self, team: str) -> list[int]:
        """Unit type ids of a team, in slot order (grouped by type, the family's order)."""
        comp = dict(self.agents if team == "agents" else self.enemies)
        order = self.type_names or tuple(comp)
        return [TYPE_ID[n] for n in order for _ in range(comp.get(n, 0))]

    @property
    def n_agents(self) -> int:
        return sum(c for _, c in self.agents)

    @property
    def n_enemies(self) -> int:
        return sum(c for _, c in self.enemies)


def _m(name, agents, enemies, limit, family, **kw) -> MapSpec:
    return MapSpec(name, tuple(agents), tuple(enemies), limit, family, **kw)


_SZ = "stalkers_and_zealots"
MAPS = {m.name: m for m in (
    _m("3m", [("marine", 3)], [("marine", 3)], 60, "marines"),
    _m("8m", [("marine", 8)], [("marine", 8)], 120, "marines"),
    _m("5m_vs_6m", [("marine", 5)], [("marine", 6)], 70, "marines"),
    _m("2s3z", [("stalker", 2), ("zealot", 3)], [("stalker", 2), ("zealot", 3)], 120, _SZ),
    _m("3s5z", [("stalker", 3), ("zealot", 5)], [("stalker", 3), ("zealot", 5)], 150, _SZ),
    _m("3s5z_vs_3s6z", [("stalker", 3), ("zealot", 5)], [("stalker", 3), ("zealot", 6)],
       170, _SZ),
    _m("MMM", [("medivac", 1), ("marauder", 2), ("marine", 7)],
       [("medivac", 1), ("marauder", 2), ("marine", 7)], 150, "MMM"),
    _m("MMM2", [("medivac", 1), ("marauder", 2), ("marine", 7)],
       [("medivac", 1), ("marauder", 3), ("marine", 8)], 180, "MMM"),
    _m("1c3s5z", [("colossus", 1), ("stalker", 3), ("zealot", 5)],
       [("colossus", 1), ("stalker", 3), ("zealot", 5)], 180, "colossi_stalkers_zealots"),
    _m("2c_vs_64zg", [("colossus", 2)], [("zergling", 64)], 400, "colossus",
       starts=((16.0, 16.0), (16.0, 9.0))),
)}


def get_map(name: str) -> MapSpec:
    if name not in MAPS:
        raise ValueError(f"unknown starcraft_jax map_name {name!r}; allowed: {sorted(MAPS)}")
    return MAPS[name]
