"""The StarCraft II backend of `HostSC2MultiArmy`: pysc2's raw interface (spec A.15).

A thin translation of the `Backend` protocol (host_sc2multiarmy.py) into what ALMA's modified
SMAC classes sent to the game: a non-realtime game on ALMA's map `empty_passive` (from
`$SC2PATH/Maps/SMAC_Maps/`) with one participant and one computer player; debug create-unit,
kill-unit, set-unit-value (life, shields) and the "control enemy" game state; raw unit
commands move (16), attack (23), stop (4) and heal (386); a full restart after protocol or
connection errors (reported as `BackendError`, which the env answers per A.11).

pysc2 and s2clientprotocol are imported when the backend is built, i.e. in the bridge worker
at the first reset, never in the trainer. Needs the `smac` extra, StarCraft II and the maps;
it cannot run without the game, so the test suite exercises the env with a simulator backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from envs_jax.bridge.host_sc2multiarmy import BackendError, Command, Snapshot, Spawn
from envs_jax.bridge.sc2multiarmy import MAP_NAME
from envs_jax.bridge.sc2multiarmy_rules import MapInfo

DIFFICULTIES = {"1": "VeryEasy", "2": "Easy", "3": "Medium", "4": "MediumHard", "5": "Hard",
                "6": "Harder", "7": "VeryHard", "8": "CheatVision", "9": "CheatMoney",
                "A": "CheatInsane"}
MAX_WAIT_STEPS = 1000  # game-loop polls while units disappear or appear


class PySC2Backend:
    """StarCraft II through pysc2 (see the module doc)."""

    def __init__(self, map_name: str = MAP_NAME, game_version: str | None = None,
                 difficulty: str = "7", window_size: tuple[int, int] = (1920, 1200),
                 map_dir: str = "SMAC_Maps"):
        if str(difficulty) not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}")
        from absl import flags
        from pysc2 import run_configs
        from pysc2.lib import protocol
        from s2clientprotocol import common_pb2, debug_pb2, raw_pb2, sc2api_pb2

        if not flags.FLAGS.is_parsed():  # pysc2 reads absl flags (A.15)
            flags.FLAGS(["envs_jax_sc2multiarmy"])
        self._run_configs, self._protocol = run_configs, protocol
        self._common, self._debug, self._raw, self._api = common_pb2, debug_pb2, raw_pb2, sc2api_pb2
        self.map_path = os.path.join(map_dir, f"{map_name}.SC2Map")
        self.game_version = game_version
        self.difficulty = str(difficulty)
        self.window_size = tuple(window_size)
        self._proc: Any = None
        self._ctrl: Any = None
        self._race = "Protoss"
        self._seed: int | None = None

    # ------------------------------------------------------------------ game lifetime
    def _errors(self) -> tuple[type, ...]:
        return (self._protocol.ProtocolError, self._protocol.ConnectionError)

    def launch(self, race: str, seed: int | None) -> MapInfo:
        self._race, self._seed = race, seed
        try:
            return self._launch()
        except self._errors() as err:
            raise BackendError(f"StarCraft II failed to start: {err}") from err

    def _launch(self) -> MapInfo:
        api = self._api
        run_config = self._run_configs.get(version=self.game_version)
        self._proc = run_config.start(window_size=self.window_size, want_rgb=False)
        self._ctrl = self._proc.controller
        create = api.RequestCreateGame(
            local_map=api.LocalMap(map_path=self.map_path,
                                   map_data=run_config.map_data(self.map_path)),
            realtime=False, random_seed=self._seed)
        race = getattr(self._common, self._race)
        create.player_setup.add(type=api.Participant)
        create.player_setup.add(type=api.Computer, race=race,
                                difficulty=getattr(api, DIFFICULTIES[self.difficulty]))
        self._ctrl.create_game(create)
        self._ctrl.join_game(api.RequestJoinGame(
            race=race, options=api.InterfaceOptions(raw=True, score=False)))
        raw = self._ctrl.game_info().start_raw
        map_x, map_y = int(raw.map_size.x), int(raw.map_size.y)
        p0, p1 = raw.playable_area.p0, raw.playable_area.p1
        return MapInfo(map_x, map_y, float(p1.x - p0.x), float(p1.y - p0.y),
                       _pathing(raw.pathing_grid, map_x, map_y))

    def restart(self) -> MapInfo:
        """Full restart: close the game process and launch a new one."""
        self.close()
        try:
            return self._launch()
        except self._errors() as err:
            raise BackendError(f"StarCraft II failed to restart: {err}") from err

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
        self._proc = self._ctrl = None

    def in_game(self) -> bool:
        return self._ctrl is not None and self._ctrl.status == self._protocol.Status.in_game

    # ------------------------------------------------------------------------ requests
    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except self._errors() as err:
            raise BackendError(str(err)) from err

    def _observe(self) -> Snapshot:
        obs = self._ctrl.observe()
        return _snapshot(obs.observation.raw_data.units)

    def spawn(self, groups: list[Spawn]) -> Snapshot:
        return self._guard(self._spawn, groups)

    def _spawn(self, groups: list[Spawn]) -> Snapshot:
        d, common = self._debug, self._common
        units = self._ctrl.observe().observation.raw_data.units
        if len(units):
            self._ctrl.debug([d.DebugCommand(kill_unit=d.DebugKillUnit(
                tag=[u.tag for u in units]))])
            self._ctrl.step(2)
        self._wait_for(0)
        self._ctrl.debug([d.DebugCommand(create_unit=d.DebugCreateUnit(
            unit_type=g.unit_type, owner=g.owner, pos=common.Point2D(x=g.x, y=g.y),
            quantity=g.quantity)) for g in groups])
        snap = self._wait_for(sum(g.quantity for g in groups), n_loops=2)
        # player 1 may now command the enemies (the scripted attack/retreat orders)
        self._ctrl.debug([d.DebugCommand(game_state=d.DebugGameState.control_enemy)])
        self._ctrl.step(4)
        return snap

    def _wait_for(self, n_units: int, n_loops: int = 1) -> Snapshot:
        for _ in range(MAX_WAIT_STEPS):
            snap = self._observe()
            if len(snap.uid) == n_units:
                return snap
            self._ctrl.step(n_loops)
        raise BackendError(f"the game never showed {n_units} units")

    def command(self, commands: list[Command]) -> None:
        if not commands:
            return
        raw, api, common = self._raw, self._api, self._common
        actions = []
        for c in commands:
            kw: dict[str, Any] = {"ability_id": c.ability, "unit_tags": list(c.units),
                                  "queue_command": False}
            if c.target_unit is not None:
                kw["target_unit_tag"] = int(c.target_unit)
            elif c.target_pos is not None:
                kw["target_world_space_pos"] = common.Point2D(x=c.target_pos[0],
                                                              y=c.target_pos[1])
            cmd = raw.ActionRawUnitCommand(**kw)
            actions.append(api.Action(action_raw=raw.ActionRaw(unit_command=cmd)))
        self._guard(self._ctrl.actions, api.RequestAction(actions=actions))

    def set_unit_values(self, values: list[tuple[int, str, float]]) -> None:
        d = self._debug
        which = {"life": d.DebugSetUnitValue.Life, "shields": d.DebugSetUnitValue.Shields}
        cmds = [d.DebugCommand(unit_value=d.DebugSetUnitValue(
            unit_value=which[field], value=float(v), unit_tag=int(uid)))
            for uid, field, v in values]
        if cmds:
            self._guard(self._ctrl.debug, cmds)

    def step(self, n_loops: int) -> Snapshot:
        def advance() -> Snapshot:
            self._ctrl.step(n_loops)
            return self._observe()

        return self._guard(advance)


def _snapshot(units: Any) -> Snapshot:
    records = [{"uid": u.tag, "owner": u.owner, "unit_type": u.unit_type, "health": u.health,
                "health_max": u.health_max, "shield": u.shield, "shield_max": u.shield_max,
                "energy": u.energy, "energy_max": u.energy_max,
                "cooldown": u.weapon_cooldown, "x": u.pos.x, "y": u.pos.y,
                "flying": u.is_flying} for u in units]
    if not records:
        empty = {k: np.zeros(0) for k in Snapshot.__dataclass_fields__}
        return Snapshot(**empty)
    return Snapshot.from_records(records)


def _pathing(grid: Any, map_x: int, map_y: int) -> np.ndarray:
    """The pathing grid as SMAC decodes it, indexed [x, y] (True = pathable)."""
    data = np.frombuffer(bytes(grid.data), np.uint8)
    if grid.bits_per_pixel == 1:
        return np.unpackbits(data).reshape(map_x, map_y).T.astype(bool)
    return np.invert(np.flip(data.astype(bool).reshape(map_x, map_y).T, axis=1))


__all__ = ["PySC2Backend"]
