"""A tiny deterministic battle simulator with the `Backend` protocol of host_sc2multiarmy.

Stands in for StarCraft II (which the test machine cannot run) behind `HostSC2MultiArmy`.
It only has to be faithful enough to exercise every code path of the env: armies marching and
fighting, armies defeated, the base infiltrated, agents dying, timeouts, game crashes.

Rules, per game loop: units move at `speed` toward their order's point or target; a unit
attacks the unit it targets when within its range and its cooldown is 0 (constant damage,
shields first, then health; a unit at 0 health disappears); attack-move attacks the nearest
hostile in range, else walks on; plain moves never fire; idle enemy units (standard SC2 types)
fire at hostiles in range, idle agents ("RL" types, ids >= 1900) never do; Medivacs heal
their target. Unit ids start at 1000 and grow (never equal to entity indices). Numpy only:
it runs in bridge workers (imported by file path).
"""

from __future__ import annotations

import numpy as np

from envs_jax.bridge.host_sc2multiarmy import (
    ATTACK,
    HEAL,
    MOVE,
    STOP,
    BackendError,
    Command,
    Snapshot,
    Spawn,
)
from envs_jax.bridge.sc2multiarmy import NAME_BY_ID
from envs_jax.bridge.sc2multiarmy_rules import MapInfo

# name: health, shield, range, damage, cooldown (loops), energy_max (standard SC2 maxima)
STATS = {
    "Marine": (45.0, 0.0, 5.0, 6.0, 15, 0.0),
    "Marauder": (125.0, 0.0, 6.0, 10.0, 25, 0.0),
    "Medivac": (150.0, 0.0, 4.0, 0.0, 0, 200.0),
    "Stalker": (80.0, 80.0, 6.0, 13.0, 30, 0.0),
    "Zealot": (100.0, 50.0, 1.0, 16.0, 22, 0.0),
}
HEAL_PER_LOOP = 1.5
MAP_SIZE = 32


class FakeSC2Backend:
    """See the module doc. `crash_at=k`: the k-th `step` call raises `BackendError` (once);
    `damage_scale` and `speed` tune the battle (0 freezes it)."""

    def __init__(self, speed: float = 0.25, damage_scale: float = 1.0, crash_at: int = 0,
                 playable: tuple[float, float] = (30.0, 28.0)):
        self.speed = float(speed)
        self.damage_scale = float(damage_scale)
        self.crash_at = int(crash_at)
        self.playable = playable
        self.steps = 0
        self.launches = 0
        self.units: dict[int, dict] = {}
        self.next_uid = 1000
        self.commands: list[Command] = []  # everything ever commanded (tests inspect it)
        self.values: list[tuple[int, str, float]] = []
        self.closed = False

    # ------------------------------------------------------------------ game lifetime
    def _map(self) -> MapInfo:
        pathing = np.ones((MAP_SIZE, MAP_SIZE), bool)
        return MapInfo(MAP_SIZE, MAP_SIZE, self.playable[0], self.playable[1], pathing)

    def launch(self, race: str, seed: int | None) -> MapInfo:
        self.race, self.seed = race, seed
        self.launches += 1
        return self._map()

    def restart(self) -> MapInfo:
        self.units = {}
        self.launches += 1
        return self._map()

    def in_game(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------------ requests
    def spawn(self, groups: list[Spawn]) -> Snapshot:
        self.units = {}
        for g in groups:
            name = NAME_BY_ID[g.unit_type]
            hp, sh, rng, dmg, cd, en = STATS[name]
            for k in range(g.quantity):
                # a tight clump, as SC2 places units created together
                x = g.x + 0.3 * (k % 3) - 0.3
                y = g.y + 0.3 * (k // 3) - 0.3
                self.units[self.next_uid] = {
                    "owner": g.owner, "unit_type": g.unit_type, "name": name,
                    "health": hp, "health_max": hp, "shield": sh, "shield_max": sh,
                    "energy": en / 4, "energy_max": en, "cooldown": 0.0, "x": x, "y": y,
                    "flying": name == "Medivac", "range": rng, "damage": dmg, "max_cd": cd,
                    "order": None, "rl": g.unit_type >= 1900}
                self.next_uid += 1
        return self._snapshot()

    def command(self, commands: list[Command]) -> None:
        self.commands += commands
        for c in commands:
            for uid in c.units:
                if uid not in self.units:
                    continue
                if c.ability == STOP:
                    order = None
                elif c.ability == MOVE:
                    order = ("move", c.target_pos)
                elif c.ability == ATTACK and c.target_unit is not None:
                    order = ("attack", c.target_unit)
                elif c.ability == ATTACK:
                    order = ("attack_move", c.target_pos)
                elif c.ability == HEAL:
                    order = ("heal", c.target_unit)
                else:
                    raise ValueError(f"unknown ability {c.ability}")
                self.units[uid]["order"] = order

    def set_unit_values(self, values: list[tuple[int, str, float]]) -> None:
        self.values += values
        for uid, field, v in values:
            if uid in self.units:
                self.units[uid]["health" if field == "life" else "shield"] = float(v)

    def step(self, n_loops: int) -> Snapshot:
        self.steps += 1
        if self.steps == self.crash_at:
            raise BackendError("simulated game crash")
        for _ in range(n_loops):
            self._tick()
        return self._snapshot()

    # ---------------------------------------------------------------------- simulation
    def _snapshot(self) -> Snapshot:
        keys = ("owner", "unit_type", "health", "health_max", "shield", "shield_max", "energy",
                "energy_max", "cooldown", "x", "y", "flying")
        rows = [{"uid": uid, **{k: u[k] for k in keys}} for uid, u in self.units.items()]
        if not rows:
            return Snapshot(**{k: np.zeros(0) for k in Snapshot.__dataclass_fields__})
        return Snapshot.from_records(rows)

    def _toward(self, u: dict, x: float, y: float) -> bool:
        """Move u toward (x, y) by one loop's speed; True when there."""
        dx, dy = x - u["x"], y - u["y"]
        d = float(np.hypot(dx, dy))
        if d <= self.speed:
            u["x"], u["y"] = x, y
            return True
        u["x"] += self.speed * dx / d
        u["y"] += self.speed * dy / d
        return False

    def _dist(self, a: dict, b: dict) -> float:
        return float(np.hypot(a["x"] - b["x"], a["y"] - b["y"]))

    def _nearest_hostile(self, u: dict, within: float) -> int | None:
        best, best_d = None, within
        for uid, v in self.units.items():
            if v["owner"] != u["owner"] and v["health"] > 0:
                d = self._dist(u, v)
                if d <= best_d:
                    best, best_d = uid, d
        return best

    def _hit(self, u: dict, target: dict) -> None:
        if u["cooldown"] > 0 or u["damage"] <= 0:
            return
        dmg = u["damage"] * self.damage_scale
        absorbed = min(target["shield"], dmg)
        target["shield"] -= absorbed
        target["health"] = max(target["health"] - (dmg - absorbed), 0.0)
        u["cooldown"] = float(u["max_cd"])

    def _tick(self) -> None:
        for u in self.units.values():
            if u["health"] <= 0:
                continue
            u["cooldown"] = max(u["cooldown"] - 1.0, 0.0)
            if u["energy_max"] > 0:
                u["energy"] = min(u["energy"] + 0.05, u["energy_max"])
            order = u["order"]
            kind = None if order is None else order[0]
            if kind == "move":
                if self._toward(u, *order[1]):
                    u["order"] = None
            elif kind in ("attack", "heal"):
                target = self.units.get(order[1])
                if target is None or target["health"] <= 0:
                    u["order"] = None
                elif self._dist(u, target) > u["range"]:
                    self._toward(u, target["x"], target["y"])
                elif kind == "attack":
                    self._hit(u, target)
                elif u["energy"] >= 0.5:
                    target["health"] = min(target["health"] + HEAL_PER_LOOP,
                                           target["health_max"])
                    u["energy"] -= 0.5
            elif kind == "attack_move":
                near = self._nearest_hostile(u, u["range"])
                if near is not None:
                    self._hit(u, self.units[near])
                elif self._toward(u, *order[1]):
                    u["order"] = None
            elif not u["rl"]:  # idle standard units return fire; the agents' RL types never
                near = self._nearest_hostile(u, u["range"])
                if near is not None:
                    self._hit(u, self.units[near])
        for uid in [k for k, u in self.units.items() if u["health"] <= 0]:
            del self.units[uid]
