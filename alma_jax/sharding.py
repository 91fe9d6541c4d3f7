"""Several devices: one `jax.sharding.Mesh` axis ('data') and GSPMD-sharded `jit`.

`alma_jax.train.run` uses this module when more than one device is visible; with one device
nothing here runs and the run is exactly the single-device one. The configuration does not
change with the device count: the plan is chosen from `num_seeds`, `num_envs`, `batch_size`
and the number of devices.

Two schemes, both on a 1-D mesh whose axis `AXIS` spans every visible device:

- `"seeds"` (when `num_seeds` is a multiple of the device count): the leading seed axis of
  every `TrainState` leaf, of the chunk's metrics and of the evaluation keys is sharded, and
  the seed-vmapped functions run under `shard_map`, so each device runs the single-device
  program on its own whole seeds (parameters, optimiser states and replay buffers of a seed
  live on one device) with no collective communication.
- `"envs"` (otherwise): the train state is replicated on every device (parameters, optimiser,
  replay buffer, keys). Inside the chunk, `make_train(cfg, mesh=...)` constrains the
  environment axis of every batched env reset / step (keys, env state, actions,
  observations) and the window-batch axis of every replay update to be sharded over `AXIS`
  (`with_sharding_constraint`); XLA's SPMD partitioner then splits the environments and the
  loss over the devices and all-reduces the gradients, so every device applies the same
  averaged update to its parameter copy. Needs `num_envs` (and, for replay updates,
  `batch_size`) divisible by the device count.

Multi-host: every process (one per host, same configuration and command line) calls
`jax.distributed.initialize()` before anything touches a device (`init_distributed_from_env`
does it for `python -m alma_jax.train`); `jax.devices()` then lists the devices of all hosts
and the same plan spans them. `fetch` gathers shards that live on other processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alma_jax.config import Config, ConfigError

AXIS = "data"
SCHEMES = ("seeds", "envs")
# Host-side envs step through an ordered io_callback, which XLA runs on one device only.
BRIDGE_ENVS = ("host_savethecity", "host_traffic_junction", "smac", "sc2multiarmy")


class ShardingError(ConfigError):
    """The configuration cannot be split over the visible devices."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh with axis `AXIS` over `devices` (default: every visible device, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def _on_policy(cfg: Config) -> bool:
    # LICA trains on the rollout's own episodes (batch = num_envs), not on sampled windows.
    return cfg.low_learner == "lica"


def choose_scheme(cfg: Config, n_devices: int, scheme: str | None = None) -> str:
    """The scheme for `n_devices` (see the module docstring); ShardingError if none applies.

    `scheme` forces one ("seeds" or "envs"), e.g. to compare them; None picks "seeds" when
    `num_seeds` divides evenly and "envs" otherwise.
    """
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}; choose one of {list(SCHEMES)} or None")
    if cfg.env in BRIDGE_ENVS:
        raise ShardingError(
            f"env={cfg.env!r} steps host environments through an ordered io_callback, which "
            f"runs on one device, but {n_devices} devices are visible; make one visible "
            "(e.g. CUDA_VISIBLE_DEVICES=0, or JAX_PLATFORMS=cpu without "
            "--xla_force_host_platform_device_count)")
    seeds_ok = cfg.num_seeds % n_devices == 0
    if scheme is None and seeds_ok:
        return "seeds"
    if scheme == "seeds":
        if not seeds_ok:
            raise ShardingError(
                f"scheme 'seeds' needs num_seeds={cfg.num_seeds} to be a multiple of the "
                f"device count {n_devices}")
        return "seeds"
    bad = []
    if cfg.num_envs % n_devices:
        bad.append(f"num_envs={cfg.num_envs}")
    windows = not _on_policy(cfg) or cfg.allocation == "aql"
    if windows and cfg.batch_size % n_devices:
        bad.append(f"batch_size={cfg.batch_size}")
    if bad:
        raise ShardingError(
            f"cannot split this run over {n_devices} devices: either num_seeds="
            f"{cfg.num_seeds} must be a multiple of {n_devices} (each device runs whole "
            f"seeds), or {' and '.join(bad)} must be (the environments and window batches "
            f"are split); change them or the number of visible devices")
    return "envs"


@dataclass(frozen=True)
class Plan:
    """How a run is laid out on the devices of `mesh` (see the module docstring)."""

    mesh: Mesh
    scheme: str

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def state(self) -> NamedSharding:
        """Sharding of every TrainState leaf (leading seed axis), of metrics and eval keys."""
        spec = PartitionSpec(AXIS) if self.scheme == "seeds" else PartitionSpec()
        return NamedSharding(self.mesh, spec)

    @property
    def trainer_mesh(self) -> Mesh | None:
        """The mesh `make_train` constrains the env / window axes on (None: no constraint)."""
        return self.mesh if self.scheme == "envs" else None

    def seeds_per_device(self, num_seeds: int) -> int:
        """Seeds whose replay buffers one device holds (memory checks)."""
        return num_seeds // self.n_devices if self.scheme == "seeds" else num_seeds

    def put(self, tree: Any) -> Any:
        """Place host or single-device arrays with the state sharding (all processes)."""
        return jax.device_put(tree, self.state)

    def abstract(self, tree: Any) -> Any:
        """`jax.eval_shape` output with the state sharding attached (orbax restores into it)."""
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.state), tree)

    def _per_device(self, fn: Callable, n_args: int) -> Callable:
        """`vmap(fn)` over seeds; under "seeds", a `shard_map` of it over the seed axis.

        With GSPMD alone XLA gathers the seed axis for some ops (e.g. the replay sampler's
        top_k); shard_map runs the single-device program on each device's own seeds instead.
        """
        batched = jax.vmap(fn)
        if self.scheme != "seeds":
            return batched
        spec = PartitionSpec(AXIS)
        # Every input and output is split by seed, nothing is claimed replicated, so the
        # varying-axes check (which rejects the trainer's scans' unannotated carries) has
        # nothing to verify.
        return jax.shard_map(batched, mesh=self.mesh, in_specs=(spec,) * n_args,
                             out_specs=spec, check_vma=False)

    def jitted(self, fns: Any) -> tuple[Callable, Callable, Callable]:
        """The seed-vmapped `init`, `chunk` (state donated) and `evaluate` as `jax.jit`
        objects with this plan's shardings (inputs must already carry them; `.lower()`
        works for ahead-of-time compiles)."""
        sh = self.state
        init = jax.jit(self._per_device(fns.init, 1), in_shardings=sh, out_shardings=sh)
        chunk = jax.jit(self._per_device(fns.chunk, 1), in_shardings=sh,
                        out_shardings=(sh, sh), donate_argnums=0)
        evaluate = jax.jit(self._per_device(fns.evaluate, 2), in_shardings=(sh, sh),
                           out_shardings=sh)
        return init, chunk, evaluate

    def jit(self, fns: Any) -> tuple[Callable, Callable, Callable]:
        """Seed-vmapped `init`, `chunk` (state donated) and `evaluate`, jitted with shardings.

        Same call signatures as the single-device versions in `alma_jax.train.run`.
        """
        init, chunk, evaluate = self.jitted(fns)

        def init_fn(keys: jax.Array) -> Any:
            return init(self.put(keys))

        def evaluate_fn(state: Any, keys: jax.Array) -> Any:
            return evaluate(state, self.put(keys))

        return init_fn, chunk, evaluate_fn


def make_plan(cfg: Config, devices: Sequence[jax.Device] | None = None,
              scheme: str | None = None) -> Plan | None:
    """The plan for `devices` (default: all visible); None for a single device."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1:
        if scheme is not None:
            raise ValueError(f"scheme={scheme!r} needs more than one device")
        return None
    return Plan(make_mesh(devices), choose_scheme(cfg, len(devices), scheme))


def restore_target(abstract: Any, plan: Plan | None) -> Any:
    """`abstract` (from `jax.eval_shape`) with the shardings to restore a checkpoint into.

    Orbax otherwise reuses the shardings saved in the checkpoint, which name the devices of
    the run that wrote it and fail on another device count.
    """
    if plan is not None:
        return plan.abstract(abstract)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
                        abstract)


def batch_constraint(mesh: Mesh | None) -> Callable[[Any], Any]:
    """`tree -> tree` pinning the leading axis of every array leaf to `AXIS` (None: identity).

    Used inside the seed-vmapped trainer functions, where the leading axis of a rollout or
    window leaf is the env or batch axis; vmap leaves the seed axis unconstrained.
    """
    if mesh is None:
        return lambda tree: tree
    sharded = NamedSharding(mesh, PartitionSpec(AXIS))

    def constrain(x: Any) -> Any:
        if getattr(x, "ndim", 0) < 1:
            return x
        return jax.lax.with_sharding_constraint(x, sharded)

    return lambda tree: jax.tree.map(constrain, tree)


class ShardedEnv:
    """An env whose batched reset / step keep the env axis sharded over the mesh.

    Constraining inputs and outputs of every batched step (inside the rollout's `lax.scan`)
    keeps the whole env loop split by environment instead of leaving the layout to XLA's
    propagation through the loop. Every other attribute is the wrapped env's.
    """

    def __init__(self, env: Any, mesh: Mesh):
        self._env = env
        self._constrain = batch_constraint(mesh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def reset_batch(self, keys: jax.Array) -> Any:
        return self._constrain(self._env.reset_batch(self._constrain(keys)))

    def step_batch(self, keys: jax.Array, state: Any, actions: jax.Array,
                   avail: jax.Array | None = None) -> Any:
        keys, state, actions, avail = self._constrain((keys, state, actions, avail))
        return self._constrain(self._env.step_batch(keys, state, actions, avail))


def fetch(x: Any) -> np.ndarray:
    """One array to host numpy; gathers shards of other processes (multi-host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def describe(plan: Plan | None) -> str:
    """One line for the run's start-up output."""
    if plan is None:
        return f"devices: 1 ({jax.devices()[0].platform})"
    what = ("whole seeds per device (seed axis sharded)" if plan.scheme == "seeds" else
            "environments and window batches split, parameters replicated")
    hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return (f"devices: {plan.n_devices} {plan.mesh.devices.flat[0].platform}{hosts}, "
            f"scheme {plan.scheme!r}: {what}")


def init_distributed_from_env() -> bool:
    """`jax.distributed.initialize()` when `ALMA_JAX_DISTRIBUTED=1`; True if it was called.

    JAX finds the coordinator, process count and process id itself on SLURM, Open MPI and
    TPU pods; elsewhere set `JAX_COORDINATOR_ADDRESS=host:port` (read by JAX) with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (read here). Must run before any device is used.
    """
    if os.environ.get("ALMA_JAX_DISTRIBUTED", "0") in ("", "0"):
        return False
    kw = {}
    for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(var):
            kw[arg] = int(os.environ[var])
    jax.distributed.initialize(**kw)
    return True
