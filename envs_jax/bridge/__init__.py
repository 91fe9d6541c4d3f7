"""Host-callback bridge: host-side Python environments behind the batched env interface.

`BridgeEnv` (callback.py) steps N host environments, spread over spawned worker processes
(workers.py), through one ordered `io_callback` per batched call, so the jitted trainer runs
on them unchanged. Environments:

* `make_host_savethecity(...)`: numpy SaveTheCity (host_savethecity.py), same options and
  arrays as `envs_jax.make("savethecity")`; a test bed for the bridge.
* `make_traffic_junction(...)`: a flat-vector traffic junction with the SMAC API
  (host_traffic_junction.py), driven through the flat SMAC adapter.
* `make_smac_env(map_name, scheme)` / `make_sc2multiarmy_env(scenario)` (smac.py): StarCraft
  II, when the `smac` extra and the game are installed; otherwise a clear install message.
  ALMA's multi-army setting is `host_sc2multiarmy.HostSC2MultiArmy` (rules in the numpy
  modules `sc2multiarmy` and `sc2multiarmy_rules`) over a game backend: pysc2
  (`sc2multiarmy_pysc2`) or any class with its `Backend` protocol (`backend="file.py:Class"`).

Bridge options shared by all: `n_workers` (processes; env i lives in worker i % n_workers),
`timeout` (seconds a step may take), `reset_timeout` (spawn, env construction and resets),
`on_error` ('raise' stops the run with the worker's traceback; 'restart' replaces the env,
ends its episode and flags `info["env_error"]`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from envs_jax.bridge.callback import BridgeEnv, BridgeState, describe_host
from envs_jax.bridge.smac import (
    SC2MULTIARMY_SIZES,
    EnvUnavailableError,
    MissingDependencyError,
    make_sc2multiarmy_env,
    make_smac_env,
    split_flat,
)
from envs_jax.bridge.workers import (
    BridgeClosed,
    BridgeError,
    WorkerCrashed,
    WorkerError,
    WorkerPool,
    WorkerTimeout,
)

BRIDGE_OPTIONS = ("n_workers", "timeout", "reset_timeout", "on_error")
SAVETHECITY_TARGET = "envs_jax.bridge.host_savethecity:HostSaveTheCity"
TRAFFIC_JUNCTION_TARGET = "envs_jax.bridge.host_traffic_junction:HostTrafficJunction"


def _split_options(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    bridge = {k: kw.pop(k) for k in BRIDGE_OPTIONS if k in kw}
    return bridge, kw


def make_host_savethecity(**kw: Any) -> BridgeEnv:
    """Numpy SaveTheCity in worker processes; options as `make("savethecity")` plus the
    bridge options (`n_workers`, `timeout`, `reset_timeout`, `on_error`) and `seed`."""
    from envs_jax.savethecity.env import SaveTheCityParams

    bridge, params = _split_options(dict(kw))
    allowed = {f.name for f in fields(SaveTheCityParams)} | {"seed"}
    bad = sorted(set(params) - allowed)
    if bad:
        raise ValueError(f"unknown host_savethecity option(s) {bad}; allowed: "
                         f"{sorted(allowed | set(BRIDGE_OPTIONS))}")
    env = BridgeEnv("envs_jax.bridge.host:entity_host",
                    {"env_class": SAVETHECITY_TARGET, **params},
                    label="host_savethecity", **bridge)
    # the observations are SaveTheCity's, so the JAX heuristic (read from them) applies;
    # the trainer looks for it here for allocation='heuristic'
    from envs_jax.savethecity import heuristic_allocation

    env.heuristic_allocation = heuristic_allocation
    return env


def make_traffic_junction(**kw: Any) -> BridgeEnv:
    """The flat-vector traffic junction through the flat SMAC adapter, in worker processes.

    Options: `HostTrafficJunction`'s (n_agents, size, arrive_prob, episode_limit, vision,
    collision_penalty, time_penalty, seed), `timeout_as_episode_limit`, bridge options."""
    import inspect

    from envs_jax.bridge.host_traffic_junction import HostTrafficJunction

    bridge, params = _split_options(dict(kw))
    pymarl = bool(params.pop("timeout_as_episode_limit", False))
    allowed = set(inspect.signature(HostTrafficJunction).parameters)
    bad = sorted(set(params) - allowed)
    if bad:
        raise ValueError(f"unknown host_traffic_junction option(s) {bad}; allowed: "
                         f"{sorted(allowed | set(BRIDGE_OPTIONS) | {'timeout_as_episode_limit'})}")
    kwargs = {"env_class": TRAFFIC_JUNCTION_TARGET, "scheme": "flat", "env_kwargs": params,
              "timeout_as_episode_limit": pymarl}
    return BridgeEnv("envs_jax.bridge.smac:smac_host", kwargs, label="host_traffic_junction",
                     **bridge)


__all__ = [
    "SC2MULTIARMY_SIZES",
    "BridgeClosed",
    "BridgeEnv",
    "BridgeError",
    "BridgeState",
    "EnvUnavailableError",
    "MissingDependencyError",
    "WorkerCrashed",
    "WorkerError",
    "WorkerPool",
    "WorkerTimeout",
    "describe_host",
    "make_host_savethecity",
    "make_sc2multiarmy_env",
    "make_smac_env",
    "make_traffic_junction",
    "split_flat",
]
