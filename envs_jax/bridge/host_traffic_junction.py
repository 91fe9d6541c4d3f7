"""A small traffic junction with the flat SMAC interface, on numpy.

Two one-way roads cross in the middle of a `size` x `size` grid: route 0 runs west to east
along the middle row, route 1 north to south along the middle column. Each step a car may
arrive at the start of each route (probability `arrive_prob`) when a car slot is free; a
car's actions are 0 = brake and 1 = gas (advance one cell), and it leaves the grid after the
last cell of its route, freeing its slot. Cars sharing a cell collide (`collision_penalty`
per colliding pair per step); every car on the road pays `time_penalty` times its time on
the road each step. An episode lasts `episode_limit` steps; it is "won" when no collision
happened. Free slots behave like SMAC's dead agents: zero observation, only action 0.

The SMAC methods are all here (`get_obs`, `get_state`, `get_avail_actions`, `get_env_info`,
`step`, `reset`, `close`, ...), so `envs_jax.bridge.smac.SmacFlatHost` drives it exactly as it
drives StarCraft; that is what the bridge tests use it for. Imports numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BRAKE, GAS = 0, 1


class HostTrafficJunction:
    """Flat-vector multi-agent traffic junction (SMAC-style API)."""

    def __init__(self, n_agents: int = 5, size: int = 7, arrive_prob: float = 0.3,
                 episode_limit: int = 40, vision: int = 1, collision_penalty: float = -10.0,
                 time_penalty: float = -0.01, seed: int = 0):
        if size < 3 or size % 2 == 0:
            raise ValueError(f"size must be an odd number >= 3, got {size}")
        if n_agents < 1 or episode_limit < 1:
            raise ValueError("n_agents and episode_limit must be >= 1")
        self.n_agents = n_agents
        self.size = size
        self.arrive_prob = float(arrive_prob)
        self.episode_limit = episode_limit
        self.vision = vision
        self.collision_penalty = float(collision_penalty)
        self.time_penalty = float(time_penalty)
        self.n_actions = 2
        mid = size // 2
        # cell k of each route, in driving order
        self.routes = np.array([[(k, mid) for k in range(size)],
                                [(mid, size - 1 - k) for k in range(size)]], np.int64)
        self.rng = np.random.default_rng(seed)
        self._new_episode()
        self.battles_game = 0
        self.battles_won = 0

    def _new_episode(self) -> None:
        n = self.n_agents
        self.active = np.zeros(n, bool)
        self.route = np.zeros(n, np.int64)
        self.progress = np.zeros(n, np.int64)
        self.on_road = np.zeros(n, np.int64)
        self.last_action = np.zeros((n, self.n_actions), np.float32)
        self.t = 0
        self.collisions = 0

    # ----------------------------------------------------------------------- sizes
    def get_obs_size(self) -> int:
        return 1 + 2 + self.size + 1 + (2 * self.vision + 1) ** 2

    def get_state_size(self) -> int:
        return self.n_agents * (1 + 2 + self.size + 1 + self.n_actions)

    def get_total_actions(self) -> int:
        return self.n_actions

    def get_env_info(self) -> dict[str, int]:
        return {"state_shape": self.get_state_size(), "obs_shape": self.get_obs_size(),
                "n_actions": self.n_actions, "n_agents": self.n_agents,
                "episode_limit": self.episode_limit}

    # ----------------------------------------------------------------------- episode
    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._new_episode()
        self._arrivals()
        return self.get_obs(), self.get_state()

    def _cells(self) -> np.ndarray:
        return self.routes[self.route, np.minimum(self.progress, self.size - 1)]

    def _arrivals(self) -> None:
        for r in (0, 1):
            free = np.flatnonzero(~self.active)
            if len(free) and self.rng.random() < self.arrive_prob:
                i = free[0]
                self.active[i], self.route[i], self.progress[i], self.on_road[i] = True, r, 0, 0

    def step(self, actions: Any) -> tuple[float, bool, dict]:
        actions = np.asarray(actions, np.int64).reshape(-1)
        gas = self.active & (actions == GAS)
        self.last_action[:] = 0.0
        self.last_action[np.arange(self.n_agents), np.clip(actions, 0, 1)] = 1.0
        self.progress += gas
        self.on_road += self.active
        self.active &= self.progress < self.size  # past the last cell: the car leaves
        cells = self._cells()
        pairs = 0
        live = np.flatnonzero(self.active)
        for a, i in enumerate(live):
            for j in live[a + 1:]:
                pairs += bool(np.array_equal(cells[i], cells[j]))
        self.collisions += pairs
        reward = self.collision_penalty * pairs + self.time_penalty * float(
            np.sum(self.on_road[self.active]))
        self.t += 1
        self._arrivals()
        terminated = self.t >= self.episode_limit
        info: dict[str, Any] = {"collisions": pairs}
        if terminated:
            won = self.collisions == 0
            info["battle_won"] = won
            self.battles_game += 1
            self.battles_won += int(won)
        return reward, terminated, info

    # ------------------------------------------------------------------ observations
    def get_obs_agent(self, i: int) -> np.ndarray:
        obs = np.zeros(self.get_obs_size(), np.float32)
        if not self.active[i]:
            return obs
        obs[0] = 1.0
        obs[1 + self.route[i]] = 1.0
        obs[3 + self.progress[i]] = 1.0
        obs[3 + self.size] = self.on_road[i] / self.episode_limit
        cells = self._cells()
        v = self.vision
        grid = np.zeros((2 * v + 1, 2 * v + 1), np.float32)
        for j in np.flatnonzero(self.active):
            d = cells[j] - cells[i]
            if j != i and np.all(np.abs(d) <= v):
                grid[d[0] + v, d[1] + v] += 1.0
        obs[4 + self.size:] = grid.reshape(-1)
        return obs

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_state(self) -> np.ndarray:
        per_agent = [np.concatenate([self.get_obs_agent(i)[: 4 + self.size], self.last_action[i]])
                     for i in range(self.n_agents)]
        return np.concatenate(per_agent).astype(np.float32)

    def get_avail_agent_actions(self, i: int) -> list[int]:
        return [1, 1] if self.active[i] else [1, 0]

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_stats(self) -> dict[str, float]:
        return {"battles_won": self.battles_won, "battles_game": self.battles_game,
                "win_rate": self.battles_won / max(self.battles_game, 1)}

    def close(self) -> None:
        pass


__all__ = ["HostTrafficJunction"]
