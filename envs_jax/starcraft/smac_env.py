"""SMAC-style micromanagement battles on the pure-JAX simulator (`starcraft_jax`).

SMAC's agent interface (starcraft.md B.4): actions no-op (dead only), stop, move N/S/E/W by
`move_amount`, and attack enemy j (a Medivac: heal ally j) when j is alive and within
`shoot_range`; a step is 8 game loops. The enemies follow SMAC's scripted behaviour: an
attack-move toward the agents' starting position, fighting the nearest unit they see.
Reward: SMAC's shaped, positive-only form (damage and kills, +200 on a win, scaled so a
perfect episode earns `reward_scale_rate`), one subtask (the enemy team).

Observations use this project's entity scheme with the layout of the bridge's SMAC entity
adapter (`envs_jax.bridge.smac.SmacEntityHost`): one row per unit, agents first,
[ally, enemy, health, shield, cooldown or energy (agents), x, y, unit-type one-hot, the
agent's available actions]. Positions are relative to the map centre over the map's width
and height; dead units keep only their team and type. Agents see units within
`sight_range`; enemy rows see everything (the centralised mixer's view).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, Observation
from envs_jax.starcraft import sim
from envs_jax.starcraft import units as ut
from envs_jax.starcraft.maps import MapSpec, get_map

N_NO_ATTACK = 6
NOOP, STOP, NORTH, SOUTH, EAST, WEST = range(N_NO_ATTACK)
DIRS = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)


@struct.dataclass
class BattleState:
    units: sim.Units
    t: jax.Array  # () int32, agent steps taken
    over: jax.Array  # () bool: the battle has ended (later steps are ignored)


class StarCraftJax(Environment):
    """One SMAC map (`map_name`) as a pure, vmappable JAX environment."""

    def __init__(self, map_name: str = "3m", *, sight_range: float = 9.0,
                 shoot_range: float = 6.0, move_amount: float = 2.0,
                 reward_death_value: float = 10.0, reward_win: float = 200.0,
                 reward_scale_rate: float = 20.0, reward_scale: bool = True,
                 episode_limit: int | None = None, n_substeps: int = 4,
                 spawn_spread: float = 1.0, timeout_as_episode_limit: bool = False,
                 cooldown_jitter: bool = True, sim_chunk: int | None = None):
        if n_substeps < 1 or ut.STEP_LOOPS % n_substeps:
            raise ValueError(f"starcraft_jax n_substeps must divide {ut.STEP_LOOPS}, "
                             f"got {n_substeps!r}")
        self.map: MapSpec = get_map(map_name)
        self.map_name = map_name
        self.sight_range, self.shoot_range = float(sight_range), float(shoot_range)
        self.move_amount = float(move_amount)
        self.reward_death_value, self.reward_win = float(reward_death_value), float(reward_win)
        self.reward_scale_rate, self.reward_scale = float(reward_scale_rate), bool(reward_scale)
        self.n_substeps, self.spawn_spread = int(n_substeps), float(spawn_spread)
        self.timeout_as_episode_limit = bool(timeout_as_episode_limit)
        self.cooldown_jitter = bool(cooldown_jitter)

        m = self.map
        self.n_agents, self.n_enemies = m.n_agents, m.n_enemies
        self.n_entities = self.n_agents + self.n_enemies
        self.sim_chunk = (int(sim_chunk) if sim_chunk is not None else
                          sim.default_chunk(self.n_entities))  # battles per simulated chunk
        self.n_tasks = 1
        self.n_actions = N_NO_ATTACK + self.n_enemies
        self.episode_limit = int(episode_limit or m.limit)
        self.type_names = m.type_names
        self.type_bits = len(self.type_names)
        self.entity_dim = 7 + self.type_bits + self.n_actions
        self.size = np.asarray(m.size, np.float32)
        self.utype = np.array(m.unit_list("agents") + m.unit_list("enemies"), np.int32)
        self.team = np.array([0] * self.n_agents + [1] * self.n_enemies, np.int32)
        self.tables = sim.tables(self.utype, self.team)  # numpy: constants under jit
        self.bounds = (float(self.size[0]), float(self.size[1]))
        self.has_healer = bool(np.any(ut.IS_HEALER[self.utype[: self.n_agents]]))
        if self.has_healer and self.n_enemies < self.n_agents:
            raise ValueError(f"map {map_name!r}: heal targets need n_enemies >= n_agents")
        enemy_types = self.utype[self.n_agents:]
        # SMAC's max_reward: every enemy's health + shield, a kill bonus each, the win bonus.
        self.max_reward = float(self.n_enemies * self.reward_death_value + self.reward_win
                                + np.sum(ut.HEALTH[enemy_types] + ut.SHIELD[enemy_types]))
        onehot = np.zeros((len(ut.UNIT_NAMES), self.type_bits), np.float32)
        for i, name in enumerate(self.type_names):
            onehot[ut.TYPE_ID[name], i] = 1.0
        self.type_onehot = onehot
        self.start = np.asarray(m.starts, np.float32)  # [team, 2]

    # ---------------------------------------------------------------------------- reset
    def reset(self, key: jax.Array, **options: Any) -> tuple[Observation, BattleState]:
        """Each team in a clump around its start, every unit jittered in a square."""
        n = self.n_entities
        half = self.spawn_spread * (1.0 + 0.25 * np.sqrt(np.bincount(self.team)))[self.team]
        jitter = jax.random.uniform(key, (n, 2), minval=-1.0, maxval=1.0) * half[:, None]
        pos = jnp.asarray(self.start)[self.team] + jitter
        units = sim.spawn(pos, self.utype, self.team, np.ones(n, bool))
        state = BattleState(units=units, t=jnp.zeros((), jnp.int32), over=jnp.bool_(False))
        return self.get_obs(state), state

    # ------------------------------------------------------------------------- actions
    def avail_actions(self, state: BattleState) -> jax.Array:
        """[A, n_actions] int32 (0/1) as SMAC: dead -> no-op only; alive -> stop, the moves
        that stay on the map, targets alive within shoot range (Medivac: living non-Medivac
        allies)."""
        u = state.units
        A, NE = self.n_agents, self.n_enemies
        alive = u.alive[:A]
        step = self.move_amount / 2  # SMAC probes the pathing grid half a move away
        dest = u.pos[:A, None, :] + step * jnp.asarray(DIRS)[None]
        on_map = jnp.all((dest >= 0.0) & (dest <= jnp.asarray(self.size)), -1)  # [A, 4]
        dist = sim.distances(u.pos)
        enemies = u.alive[None, A:] & (dist[:A, A:] <= self.shoot_range)
        if self.has_healer:
            healer = jnp.asarray(ut.IS_HEALER)[u.utype[:A]]
            friends = (u.alive[None, :A] & ~jnp.asarray(ut.FLYING)[u.utype[:A]][None, :]
                       & (dist[:A, :A] <= self.shoot_range))
            friends = jnp.pad(friends, ((0, 0), (0, NE - A)))
            targets = jnp.where(healer[:, None], friends, enemies)
        else:
            targets = enemies
        live = jnp.concatenate([jnp.ones((A, 1), bool), on_map, targets], 1) & alive[:, None]
        avail = jnp.concatenate([~alive[:, None], live], 1)
        return avail.astype(jnp.int32)

    def _commands(self, state: BattleState, actions: jax.Array, avail=None) -> sim.Commands:
        u = state.units
        A = self.n_agents
        if avail is None:
            avail = self.avail_actions(state)
        a = jnp.asarray(actions, jnp.int32)
        ok = jnp.take_along_axis(avail, a[:, None], 1)[:, 0] > 0
        a = jnp.where(ok, a, STOP)  # an unavailable action is a stop (SMAC would assert)
        move = (a >= NORTH) & (a <= WEST)
        d = jnp.asarray(DIRS)[jnp.clip(a - NORTH, 0, 3)]
        attack = a >= N_NO_ATTACK
        healer = jnp.asarray(ut.IS_HEALER)[u.utype[:A]]
        j = a - N_NO_ATTACK
        target = jnp.where(healer, j, A + j)
        kind = jnp.where(move, sim.MOVE, jnp.where(attack, sim.ATTACK, sim.HOLD))
        point = u.pos[:A] + self.move_amount * d
        # The enemies attack-move toward the agents' start (SMAC's scripted opponent).
        NE = self.n_enemies
        return sim.Commands(
            kind=jnp.concatenate([kind, jnp.full((NE,), sim.ATTACK_MOVE, jnp.int32)]),
            target=jnp.concatenate([target, jnp.zeros((NE,), jnp.int32)]),
            point=jnp.concatenate([point, jnp.broadcast_to(jnp.asarray(self.start[0]),
                                                           (NE, 2))]),
        )

    # ---------------------------------------------------------------------------- step
    def _noise(self, key: jax.Array) -> jax.Array | None:
        if not self.cooldown_jitter:
            return None
        return sim.cooldown_noise(key, self.n_substeps, self.n_entities)

    def step_env(self, key: jax.Array, state: BattleState, actions: jax.Array):
        """(obs, state, reward, done, info); a battle that is over stays as it ended."""
        after = sim.advance(state.units, self._commands(state, actions), self.n_substeps,
                            self.bounds, self._noise(key), self.tables)
        return self._finish(state, after)

    def step_batch(self, keys: jax.Array, state: BattleState, actions: jax.Array,
                   avail=None):
        """`jax.vmap(step_env)` with the simulation written for the batch: the sub-steps run
        on battle-axis-last arrays (`sim.to_batch_last`), the rest is vmapped. `avail` (the
        observation's availability of `state`) saves recomputing it for the commands."""
        if avail is None:
            cmd = jax.vmap(self._commands)(state, actions)
        else:
            cmd = jax.vmap(self._commands)(state, actions, avail)
        noise = jax.vmap(self._noise)(keys) if self.cooldown_jitter else None  # [E, S, U]
        after = sim.advance_batch(state.units, cmd, self.n_substeps, self.bounds, noise,
                                  self.tables, self.sim_chunk)
        return jax.vmap(self._finish)(state, after)

    def _finish(self, state: BattleState, after: sim.Units):
        """Reward, termination and observation of a step from `state` to units `after`."""
        A = self.n_agents
        before = state.units
        after = jax.tree.map(lambda new, old: jnp.where(state.over, old, new), after, before)
        t = state.t + 1

        prev = before.health[A:] + before.shield[A:]
        now = after.health[A:] + after.shield[A:]
        counted = before.alive[A:]  # enemies that had not died before this step
        died = counted & ~after.alive[A:]
        delta_enemy = jnp.sum(jnp.where(counted, jnp.where(died, prev, prev - now), 0.0))
        delta_deaths = self.reward_death_value * jnp.sum(died)
        reward = jnp.abs(delta_enemy + delta_deaths)  # SMAC's reward_only_positive

        fighting = sim.fighting(after)  # only Medivacs left counts as beaten (SMAC)
        agents_left = jnp.any(fighting[:A])
        enemies_left = jnp.any(fighting[A:])
        won = agents_left & ~enemies_left
        battle_over = ~agents_left | ~enemies_left
        timeout = (t >= self.episode_limit) & ~battle_over
        reward = reward + jnp.where(won, self.reward_win, 0.0)
        if self.reward_scale:
            reward = reward * self.reward_scale_rate / self.max_reward
        reward = jnp.where(state.over, 0.0, reward).astype(jnp.float32)
        done = battle_over | timeout
        new = BattleState(units=after, t=t, over=state.over | done)
        info = {
            "task_rewards": reward[None],
            "tasks_terminated": done[None],
            "tasks_changed": done,
            "episode_limit": timeout & self.timeout_as_episode_limit,
            "truncated": timeout,
            "battle_won": won,
            "dead_allies": jnp.sum(~after.alive[:A]).astype(jnp.int32),
            "dead_enemies": jnp.sum(~after.alive[A:]).astype(jnp.int32),
        }
        return self.get_obs(new), new, reward, done, info

    # ---------------------------------------------------------------------- observation
    def get_obs(self, state: BattleState) -> Observation:
        u = state.units
        A, E = self.n_agents, self.n_entities
        t = u.utype
        alive = u.alive
        avail = self.avail_actions(state)
        healer = jnp.asarray(ut.IS_HEALER)[t]
        energy_max = jnp.maximum(jnp.asarray(ut.ENERGY_MAX)[t], 1.0)
        cd = jnp.where(healer, u.energy / energy_max,
                       u.cooldown / jnp.asarray(ut.MAX_COOLDOWN_FEATURE)[t])
        is_agent = (jnp.arange(E) < A).astype(jnp.float32)
        shield_max = jnp.asarray(ut.SHIELD)[t]
        rel = (u.pos - jnp.asarray(self.size) / 2) / jnp.asarray(self.size)
        live = alive.astype(jnp.float32)
        cols = [
            is_agent[:, None], 1.0 - is_agent[:, None],
            (u.health / jnp.asarray(ut.HEALTH)[t] * live)[:, None],
            (jnp.where(shield_max > 0, u.shield / jnp.maximum(shield_max, 1.0), 0.0)
             * live)[:, None],
            (cd * is_agent * live)[:, None],
            rel * live[:, None],
        ]
        if self.type_bits:
            cols.append(jnp.asarray(self.type_onehot)[t])
        cols.append(jnp.pad(avail.astype(jnp.float32), ((0, E - A), (0, 0))))
        entities = jnp.concatenate(cols, -1)

        dist = sim.distances(u.pos)
        sees = dist < self.sight_range
        sees = sees.at[A:].set(True)  # enemy rows: the centralised view
        sees = sees | jnp.eye(E, dtype=bool)
        sees = sees & alive[:, None] & alive[None, :]
        e2t = jnp.concatenate([jnp.ones((A, 1), bool), jnp.zeros((E - A, 1), bool)])
        return Observation(
            entities=entities, avail_actions=avail, obs_mask=~sees, entity_mask=~alive,
            entity2task_mask=e2t, task_mask=state.over[None],
        )

    def heuristic_allocation(self, obs: Observation) -> jax.Array:
        """One subtask (the enemy team): every agent is allocated to it."""
        return jnp.ones((self.n_agents, 1), bool)

    def __repr__(self) -> str:
        return f"StarCraftJax(map_name={self.map_name!r})"
