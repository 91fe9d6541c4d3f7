"""A host-side Python environment behind one ordered `io_callback` per batched call.

`BridgeEnv` is an `envs_jax.core.Environment` whose `reset_batch` / `step_batch` send the
whole batch of E environments to a `WorkerPool` through a single ordered
`jax.experimental.io_callback` and get back arrays whose shapes and dtypes were declared when
the env was made. It therefore runs eagerly, under `jax.jit` and inside `lax.scan`, and the
trainer's rollout uses it unchanged.

* **State.** The real environments live in the workers; the traced state is a `BridgeState`
  holding each env's step count, so the rollout's per-env selections work on it.
* **vmap.** The callback itself is never vmapped: a `custom_vmap` rule folds the vmapped axes
  into the env axis, so `vmap` over S seeds of a batch of E is ONE callback over S*E host
  environments (the pool grows to S*E env slots). This is what the trainer's seed `vmap` (also
  with num_seeds=1) and its single-env `reset` in `init` produce. Under vmap the reset keys
  must be vmapped too (they are whenever they derive from the vmapped seed key): a reset
  with keys shared by all vmapped elements runs once, like any unbatched computation.
* **Slots.** Every batch size shares the pool: a reset of N envs uses env slots 0..N-1. An
  episode (reset_batch, then step_batch calls) must not be interleaved with a reset of the
  same BridgeEnv elsewhere; the rollout never does (each rollout starts with its own reset).
* **Errors.** A worker error, crash or timeout closes the pool and raises a `BridgeError`
  whose text holds the worker's traceback (under `jit` it surfaces as a
  `jax.errors.JaxRuntimeError` with that text; `env.last_error` keeps the original).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import io_callback

from envs_jax.bridge.host import OBS_FIELDS, check_sizes, standard_info_spec
from envs_jax.bridge.smac import split_flat
from envs_jax.bridge.workers import BridgeError, WorkerPool, load_target, probe, record_spec
from envs_jax.core import Environment, Observation

NON_INFO = (*OBS_FIELDS, "reward", "done", "t")


@struct.dataclass
class BridgeState:
    """Traced state of host environments: the step count of each env's episode."""

    t: jax.Array  # [E] int32


def describe_host(target: str, kwargs: Mapping | None = None, where: str = "parent",
                  timeout: float = 300.0) -> tuple[dict, dict]:
    """(env_info, info_spec) of a host env, built here (`where='parent'`) or in a worker."""
    kwargs = dict(kwargs or {})
    if where == "worker":
        return probe(target, kwargs, timeout)
    if where != "parent":
        raise ValueError(f"where must be 'parent' or 'worker', got {where!r}")
    env = load_target(target)(**kwargs)
    try:
        return dict(env.env_info()), dict(env.info_spec())
    finally:
        env.close()


def _raw_keys(keys: jax.Array) -> jax.Array:
    """Key words as a [E, W] uint32 array (typed keys are unwrapped)."""
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    return jnp.asarray(keys).astype(jnp.uint32)


def _seeds(words: np.ndarray) -> list[int]:
    """One Python int per env from its key words (distinct keys give distinct seeds)."""
    words = np.asarray(words, np.uint32).reshape(len(words), -1)
    return [int.from_bytes(row.astype(">u4").tobytes(), "big") for row in words]


class BridgeEnv(Environment):
    """A batched env whose environments run in host worker processes (see the module doc).

    `target` ("module:factory" or "file.py:factory") with `kwargs` builds one `HostEnv`
    (envs_jax.bridge.host) in a worker; `describe` says where it is built once up front to
    read the static sizes and info arrays ('parent' for cheap numpy envs, 'worker' to keep
    e.g. SMAC's imports out of this process). Workers start at the first reset (or
    `start()`); `timeout` bounds each step, `reset_timeout` the start and each reset;
    `on_error` is 'raise' (stop the run) or 'restart' (replace the env, end its episode with
    `info["env_error"]`). A known `env_info=(sizes, info_spec)` skips the description.
    """

    def __init__(
        self,
        target: str,
        kwargs: Mapping | None = None,
        *,
        n_workers: int = 1,
        timeout: float = 60.0,
        reset_timeout: float = 300.0,
        on_error: str = "raise",
        describe: str = "parent",
        label: str | None = None,
        env_info: tuple[dict, dict] | None = None,
    ):
        self.target = target
        self.kwargs = dict(kwargs or {})
        self.label = label or str(target).rpartition(":")[2]
        info, info_spec = env_info or describe_host(target, self.kwargs, describe, reset_timeout)
        self.host_info = dict(info)
        sizes = check_sizes(info)
        self.n_agents = sizes["n_agents"]
        self.n_entities = sizes["n_entities"]
        self.n_tasks = sizes["n_tasks"]
        self.n_actions = sizes["n_actions"]
        self.entity_dim = sizes["entity_dim"]
        self.episode_limit = sizes["episode_limit"]
        self.info_spec = {k: (tuple(s), str(d)) for k, (s, d) in dict(info_spec).items()}
        # the rollout reads these on every step
        for key, want in standard_info_spec(self.n_tasks).items():
            if self.info_spec.get(key) != want:
                raise ValueError(f"host env {target!r} must declare info {key!r} as {want}; "
                                 f"it declares {self.info_spec.get(key)}")
        self.spec = record_spec(self.host_info, self.info_spec)
        self.fields = tuple(self.spec)
        self.pool = WorkerPool(
            target, self.kwargs, expected={"sizes": self.host_info, "info_spec": self.info_spec},
            n_workers=n_workers, timeout=timeout, reset_timeout=reset_timeout,
            on_error=on_error, label=self.label,
        )
        self.last_error: BaseException | None = None
        self._reset_call = self._batched_call("reset")
        self._step_call = self._batched_call("step")

    # ------------------------------------------------------------------ the callback
    def _host(self, kind: str, arg: np.ndarray, *unused: np.ndarray) -> tuple[np.ndarray, ...]:
        try:
            if kind == "reset":
                out = self.pool.reset(_seeds(arg))
            else:
                out = self.pool.step(np.asarray(arg))
        except BridgeError as err:
            self.last_error = err
            raise
        n = len(arg)
        for name in self.fields:
            shape, dtype = self.spec[name]
            if out[name].shape != (n, *shape) or out[name].dtype != dtype:
                # XLA would fail far less legibly on a mismatch
                raise BridgeError(f"bridge output {name!r} is {out[name].dtype}"
                                  f"{list(out[name].shape)}, declared {dtype}{[n, *shape]}")
        return tuple(out[name] for name in self.fields)

    def _batched_call(self, kind: str):
        host = partial(self._host, kind)
        spec = [self.spec[name] for name in self.fields]

        @jax.custom_batching.custom_vmap
        def call(*args: jax.Array) -> tuple[jax.Array, ...]:
            n = args[0].shape[0]
            shapes = tuple(jax.ShapeDtypeStruct((n, *shape), np.dtype(dtype))
                           for shape, dtype in spec)
            return io_callback(host, shapes, *args, ordered=True)

        @call.def_vmap
        def fold_vmapped_axis(axis_size: int, in_batched: Any, *args: jax.Array):
            # An ordered callback cannot be vmapped; one bigger batch is the same work.
            args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                    for a, b in zip(args, in_batched)]
            outs = call(*(a.reshape((axis_size * a.shape[1], *a.shape[2:])) for a in args))
            outs = tuple(o.reshape((axis_size, -1, *o.shape[1:])) for o in outs)
            return outs, tuple(True for _ in outs)

        return call

    def _unpack(self, outs: tuple[jax.Array, ...]):
        d = dict(zip(self.fields, outs))
        obs = Observation(**{k: d[k] for k in OBS_FIELDS})
        info = {k: v for k, v in d.items() if k not in NON_INFO}
        return obs, BridgeState(t=d["t"]), d["reward"], d["done"], info

    # ------------------------------------------------------------- batched interface
    def reset_batch(self, keys: jax.Array) -> tuple[Observation, BridgeState]:
        """Reset E host envs: keys [E] (typed) or [E, 2] -> (obs [E, ...], BridgeState)."""
        words = _raw_keys(keys)
        if words.ndim != 2:
            raise ValueError(f"reset_batch wants one key per env, got keys of shape "
                             f"{keys.shape}")
        obs, state, _, _, _ = self._unpack(self._reset_call(words))
        return obs, state

    def step_batch(self, keys: jax.Array, state: BridgeState, actions: jax.Array,
                   avail=None):
        """Step the E host envs of the last reset (keys unused: host envs own their RNG).

        Returns (obs, state, reward [E] f32, done [E] bool, info); finished envs idle.
        """
        del keys
        actions = jnp.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != self.n_agents:
            raise ValueError(f"actions must be [E, {self.n_agents}], got {actions.shape}")
        # The step count rides along although the host ignores it: custom_vmap runs its
        # rule only for batched inputs, and the state is batched whenever the reset was, so
        # a step under vmap with shared actions still steps every vmapped batch.
        return self._unpack(self._step_call(actions.astype(jnp.int32),
                                            jnp.asarray(state.t, jnp.int32)))

    # ------------------------------------------------------- single-env conveniences
    def reset(self, key: jax.Array, **options: Any) -> tuple[Observation, BridgeState]:
        """One host env (a batch of one; under vmap, one per vmapped element)."""
        if options:
            raise ValueError(f"reset options {sorted(options)} are not supported by host envs")
        obs, state = self.reset_batch(key[None])
        return jax.tree.map(lambda x: x[0], (obs, state))

    def step_env(self, key: jax.Array, state: BridgeState, actions: jax.Array):
        """One transition of a single host env reset with `reset` (a batch of one)."""
        out = self.step_batch(key[None], jax.tree.map(lambda x: x[None], state), actions[None])
        return jax.tree.map(lambda x: x[0], out)

    def get_obs(self, state: BridgeState) -> Observation:
        raise NotImplementedError("a host env's observation lives in its worker: use the obs "
                                  "returned by reset_batch / step_batch")

    def step(self, key: jax.Array, state: BridgeState, actions: jax.Array):
        raise NotImplementedError("host envs do not auto-reset inside a step: call "
                                  "reset_batch to start the next episodes")

    def split_flat(self, entities: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Flat-scheme envs (SMAC flat, traffic junction): entities [..., A+1, D] ->
        (agent observations [..., A, obs_dim], global state [..., state_dim])."""
        if "obs_dim" not in self.host_info:
            raise ValueError(f"{self!r} is not a flat-scheme env")
        return split_flat(entities, self.n_agents, self.host_info["obs_dim"],
                          self.host_info["state_dim"])

    # ---------------------------------------------------------------- host-side only
    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (empty before the first reset)."""
        return self.pool.pids

    def start(self) -> BridgeEnv:
        """Spawn the workers now instead of at the first reset."""
        self.pool.start()
        return self

    def stats(self) -> list[dict]:
        """Per worker: env errors survived (on_error='restart'), their tracebacks and each
        host env's get_stats(). Host-side only; call outside jit."""
        return self.pool.stats()

    def close(self) -> None:
        """Stop the workers (idempotent); the env cannot be used afterwards."""
        self.pool.close()

    def __enter__(self) -> BridgeEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BridgeEnv({self.target!r}, workers={self.pool.n_workers}, "
                f"agents={self.n_agents}, entities={self.n_entities}, tasks={self.n_tasks})")


__all__ = ["BridgeEnv", "BridgeState", "describe_host"]
