"""ALMA's multi-army StarCraft setting as a host env over a pluggable game backend
(spec `shared/specs/starcraft.md` part A).

`HostSC2MultiArmy` has the entity-scheme methods `EntityHost` adapts (`get_env_info`,
`info_spec`, `reset(seed)`, `step(actions)`, `get_entities`, `get_masks`,
`get_avail_actions`, `get_stats`, `close`). All game rules come from the numpy modules
`sc2multiarmy` (families, generation) and `sc2multiarmy_rules` (features, masks, rewards,
scripted enemies, heuristics); the game itself sits behind the small `Backend` protocol below:
spawn units, give raw unit commands (agents' and scripted enemies'), set unit values, advance
and read a unit snapshot. `sc2multiarmy_pysc2.PySC2Backend` drives StarCraft II through pysc2;
the test suite plugs in a numpy battle simulator. Numpy only (runs inside bridge workers); the
backend is built at the first reset, in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from envs_jax.bridge import sc2multiarmy as sc
from envs_jax.bridge import sc2multiarmy_rules as R

PYSC2_BACKEND = "envs_jax.bridge.sc2multiarmy_pysc2:PySC2Backend"
BACKEND_ALIASES = {"pysc2": PYSC2_BACKEND}
# raw ability ids (A.15)
MOVE, ATTACK, STOP, HEAL = 16, 23, 4, 386


@dataclass
class Spawn:
    """A debug create-unit request: `quantity` units of SC2 type `unit_type` at (x, y)."""

    unit_type: int
    owner: int  # 1 agents, 2 enemies
    x: float
    y: float
    quantity: int


@dataclass
class Command:
    """A raw unit command: ability MOVE/ATTACK (to a point or unit), STOP or HEAL (unit)."""

    ability: int
    units: tuple[int, ...]  # backend unit ids
    target_unit: int | None = None
    target_pos: tuple[float, float] | None = None


@dataclass
class Snapshot:
    """The units present in the game (dead units are absent), one entry per array row."""

    uid: np.ndarray  # int64 unit ids (SC2 tags)
    owner: np.ndarray
    unit_type: np.ndarray
    health: np.ndarray
    health_max: np.ndarray
    shield: np.ndarray
    shield_max: np.ndarray
    energy: np.ndarray
    energy_max: np.ndarray
    cooldown: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flying: np.ndarray

    @classmethod
    def from_records(cls, records: list[dict]) -> Snapshot:
        names = [f for f in cls.__dataclass_fields__]
        return cls(**{k: np.array([r[k] for r in records]) for k in names})


class BackendError(RuntimeError):
    """The game crashed or the connection broke; the env restarts the game (A.11)."""


class Backend(Protocol):
    """What the env needs from a game (A.15)."""

    def launch(self, race: str, seed: int | None) -> R.MapInfo:
        """Start the game (agents of `race`, a computer opponent of the same race)."""

    def restart(self) -> R.MapInfo:
        """Close and relaunch the game after a crash."""

    def spawn(self, groups: list[Spawn]) -> Snapshot:
        """Remove every unit, create `groups`, wait until all exist, let player 1 command
        the enemies; returns the units present."""

    def command(self, commands: list[Command]) -> None:
        """Issue raw unit commands; they act during the next `step`."""

    def set_unit_values(self, values: list[tuple[int, str, float]]) -> None:
        """Debug-set ('life' | 'shields') of units: (unit id, field, value)."""

    def step(self, n_loops: int) -> Snapshot:
        """Advance `n_loops` game loops and observe."""

    def in_game(self) -> bool:
        """The game is running (commands can be sent)."""

    def close(self) -> None: ...


def _load_backend(backend: Any, kwargs: dict) -> Backend:
    if isinstance(backend, str):
        from envs_jax.bridge.workers import load_target

        backend = load_target(BACKEND_ALIASES.get(backend, backend))
    return backend(**kwargs)


class HostSC2MultiArmy:
    """One multi-army StarCraft environment (see the module doc; options: spec A.14)."""

    def __init__(self, scenario: str = "6-8sz_maxsize4_maxarmies3_symmetric",
                 backend: Any = "pysc2", backend_kwargs: dict | None = None,
                 team_sizes: tuple[int, int] | list[int] = sc.RELEASED_TEAM_SIZES,
                 episode_limit: int = sc.EPISODE_LIMIT, step_mul: int = sc.STEP_MUL,
                 move_amount: float = 2.0, heuristic_alloc: bool = False,
                 heuristic_style: str = R.DEFAULT_STYLE, spread_armies: bool = True,
                 faithful_task_reward: bool = True, random_tags: bool = True,
                 continuing_episode: bool = False, train_n_armies: int | None = None,
                 train_n_enemies: int | None = None, reward_sparse: bool = False,
                 reward_only_positive: bool = True, reward_death_value: float = 10.0,
                 reward_win: float = 200.0, reward_defeat: float = 0.0,
                 reward_negative_scale: float = 0.5, reward_scale: bool = True,
                 reward_scale_rate: float = 20.0, seed: int | None = None):
        if int(episode_limit) < 1 or int(step_mul) < 1:
            raise ValueError("episode_limit and step_mul must be >= 1")
        self.family = sc.make_family(scenario, team_sizes)
        f = self.family
        self.layout = R.Layout(f.max_agents, f.max_enemies, f.n_actions, f.type_bits, f.shields)
        self.n_tasks = sc.MAX_N_ARMIES
        self.episode_limit = int(episode_limit)
        self.step_mul = int(step_mul)
        self.move_amount = float(move_amount)
        self.sight_range = 2 * sc.SEPARATION  # A.8: the multi-army env overrides the yaml's 20
        self.heuristic_alloc = bool(heuristic_alloc)
        self.style = R.parse_style(heuristic_style)
        self.spread_armies = bool(spread_armies)
        self.faithful_task_reward = bool(faithful_task_reward)
        self.random_tags = bool(random_tags)
        self.continuing_episode = bool(continuing_episode)
        self.train_n_armies, self.train_n_enemies = train_n_armies, train_n_enemies
        self.rp = R.RewardParams(bool(reward_sparse), bool(reward_only_positive),
                                 float(reward_death_value), float(reward_win),
                                 float(reward_defeat), float(reward_negative_scale),
                                 bool(reward_scale), float(reward_scale_rate))
        self._backend_spec = (backend, dict(backend_kwargs or {}))
        self.backend: Backend | None = None
        self.map: R.MapInfo | None = None
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.max_reward: float | None = None
        self.battles_won = self.battles_game = self.timeouts = self.restarts = 0
        self.episodes_started = 0
        self.units: R.Units | None = None

    # ------------------------------------------------------------------- static sizes
    def get_env_info(self) -> dict[str, int]:
        f = self.family
        return {"entity_shape": self.layout.dim, "n_actions": f.n_actions,
                "n_agents": f.max_agents, "n_entities": f.n_entities,
                "episode_limit": self.episode_limit, "n_tasks": self.n_tasks}

    def info_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        b, f32, i32, nt = "bool", "float32", "int32", (self.n_tasks,)
        return {
            "task_rewards": (nt, f32), "tasks_terminated": (nt, b), "tasks_changed": ((), b),
            "episode_limit": ((), b), "battle_won": ((), b), "truncated": ((), b),
            "perc_armies_defeated": ((), f32), "allies_defeated": ((), b),
            "base_infiltrated": ((), b), "armies_defeated": (nt, b),
            "armies_infiltrated": (nt, b), "spread": ((), f32), "n_agents": ((), i32),
            "n_enemies": ((), i32), "n_armies": ((), i32),
            "perc_agents_healed_per_army_defeated": ((), f32), "invalid_actions": ((), i32),
        }

    # --------------------------------------------------------------------------- reset
    def reset(self, seed: int | None = None, index: int | None = None,
              n_tasks: int | None = None) -> np.ndarray:
        """Start an episode (A.3). `index`: that composition; `n_tasks`: a composition drawn
        until it admits that many armies (host-side evaluation options)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if self.backend is None:
            backend, kwargs = self._backend_spec
            self.backend = _load_backend(backend, kwargs)
            game_seed = self.seed if self.seed is not None else seed
            self.map = self.backend.launch(
                self.family.race, None if game_seed is None else int(game_seed) % (2**31 - 1))
        first = self.max_reward is None
        plan = sc.plan_episode(self.family, self.rng, first=first, index=index,
                               n_tasks=n_tasks, spread_armies=self.spread_armies,
                               train_n_armies=self.train_n_armies,
                               train_n_enemies=self.train_n_enemies)
        groups = self._spawns(plan)
        try:
            snap = self.backend.spawn(groups)
        except BackendError:
            self._restart()
            snap = self.backend.spawn(groups)
        self._start(plan, snap)
        if first:  # the largest composition fixes the reward normaliser (A.6)
            na = self.units.n_agents
            self.max_reward = R.max_reward(self.units.health_max[na:],
                                           self.units.shield_max[na:], self.rp)
        self.episodes_started += 1
        self._switch()
        return self.get_entities()

    def _spawns(self, plan: sc.EpisodePlan) -> list[Spawn]:
        cx, cy = self.map.centre
        out = []
        for name, owner, n, dx, dy in plan.spawns():
            kind = sc.UNITS[name]
            out.append(Spawn(kind.rl_id if owner == 1 else kind.type_id, owner, cx + dx,
                             cy + dy, n))
        return out

    def _start(self, plan: sc.EpisodePlan, snap: Snapshot) -> None:
        """Order, armies, tags and bookkeeping of a freshly spawned episode (A.3 steps 6-10)."""
        n_allies = sum(n for _, n in plan.allies)
        n_enemies = sum(n for _, n in plan.enemies)
        idx = {}
        for owner in (1, 2):
            rows = [k for k in range(len(snap.uid)) if snap.owner[k] == owner]
            idx[owner] = sorted(rows, key=lambda k: (snap.unit_type[k], snap.x[k], snap.y[k]))
        if len(idx[1]) != n_allies or len(idx[2]) != n_enemies:
            raise BackendError(f"spawned {len(idx[1])} agents and {len(idx[2])} enemies, "
                               f"expected {n_allies} and {n_enemies}")
        order = idx[1] + idx[2]
        self.uids = np.asarray(snap.uid)[order]
        names = [sc.NAME_BY_ID[int(snap.unit_type[k])] for k in order]
        f = self.family
        self.units = R.Units(
            n_agents=n_allies,
            kind=np.array([f.type_index(n) for n in names], int),
            medivac=np.array([n == sc.MEDIVAC for n in names]),
            flying=np.asarray(snap.flying, bool)[order],
            max_cooldown=np.array([sc.UNITS[n].max_cooldown for n in names]),
            **{k: np.asarray(getattr(snap, k), float)[order] for k in (
                "health", "health_max", "shield", "shield_max", "energy", "energy_max",
                "cooldown", "x", "y")})
        self.prev: R.Units | None = None
        self.plan = plan
        self.n_armies = plan.n_armies
        cx, cy = self.map.centre
        self.spawn_points = plan.army_positions + np.array([cx, cy])
        u = self.units
        army = R.nearest_army(u.x[n_allies:], u.y[n_allies:], self.spawn_points)
        self.enemy_army = _fill_empty_armies(army, u.x[n_allies:], u.y[n_allies:],
                                             self.spawn_points)
        ma, me = f.max_agents, f.max_enemies
        if self.random_tags:
            self.enemy_tags = self.rng.choice(me, size=n_enemies, replace=False)
            self.ally_tags = self.rng.choice(np.arange(me, me + ma), size=n_allies,
                                             replace=False)
        else:
            self.enemy_tags = np.arange(n_enemies)
            self.ally_tags = np.arange(me, me + n_allies)
        self.tasks_complete = np.arange(self.n_tasks) >= self.n_armies
        self.order = self.rng.permutation(n_allies)
        self.dead_enemy = np.zeros(n_enemies, bool)
        self.dead_ally = np.zeros(n_allies, bool)
        self.heals_allowed = n_enemies > n_allies
        self.heal_fracs: list[float] = []
        self.t = 0
        self.script = R.ArmyScript()
        self.script.reset(self.rng, self.n_armies, self.train_n_armies, self.train_n_enemies)
        self._refresh()

    def _refresh(self) -> None:
        """Recompute what every getter of the current state shares."""
        self.dist = R.distance_matrix(self.units)
        self._avail = R.avail_actions(self.units, self.dist, self.ally_tags, self.enemy_tags,
                                      self.enemy_army, self.layout, self.map, self.move_amount)

    def _restart(self) -> None:
        self.restarts += 1
        self.map = self.backend.restart()

    def _switch(self) -> None:
        """The scripted enemies' attack/retreat switches (A.4), sent as unit orders."""
        only_med = R.medivacs_only(self.units, self.enemy_army, self.n_armies)
        orders = self.script.switch(self.rng, only_med)
        if not orders or not self.backend.in_game():
            return
        na, cx, cy = self.units.n_agents, *self.map.centre
        cmds = []
        for k, what in orders:
            ids = tuple(int(v) for v in self.uids[na:][(self.enemy_army == k)
                                                       & self.units.alive[na:]])
            if not ids:
                continue
            if what == "attack":
                cmds.append(Command(ATTACK, ids, target_pos=(cx, cy)))
            else:
                sx, sy = self.spawn_points[k]
                cmds.append(Command(MOVE, ids, target_pos=(float(sx), float(sy))))
        try:
            self.backend.command(cmds)
        except BackendError:
            pass  # as the original: the next step finds the broken game and restarts it

    # ---------------------------------------------------------------------------- step
    def _agent_commands(self, actions: np.ndarray) -> tuple[list[Command], int]:
        """Unit commands of the agents' actions (A.10); unavailable actions are skipped."""
        u, cmds, invalid = self.units, [], 0
        for i in range(u.n_agents):
            a = int(actions[i])
            if not 0 <= a < self.family.n_actions or self._avail[i, a] < 1:
                invalid += 1
                continue
            uid = (int(self.uids[i]),)
            x, y, d = float(u.x[i]), float(u.y[i]), self.move_amount
            if a == 0:
                continue
            if a == R.STOP:
                cmds.append(Command(STOP, uid))
            elif a <= R.WEST:
                dx, dy = {R.NORTH: (0, d), R.SOUTH: (0, -d), R.EAST: (d, 0),
                          R.WEST: (-d, 0)}[a]
                cmds.append(Command(MOVE, uid, target_pos=(x + dx, y + dy)))
            else:
                tag = a - R.N_NO_ATTACK
                if u.medivac[i]:
                    j = int(np.flatnonzero(self.ally_tags == tag)[0])
                    cmds.append(Command(HEAL, uid, target_unit=int(self.uids[j])))
                else:
                    e = int(np.flatnonzero(self.enemy_tags == tag)[0])
                    cmds.append(Command(ATTACK, uid,
                                        target_unit=int(self.uids[u.n_agents + e])))
        return cmds, invalid

    def _update(self, snap: Snapshot) -> None:
        """New unit values by id; units missing from the snapshot are dead (health 0)."""
        self.prev = self.units.copy()
        row = {int(v): k for k, v in enumerate(snap.uid)}
        u = self.units
        for k, uid in enumerate(self.uids):
            r = row.get(int(uid))
            if r is None:
                u.health[k] = 0.0
                continue
            for name in ("health", "health_max", "shield", "shield_max", "energy",
                         "energy_max", "cooldown", "x", "y"):
                getattr(u, name)[k] = float(getattr(snap, name)[r])

    def step(self, actions: Any) -> tuple[float, bool, dict]:
        """One agent step: (scaled reward, terminated, info) (A.5, A.6, A.11)."""
        actions = np.asarray(actions).reshape(-1)
        cmds, invalid = self._agent_commands(actions)
        try:
            self.backend.command(cmds)
            snap = self.backend.step(self.step_mul)
        except BackendError:
            return self._crashed()
        self.t += 1
        self._update(snap)
        u, na, p = self.units, self.units.n_agents, self.rp
        end = R.game_end_code(u, self.family.has_medivac)
        reward, damage, died = R.battle_reward(self.prev, u, self.dead_enemy, self.dead_ally, p)
        _, ally_died = R.health_deltas(self.prev, u, self.dead_ally, slice(0, na))
        self.dead_enemy |= died
        self.dead_ally |= ally_died
        task_r = R.army_damage_rewards(damage, died, self.enemy_army, self.n_tasks, p,
                                       self.faithful_task_reward)
        codes = R.task_end_codes(u, self.enemy_army, self.n_armies, self.map.centre,
                                 self.n_tasks)
        self._boost(codes)
        n = self.n_armies
        defeated, infiltrated = codes[:n] == 1, codes[:n] == -1
        complete = codes != 0
        changed = bool(np.any(complete != self.tasks_complete))
        self.tasks_complete = complete
        task_r[:n] = (task_r[:n] + defeated * p.win) / (self.max_reward / p.scale_rate)
        allies_defeated = end == -1
        if infiltrated.any():
            end = -1
        won = timeout = terminated = False
        if end is not None:
            terminated = True
            self.battles_game += 1
            if end == 1:
                won = True
                self.battles_won += 1
                reward = 1.0 if p.sparse else reward + p.win
            elif end == -1:
                reward = -1.0 if p.sparse else reward + p.defeat
        elif self.t >= self.episode_limit:
            terminated = timeout = True
            self.battles_game += 1
            self.timeouts += 1
        if p.scale:
            reward /= self.max_reward / p.scale_rate
        self._switch()
        self._refresh()
        pad = np.zeros(self.n_tasks, bool)
        info = {
            "battle_won": won,
            "task_rewards": task_r.astype(np.float32),
            "tasks_terminated": complete.copy(),
            "tasks_changed": changed,
            "perc_armies_defeated": float(np.mean(defeated)),
            "allies_defeated": allies_defeated,
            "base_infiltrated": bool(infiltrated.any()),
            "armies_defeated": _pad(defeated, pad),
            "armies_infiltrated": _pad(infiltrated, pad),
            "scenario": self.get_scenario_desc(),
            "spread": self.plan.spread,
            "episode_limit": timeout and self.continuing_episode,
            "truncated": timeout,
            "n_agents": na,
            "n_enemies": u.n_enemies,
            "n_armies": n,
            "perc_agents_healed_per_army_defeated": (
                float(np.mean(self.heal_fracs)) if self.heals_allowed and self.heal_fracs
                else float("nan")),
            "invalid_actions": invalid,
            "env_error": False,
        }
        return float(reward), terminated, info

    def _boost(self, codes: np.ndarray) -> None:
        """A.7: health (and shield) boost for agents near a just-defeated army."""
        if not self.heals_allowed:
            return
        heal, fracs = R.boost_recipients(self.units, codes, self.tasks_complete,
                                         self.spawn_points)
        self.heal_fracs += fracs
        if not heal:
            return
        u = self.units
        frac = R.boost_fraction(u.n_agents, u.n_enemies, self.n_armies)
        values = R.apply_boost(u, heal, frac, self.family.shields)
        if self.backend.in_game():
            try:
                self.backend.set_unit_values([(int(self.uids[i]), field, v)
                                              for i, field, v in values])
            except BackendError:
                pass

    def _crashed(self) -> tuple[float, bool, dict]:
        """A.11: the game broke during the step: restart it, end the episode, reward 0."""
        self._restart()
        info = {"battle_won": False, "task_rewards": np.zeros(self.n_tasks, np.float32),
                "tasks_terminated": self.tasks_complete.copy(), "tasks_changed": False,
                "episode_limit": self.continuing_episode, "env_error": True,
                "n_agents": self.units.n_agents, "n_enemies": self.units.n_enemies,
                "n_armies": self.n_armies, "spread": self.plan.spread,
                "perc_agents_healed_per_army_defeated": float("nan")}
        return 0.0, True, info

    # ---------------------------------------------------------------------- observation
    def get_avail_actions(self) -> np.ndarray:
        """[max_agents, n_actions] int32 availability codes (A.9)."""
        return self._avail.copy()

    def get_entities(self) -> np.ndarray:
        """[n_entities, entity_dim] float32 features (A.8)."""
        s = self.script
        return R.entity_features(self.layout, self.units, self.ally_tags, self.enemy_tags,
                                 self._avail, s.attacking, s.since, self.enemy_army, self.map,
                                 self.prev, self.move_amount)

    def heuristic(self) -> np.ndarray:
        """[max_agents, n_tasks] bool: the heuristic allocation of the current state (A.13)."""
        u, na = self.units, self.units.n_agents
        return R.heuristic_allocation(
            self.style, self.order, u.kind[:na], u.alive[:na], u.kind[na:], u.alive[na:],
            self.enemy_army, self.n_armies, self.tasks_complete, self.script.attacking,
            self.family.max_agents, self.n_tasks)

    def get_masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obs_mask [E,E], entity_mask [E], entity2task_mask [E,3], task_mask [3]); 1 = not."""
        u = self.units
        alloc = self.heuristic() if self.heuristic_alloc else None
        return (R.obs_mask(self.dist, self.layout, u.n_agents, self.sight_range),
                R.entity_mask(u, self.layout),
                R.entity2task_mask(self.layout, u.n_agents, self.enemy_army, self.n_tasks,
                                   alloc),
                self.tasks_complete.copy())

    def get_scenario_desc(self) -> list[str]:
        return sc.scenario_strings(self.family, self.plan.army_units)

    def get_stats(self) -> dict[str, Any]:
        return {"battles_won": self.battles_won, "battles_game": self.battles_game,
                "battles_draw": self.timeouts,  # sic: the original reports timeouts here
                "win_rate": self.battles_won / max(self.battles_game, 1),
                "timeouts": self.timeouts, "restarts": self.restarts,
                "scenario": self.get_scenario_desc() if self.units is not None else []}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def _pad(values: np.ndarray, pad: np.ndarray) -> np.ndarray:
    out = pad.copy()
    out[:len(values)] = values
    return out


def _fill_empty_armies(army: np.ndarray, x: np.ndarray, y: np.ndarray,
                       points: np.ndarray) -> np.ndarray:
    """Give every army at least one enemy (only needed when armies are not spread)."""
    army = np.array(army)
    for k in range(len(points)):
        if np.any(army == k):
            continue
        for e in np.argsort(np.hypot(x - points[k, 0], y - points[k, 1]), kind="stable"):
            if np.sum(army == army[e]) > 1:
                army[e] = k
                break
    return army


__all__ = ["ATTACK", "HEAL", "MOVE", "PYSC2_BACKEND", "STOP", "Backend", "BackendError",
           "Command", "HostSC2MultiArmy", "Snapshot", "Spawn"]
