"""StarCraft II-like battles in pure JAX (issue 18): a unit simulator and SMAC-style maps.

`envs_jax.make("starcraft_jax", map_name="3m")` builds one of SMAC's maps
(`envs_jax.starcraft.maps.MAPS`) on the simulator of `envs_jax.starcraft.sim`, with the unit
data of `envs_jax.starcraft.units`. Unlike the bridge's `smac` env it needs no StarCraft II.
"""

from envs_jax.starcraft.maps import MAPS, get_map
from envs_jax.starcraft.multiarmy_env import ArmyState, MultiArmyJax
from envs_jax.starcraft.smac_env import BattleState, StarCraftJax

__all__ = ["MAPS", "ArmyState", "BattleState", "MultiArmyJax", "StarCraftJax", "get_map"]
