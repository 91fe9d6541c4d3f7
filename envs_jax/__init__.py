"""Pure-JAX multi-agent environments with the entity scheme used by alma-jax."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace
from typing import Any

from envs_jax.core import Environment, Observation

ENVIRONMENTS = ("savethecity", "traffic_junction", "starcraft_jax", "multiarmy_jax",
                "host_savethecity",
                "host_traffic_junction", "smac", "sc2multiarmy")


def _savethecity(**kw: Any) -> Environment:
    from envs_jax.savethecity.env import GameConfig, RewardConfig, SaveTheCity, SaveTheCityParams

    params = SaveTheCityParams()
    sub = {"game": GameConfig, "reward": RewardConfig}
    allowed = {f.name for f in fields(SaveTheCityParams)}
    for key, value in kw.items():
        if key in sub:
            if isinstance(value, dict):
                names = {f.name for f in fields(sub[key])}
                bad = sorted(set(value) - names)
                if bad:
                    raise ValueError(
                        f"unknown savethecity {key} option(s) {bad}; allowed: {sorted(names)}"
                    )
                value = replace(getattr(params, key), **value)
            params = replace(params, **{key: value})
        elif key in allowed:
            params = replace(params, **{key: value})
        else:
            raise ValueError(
                f"unknown savethecity option {key!r}; allowed: {sorted(allowed)}"
            )
    return SaveTheCity(params)


def _checked(name: str, cls: type, kwargs: dict[str, Any]) -> Environment:
    """cls(**kwargs), naming the allowed options when one is unknown."""
    allowed = sorted(inspect.signature(cls).parameters)
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ValueError(f"unknown {name} option(s) {bad}; allowed: {allowed}")
    return cls(**kwargs)


def make(name: str, **kwargs: Any) -> Environment:
    """Build an environment by name, e.g. `make("savethecity", scenario="2-5a_2-5b")`."""
    if name == "savethecity":
        return _savethecity(**kwargs)
    # host-side envs behind the callback bridge (envs_jax.bridge); imported on demand
    if name in ("host_savethecity", "host_traffic_junction", "smac", "sc2multiarmy"):
        from envs_jax import bridge

        return {"host_savethecity": bridge.make_host_savethecity,
                "host_traffic_junction": bridge.make_traffic_junction,
                "smac": bridge.make_smac_env,
                "sc2multiarmy": bridge.make_sc2multiarmy_env}[name](**kwargs)
    if name in ("starcraft_jax", "multiarmy_jax"):
        from envs_jax.starcraft import MultiArmyJax, StarCraftJax

        return _checked(name, StarCraftJax if name == "starcraft_jax" else MultiArmyJax, kwargs)
    if name == "traffic_junction":
        from envs_jax.traffic_junction import TrafficJunction

        return TrafficJunction(**kwargs)
    raise ValueError(f"unknown environment {name!r}; allowed: {list(ENVIRONMENTS)}")


__all__ = ["ENVIRONMENTS", "Environment", "Observation", "make"]
