"""SaveTheCity (ALMA's "firefighters") as a pure, vmappable JAX environment."""

from envs_jax.savethecity.env import (
    EnvState,
    EpisodeStats,
    GameConfig,
    RewardConfig,
    SaveTheCity,
    SaveTheCityParams,
    heuristic_allocation,
)
from envs_jax.savethecity.scenarios import SCENARIO_FAMILIES, get_scenarios

__all__ = [
    "EnvState",
    "EpisodeStats",
    "GameConfig",
    "RewardConfig",
    "SCENARIO_FAMILIES",
    "SaveTheCity",
    "SaveTheCityParams",
    "get_scenarios",
    "heuristic_allocation",
]
