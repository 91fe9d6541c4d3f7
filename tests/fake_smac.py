"""A SMAC look-alike for the bridge tests: marines vs marines with SMAC's arrays and methods.

Stands in for oxwhirl's `StarCraft2Env` where StarCraft II is not installed. It keeps the
documented SMAC interface (spec B.1-B.5): the methods `reset`, `step`, `get_obs`,
`get_state`, `get_avail_actions`, `get_env_info`, `get_stats`, `close`, the observation and
state layouts of B.3 for a marine-only map without shields or unit types (5m_vs_6m gives
obs 55, state 98, 12 actions), the attributes the entity adapter reads, and SMAC's crash
behaviour (restart, `force_restarts += 1`, return `(0, True, {})`). Combat is a crude
stand-in: instant hits of 6 damage in range 6, enemies attack the nearest ally in range or
walk toward it. The game seed is read at the first reset, as SMAC reads it at launch.
Numpy only (it runs inside bridge workers).
"""

from __future__ import annotations

import numpy as np

MAPS = {"5m_vs_6m": (5, 6, 70), "3m": (3, 3, 60)}
HEALTH, DAMAGE, SIGHT, SHOOT, MOVE = 45.0, 6.0, 9.0, 6.0, 2.0
SIZE = 32.0


class FakeStarCraft2Env:
    """Marines only; see the module doc. `crash_at=k` simulates a game crash on step k."""

    def __init__(self, map_name: str = "5m_vs_6m", seed: int | None = None, crash_at: int = 0,
                 continuing_episode: bool = False, **ignored):
        self.map_name = map_name
        self.n_agents, self.n_enemies, self.episode_limit = MAPS[map_name]
        self.n_actions = 6 + self.n_enemies
        self.unit_type_bits = 0
        self.shield_bits_ally = 0
        self.shield_bits_enemy = 0
        self.obs_instead_of_state = False
        self.state_last_action = True
        self.continuing_episode = continuing_episode
        self.crash_at = crash_at
        self._seed = seed
        self._episode_count = 0
        self.force_restarts = 0
        self.battles_won = 0
        self.battles_game = 0
        self.timeouts = 0
        self.max_reward = self.n_enemies * (10.0 + HEALTH) + 200.0
        self.rng: np.random.Generator | None = None

    # ------------------------------------------------------------- sizes (SMAC's names)
    def get_obs_move_feats_size(self) -> int:
        return 4

    def get_obs_enemy_feats_size(self) -> tuple[int, int]:
        return self.n_enemies, 5

    def get_obs_ally_feats_size(self) -> tuple[int, int]:
        return self.n_agents - 1, 5

    def get_obs_own_feats_size(self) -> int:
        return 1

    def get_obs_size(self) -> int:
        return 4 + 5 * self.n_enemies + 5 * (self.n_agents - 1) + 1

    def get_state_size(self) -> int:
        return 4 * self.n_agents + 3 * self.n_enemies + self.n_agents * self.n_actions

    def get_total_actions(self) -> int:
        return self.n_actions

    def get_env_info(self) -> dict:
        return {"state_shape": self.get_state_size(), "obs_shape": self.get_obs_size(),
                "n_actions": self.n_actions, "n_agents": self.n_agents,
                "episode_limit": self.episode_limit}

    # ------------------------------------------------------------------ episodes
    def reset(self):
        if self._episode_count == 0:  # SMAC launches (and seeds) the game at the first reset
            self.rng = np.random.default_rng(self._seed)
        self._episode_count += 1
        A, E = self.n_agents, self.n_enemies
        self.pos = np.concatenate([
            np.stack([np.full(A, 9.0), 12.0 + 2.0 * np.arange(A)], -1),
            np.stack([np.full(E, 17.0), 11.0 + 2.0 * np.arange(E)], -1),
        ]) + self.rng.uniform(-1.0, 1.0, (A + E, 2))
        self.health = np.full(A + E, HEALTH)
        self.last_action = np.zeros((A, self.n_actions), np.float32)
        self.t = 0
        return self.get_obs(), self.get_state()

    def _dist(self, i: int, j: int) -> float:
        return float(np.hypot(*(self.pos[j] - self.pos[i])))

    def alive(self) -> np.ndarray:
        return self.health > 0.0

    def step(self, actions):
        self.t += 1
        if self.t == self.crash_at:
            self.force_restarts += 1
            self.reset()
            return 0, True, {}
        A, E = self.n_agents, self.n_enemies
        actions = [int(a) for a in actions]
        avail = self.get_avail_actions()
        for i, a in enumerate(actions):
            assert avail[i][a] == 1, f"agent {i} took unavailable action {a}"
        self.last_action[:] = 0.0
        self.last_action[np.arange(A), actions] = 1.0
        before = self.health[A:].copy()
        moves = {2: (0.0, MOVE), 3: (0.0, -MOVE), 4: (MOVE, 0.0), 5: (-MOVE, 0.0)}
        for i, a in enumerate(actions):
            if a in moves:
                self.pos[i] = np.clip(self.pos[i] + moves[a], 0.0, SIZE)
            elif a >= 6:
                j = A + a - 6
                self.health[j] = max(0.0, self.health[j] - DAMAGE)
        for e in range(A, A + E):
            if self.health[e] <= 0.0:
                continue
            live = [i for i in range(A) if self.health[i] > 0.0]
            if not live:
                break
            target = min(live, key=lambda i, e=e: self._dist(e, i))
            if self._dist(e, target) < SHOOT:
                self.health[target] = max(0.0, self.health[target] - DAMAGE)
            else:
                step = self.pos[target] - self.pos[e]
                self.pos[e] += MOVE * step / np.linalg.norm(step)
        killed = (before > 0.0) & (self.health[A:] <= 0.0)
        reward = float(np.sum(before - self.health[A:]) + 10.0 * killed.sum())
        dead_allies = int(np.sum(self.health[:A] <= 0.0))
        dead_enemies = int(np.sum(self.health[A:] <= 0.0))
        info = {"battle_won": False, "dead_allies": dead_allies, "dead_enemies": dead_enemies}
        terminated = False
        if dead_enemies == E and dead_allies < A:
            info["battle_won"] = True
            reward += 200.0
            terminated = True
            self.battles_won += 1
        elif dead_allies == A:
            terminated = True
        elif self.t >= self.episode_limit:
            terminated = True
            self.timeouts += 1
            if self.continuing_episode:
                info["episode_limit"] = True
        if terminated:
            self.battles_game += 1
        return reward * 20.0 / self.max_reward, terminated, info

    # --------------------------------------------------------------- observations
    def get_obs_agent(self, i: int) -> np.ndarray:
        A, E = self.n_agents, self.n_enemies
        obs = np.zeros(self.get_obs_size(), np.float32)
        if self.health[i] <= 0.0:
            return obs
        x, y = self.pos[i]
        obs[0:4] = [y + MOVE <= SIZE, y - MOVE >= 0, x + MOVE <= SIZE, x - MOVE >= 0]
        for k, e in enumerate(range(A, A + E)):
            d = self._dist(i, e)
            if self.health[e] > 0.0 and d < SIGHT:
                dx, dy = self.pos[e] - self.pos[i]
                obs[4 + 5 * k: 9 + 5 * k] = [d < SHOOT, d / SIGHT, dx / SIGHT, dy / SIGHT,
                                             self.health[e] / HEALTH]
        base = 4 + 5 * E
        for k, j in enumerate(j for j in range(A) if j != i):
            d = self._dist(i, j)
            if self.health[j] > 0.0 and d < SIGHT:
                dx, dy = self.pos[j] - self.pos[i]
                obs[base + 5 * k: base + 5 * k + 5] = [1.0, d / SIGHT, dx / SIGHT, dy / SIGHT,
                                                       self.health[j] / HEALTH]
        obs[-1] = self.health[i] / HEALTH
        return obs

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_state(self) -> np.ndarray:
        A = self.n_agents
        rel = (self.pos - SIZE / 2) / (SIZE / 2)
        alive = self.alive()
        ally = np.zeros((A, 4), np.float32)
        ally[:, 0] = self.health[:A] / HEALTH
        ally[:, 2:4] = rel[:A]
        enemy = np.zeros((self.n_enemies, 3), np.float32)
        enemy[:, 0] = self.health[A:] / HEALTH
        enemy[:, 1:3] = rel[A:]
        ally[~alive[:A]] = 0.0
        enemy[~alive[A:]] = 0.0
        return np.concatenate([ally.ravel(), enemy.ravel(), self.last_action.ravel()])

    def get_avail_agent_actions(self, i: int) -> list[int]:
        avail = [0] * self.n_actions
        if self.health[i] <= 0.0:
            avail[0] = 1
            return avail
        avail[1] = 1
        avail[2:6] = [int(v) for v in self.get_obs_agent(i)[0:4]]
        for k in range(self.n_enemies):
            e = self.n_agents + k
            avail[6 + k] = int(self.health[e] > 0.0 and self._dist(i, e) < SHOOT)
        return avail

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_stats(self) -> dict:
        return {"battles_won": self.battles_won, "battles_game": self.battles_game,
                "battles_draw": 0, "win_rate": self.battles_won / max(self.battles_game, 1),
                "timeouts": self.timeouts, "restarts": self.force_restarts}

    def close(self) -> None:
        pass
