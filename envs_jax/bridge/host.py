"""What a bridge worker drives: the host-side environment protocol and the entity adapter.

Runs inside worker processes, so it imports numpy only (never JAX).

A *host env* (the `HostEnv` protocol) turns one Python environment into fixed-shape named
numpy arrays: `env_info()` gives the static sizes, `info_spec()` the extra per-step arrays,
`reset(seed)` the observation fields `OBS_FIELDS` and `step(actions)` the observation,
reward, done flag and info. Two adapters produce it from the usual SMAC-style method sets:

* `EntityHost` wraps an entity-scheme env (ALMA/REFIL style): `get_env_info()`,
  `reset(seed=None)`, `step(actions) -> (reward, terminated, info)`, `get_entities()`,
  `get_masks() -> (obs_mask, entity_mask, entity2task_mask, task_mask)`,
  `get_avail_actions()`, `close()` and optionally `info_spec()`.
* `envs_jax.bridge.smac.SmacFlatHost` / `SmacEntityHost` wrap the standard SMAC API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

# Per-env array declaration: name -> (shape without the env axis, numpy dtype name).
Spec = dict[str, tuple[tuple[int, ...], str]]

OBS_FIELDS = ("entities", "avail_actions", "obs_mask", "entity_mask", "entity2task_mask",
              "task_mask")
SIZE_KEYS = ("n_agents", "n_entities", "n_tasks", "n_actions", "entity_dim", "episode_limit")


class HostEnv(Protocol):
    """One host-side environment as fixed-shape named numpy arrays."""

    def env_info(self) -> dict[str, int]: ...

    def info_spec(self) -> Spec: ...

    def reset(self, seed: int) -> dict[str, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]: ...

    def close(self) -> None: ...


def obs_spec(sizes: Mapping[str, int]) -> Spec:
    """Shapes and dtypes of the observation fields for the static sizes `sizes`."""
    na, ne, nt = sizes["n_agents"], sizes["n_entities"], sizes["n_tasks"]
    return {
        "entities": ((ne, sizes["entity_dim"]), "float32"),
        "avail_actions": ((na, sizes["n_actions"]), "int32"),
        "obs_mask": ((ne, ne), "bool"),
        "entity_mask": ((ne,), "bool"),
        "entity2task_mask": ((ne, nt), "bool"),
        "task_mask": ((nt,), "bool"),
    }


def standard_info_spec(n_tasks: int) -> Spec:
    """The info arrays the trainer reads on every step."""
    return {
        "task_rewards": ((n_tasks,), "float32"),
        "tasks_terminated": ((n_tasks,), "bool"),
        "tasks_changed": ((), "bool"),
        "episode_limit": ((), "bool"),
    }


def check_sizes(sizes: Mapping[str, Any]) -> dict[str, int]:
    """The six static sizes as positive Python ints, or a ValueError naming the bad one."""
    out = {}
    for key in SIZE_KEYS:
        if key not in sizes:
            raise ValueError(f"host env_info() lacks {key!r}; it must give {list(SIZE_KEYS)}")
        value = sizes[key]
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise ValueError(f"host env_info()[{key!r}] must be a positive int, got {value!r}")
        out[key] = int(value)
    return out


def conform(name: str, value: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """`value` as an array of exactly `shape` and `dtype`, or a ValueError naming `name`."""
    target = np.dtype(dtype)
    if type(value) is np.ndarray and value.dtype == target and value.shape == tuple(shape):
        return value  # the common case, checked cheaply: it runs per env, field and step
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"host env returned {name!r} with shape {arr.shape}; the bridge declared "
            f"{tuple(shape)} {dtype}"
        )
    if target == np.bool_ and arr.dtype != np.bool_:
        # Masks from SMAC-style envs arrive as 0/1 integers; anything else is a bug upstream.
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"host env returned {name!r} with non-0/1 values for a bool array")
    elif arr.dtype.kind == "f" and target.kind in "iu":
        raise ValueError(f"host env returned floats for the integer array {name!r}")
    return arr.astype(target, copy=False)


def zeros(spec: Spec) -> dict[str, np.ndarray]:
    """A record of zeros for every array of `spec`."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}


class EntityHost:
    """`HostEnv` over an entity-scheme env with SMAC-style getters (see the module doc)."""

    def __init__(self, env: Any):
        self.env = env
        raw = dict(env.get_env_info())
        raw.setdefault("entity_dim", raw.get("entity_shape"))
        self.sizes = check_sizes(raw)
        extra = dict(env.info_spec()) if hasattr(env, "info_spec") else {}
        self._info_spec: Spec = {**standard_info_spec(self.sizes["n_tasks"]), **extra}
        self._obs_spec = obs_spec(self.sizes)

    def env_info(self) -> dict[str, int]:
        return dict(self.sizes)

    def info_spec(self) -> Spec:
        return dict(self._info_spec)

    def _obs(self) -> dict[str, np.ndarray]:
        obs_mask, entity_mask, e2t, task_mask = self.env.get_masks()
        raw = {
            "entities": self.env.get_entities(),
            "avail_actions": self.env.get_avail_actions(),
            "obs_mask": obs_mask,
            "entity_mask": entity_mask,
            "entity2task_mask": e2t,
            "task_mask": task_mask,
        }
        return {k: conform(k, raw[k], *self._obs_spec[k]) for k in OBS_FIELDS}

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self.env.reset(seed=seed)
        return self._obs()

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        reward, terminated, info = self.env.step(actions)
        return self._obs(), float(reward), bool(terminated), dict(info)

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        # host-side extras (get_stats, state access in tests) reach the wrapped env
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


class NullHost:
    """A host env that does no work: zero observations, fixed-length episodes.

    Measures what the bridge itself costs per batched step (benchmarks/bridge_overhead.py).
    """

    def __init__(self, n_agents: int = 5, n_entities: int = 11, n_tasks: int = 6,
                 n_actions: int = 12, entity_dim: int = 58, episode_limit: int = 150):
        self.sizes = check_sizes({"n_agents": n_agents, "n_entities": n_entities,
                                  "n_tasks": n_tasks, "n_actions": n_actions,
                                  "entity_dim": entity_dim, "episode_limit": episode_limit})
        self.obs = zeros(obs_spec(self.sizes))
        self.obs["avail_actions"][:, 0] = 1
        self.info = zeros(standard_info_spec(n_tasks))
        self.t = 0

    def env_info(self) -> dict[str, int]:
        return dict(self.sizes)

    def info_spec(self) -> Spec:
        return standard_info_spec(self.sizes["n_tasks"])

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self.t = 0
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        self.t += 1
        return self.obs, 0.0, self.t >= self.sizes["episode_limit"], self.info

    def close(self) -> None:
        pass


def entity_host(env_class: Any, **kwargs: Any) -> EntityHost:
    """Worker factory: build the entity env `env_class` (class or "module:attr"), wrap it."""
    if isinstance(env_class, str):
        from envs_jax.bridge.workers import load_target

        env_class = load_target(env_class)
    return EntityHost(env_class(**kwargs))


__all__ = [
    "OBS_FIELDS",
    "SIZE_KEYS",
    "EntityHost",
    "HostEnv",
    "NullHost",
    "Spec",
    "check_sizes",
    "conform",
    "entity_host",
    "obs_spec",
    "standard_info_spec",
    "zeros",
]
