"""Worker processes that own the host-side environments of a bridge env.

Parent side (`WorkerPool`): W spawned processes; env slot `i` of a batch of N lives in worker
`i % W`, so every prefix of slots is spread evenly. Each request goes to all workers at once
and their replies are gathered with one deadline. A worker that replies with an error, dies or
misses the deadline stops the whole pool: every worker is terminated (then killed) and a
`BridgeError` carrying the worker's traceback (for a hang: the stack faulthandler dumps on
SIGUSR1) is raised. Pools are also closed by `close()`, by `atexit`, and by the workers
themselves when their parent disappears.

Worker side (`serve`): started through `_spawn_entry.py` so that it never imports JAX; it
imports numpy, this module and the host env's module only. It keeps finished environments
idle (their steps return the last observation, reward 0, done True) until the next reset.

Only the standard library and numpy are imported here.
"""

from __future__ import annotations

import atexit
import faulthandler
import hashlib
import importlib
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.util  # noqa: F401  (registers its atexit hook before ours: ours runs first)
import os
import runpy
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ENTRY = str(Path(__file__).resolve().with_name("_spawn_entry.py"))
WORKER_RUN_NAME = "__alma_bridge_worker__"
ON_ERROR = ("raise", "restart")


def load_file_module(name: str, file: str | Path, package_dir: str | Path | None = None
                     ) -> types.ModuleType:
    """Execute `file` as module `name`, registered in `sys.modules` (dataclasses, pickling and
    relative imports look modules up there); `package_dir` makes it a package whose
    submodules are found in that folder. A module that fails to execute is unregistered."""
    spec = importlib.util.spec_from_file_location(
        name, file,
        submodule_search_locations=[str(package_dir)] if package_dir is not None else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class BridgeError(RuntimeError):
    """The host side of a bridge env failed; the run cannot go on."""


class WorkerError(BridgeError):
    """A worker raised; the message holds its traceback."""


class WorkerCrashed(BridgeError):
    """A worker process died without answering."""


class WorkerTimeout(BridgeError):
    """A worker did not answer in time; the message holds its stack at the deadline."""


class BridgeClosed(BridgeError):
    """The pool was closed (explicitly or after an earlier failure)."""


# ---------------------------------------------------------------------------- shared helpers
def load_target(target: str | Callable) -> Callable:
    """Resolve "package.module:attr" or "/path/to/file.py:attr" to the object it names."""
    if callable(target):
        return target
    module_name, sep, attr = str(target).rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"host env target must look like 'module:attr' or 'file.py:attr', "
                         f"got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"host env file {str(path)!r} does not exist")
        # One private module name per file (the same in every process): dataclasses and
        # pickling look classes up in sys.modules by their module's name.
        name = "_alma_host_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]
        module = sys.modules.get(name)
        if module is None:
            module = load_file_module(name, path)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"{module_name!r} has no attribute {attr!r}") from None


def record_spec(sizes: Mapping[str, int], info_spec: Mapping) -> dict:
    """Every array a reset or step returns per env: observation, reward, done, t, info."""
    from envs_jax.bridge.host import obs_spec

    spec = dict(obs_spec(sizes))
    spec["reward"] = ((), "float32")
    spec["done"] = ((), "bool")
    spec["t"] = ((), "int32")
    for name, (shape, dtype) in info_spec.items():
        if name in spec:
            raise ValueError(f"info key {name!r} clashes with a bridge output of that name")
        spec[name] = (tuple(shape), str(dtype))
    spec["env_error"] = ((), "bool")
    return spec


# ------------------------------------------------------------------------------ worker side
class _Slot:
    """One host environment and what an idle step of it returns."""

    def __init__(self, env: Any):
        self.env = env
        self.done = True
        self.t = 0
        self.last: dict[str, np.ndarray] | None = None  # views of its last output row


class _Runner:
    """The worker's environments and the commands the parent sends."""

    def __init__(self, target: str, kwargs: dict, expected: dict | None, on_error: str):
        self.factory = load_target(target)
        self.kwargs = dict(kwargs)
        self.on_error = on_error
        self.slots: dict[int, _Slot] = {}
        self.active: list[int] = []
        self.spare: Any = None
        self.errors = 0
        self.error_log: list[str] = []
        self.sizes: dict | None = None
        self.spec: dict | None = None
        if expected is not None:
            self._declare(expected["sizes"], expected["info_spec"])

    def _declare(self, sizes: dict, info_spec: dict) -> None:
        self.sizes = {k: int(v) for k, v in sizes.items()}
        self.info_spec = {k: (tuple(s), str(d)) for k, (s, d) in info_spec.items()}
        self.spec = record_spec(self.sizes, self.info_spec)

    def _new_env(self) -> Any:
        env = self.factory(**self.kwargs)
        sizes = dict(env.env_info())
        info_spec = {k: (tuple(s), str(d)) for k, (s, d) in dict(env.info_spec()).items()}
        if self.spec is None:
            self._declare(sizes, info_spec)
        elif sizes != self.sizes or info_spec != self.info_spec:
            raise ValueError(
                "host env does not match the bridge's declaration: "
                f"declared {self.sizes} {self.info_spec}, got {sizes} {info_spec}"
            )
        return env

    def _slot(self, i: int) -> _Slot:
        if i not in self.slots:
            env, self.spare = (self.spare, None) if self.spare is not None else (
                self._new_env(), None)
            self.slots[i] = _Slot(env)
        return self.slots[i]

    def _buffers(self, n: int) -> dict[str, np.ndarray]:
        # Rows are written in place: stacking per-env records cost more than the envs'
        # own work for cheap envs. Fields a step leaves out (e.g. SMAC's episode_limit)
        # keep these zeros.
        return {name: np.zeros((n, *shape), dtype) for name, (shape, dtype) in self.spec.items()}

    def _write(self, out: dict, k: int, obs: Mapping, reward: float, done: bool, t: int,
               info: Mapping, env_error: bool = False) -> dict[str, np.ndarray]:
        """Fill row k of `out`; returns the row (views) for the env's idle steps."""
        from envs_jax.bridge.host import conform

        for name, (shape, dtype) in self.spec.items():
            src = obs if name in obs else info if name in info else None
            if src is not None:
                out[name][k] = conform(name, src[name], shape, dtype)
        out["reward"][k] = reward
        out["done"][k] = done
        out["t"][k] = t
        out["env_error"][k] = env_error
        return {name: buf[k] for name, buf in out.items()}

    def _write_idle(self, out: dict, k: int, slot: _Slot, env_error: bool = False) -> None:
        """Row k repeats the env's last row with reward 0, done, and no new task rewards."""
        for name, buf in out.items():
            buf[k] = slot.last[name]
        out["reward"][k] = 0.0
        out["done"][k] = True
        out["env_error"][k] = env_error
        if "task_rewards" in out:
            out["task_rewards"][k] = 0.0
        if "tasks_changed" in out:
            out["tasks_changed"][k] = False

    def _note_error(self, slot: _Slot) -> None:
        """Replace a failed env by a fresh one (on_error='restart'), keeping the traceback."""
        self.errors += 1
        self.error_log = (self.error_log + [traceback.format_exc()])[-8:]
        try:
            slot.env.close()
        except Exception:
            pass
        slot.env = self._new_env()

    def cmd_describe(self) -> tuple[dict, dict]:
        if self.spare is None:
            self.spare = self._new_env()
        return dict(self.sizes), dict(self.info_spec)

    def cmd_reset(self, slots: list[int], seeds: list[int]) -> dict[str, np.ndarray]:
        self.active = []
        out = self._buffers(len(slots))
        for k, (i, seed) in enumerate(zip(slots, seeds)):
            slot = self._slot(i)
            try:
                obs = slot.env.reset(int(seed))
            except Exception:
                if self.on_error != "restart":
                    raise
                self._note_error(slot)
                obs = slot.env.reset(int(seed))  # a second failure is not recoverable
            slot.last = self._write(out, k, obs, 0.0, False, 0, {})
            slot.done, slot.t = False, 0
            self.active.append(i)
        return out

    def cmd_step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        if len(actions) != len(self.active):
            raise ValueError(f"step got actions for {len(actions)} envs but the last reset "
                             f"started {len(self.active)} in this worker")
        out = self._buffers(len(self.active))
        for k, (i, act) in enumerate(zip(self.active, actions)):
            slot = self.slots[i]
            if slot.done:
                self._write_idle(out, k, slot)
                continue
            try:
                obs, reward, done, info = slot.env.step(np.asarray(act))
            except Exception:
                if self.on_error != "restart":
                    raise
                self._note_error(slot)
                # B.7: the episode ends here, flagged, instead of stopping the run
                self._write_idle(out, k, slot, env_error=True)
                slot.done = True
                slot.last = {name: buf[k] for name, buf in out.items()}
                continue
            slot.t += 1
            slot.last = self._write(out, k, obs, reward, done, slot.t, info,
                                    env_error=bool(info.get("env_error", False)))
            slot.done = bool(done)
        return out

    def cmd_stats(self) -> dict:
        env_stats = []
        for i in sorted(self.slots):
            get = getattr(self.slots[i].env, "get_stats", None)
            env_stats.append(get() if callable(get) else None)
        return {"env_errors": self.errors, "error_log": list(self.error_log),
                "env_stats": env_stats, "pid": os.getpid()}

    def close(self) -> None:
        envs = [s.env for s in self.slots.values()] + ([self.spare] if self.spare else [])
        self.slots, self.spare = {}, None
        for env in envs:
            try:
                env.close()
            except Exception:
                pass


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (killed without running its cleanup)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                # SIGTERM lets the main thread close its envs (game processes) first
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5.0)
                os._exit(1)

    threading.Thread(target=watch, name="alma-bridge-parent-watch", daemon=True).start()


def serve(conn: Any, target: str, kwargs: dict, expected: dict | None, on_error: str,
          err_path: str, parent_pid: int) -> None:
    """Worker main loop: answer ("ok", result) or ("error", traceback) to each command."""
    # Ctrl-C reaches the whole process group: the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    err_file = open(err_path, "w")  # stays open: faulthandler writes to it
    faulthandler.enable(err_file, all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=err_file, all_threads=True)
    _watch_parent(parent_pid)
    runner = None
    try:
        try:
            runner = _Runner(target, kwargs, expected, on_error)
        except Exception:
            conn.send(("error", traceback.format_exc()))
        else:
            conn.send(("ok", "ready"))
        while runner is not None:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "close":
                break
            try:
                reply = ("ok", getattr(runner, "cmd_" + msg[0])(*msg[1:]))
            except Exception:
                reply = ("error", traceback.format_exc())
            try:
                conn.send(reply)
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        if runner is not None:
            runner.close()


# ------------------------------------------------------------------------------ parent side
# Strong references: an open pool must stay reachable for the atexit cleanup.
_LIVE: set = set()


def _close_all() -> None:
    for pool in list(_LIVE):
        pool.close()


atexit.register(_close_all)


_SPAWN_LOCK = threading.Lock()


def _start_without_main(proc: Any) -> None:
    """Start a spawn-context process without re-running the parent's `__main__` in it.

    Spawn normally re-imports the parent's main module in the child. The worker needs
    nothing from it, and importing it would pull JAX (e.g. `python -m alma_jax.train`) into
    every worker, or re-run an unguarded script. The stdlib offers no per-process switch, so
    the preparation data is filtered while this one process starts.
    """
    from multiprocessing import spawn

    with _SPAWN_LOCK:
        original = spawn.get_preparation_data

        def without_main(name: str) -> dict:
            data = original(name)
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            proc.start()
        finally:
            spawn.get_preparation_data = original


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """`n_workers` spawned processes holding the host envs of one bridge env."""

    def __init__(self, target: str, kwargs: Mapping | None = None, *, expected: dict | None,
                 n_workers: int = 1, timeout: float = 60.0, reset_timeout: float = 300.0,
                 on_error: str = "raise", label: str = "env"):
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if timeout <= 0 or reset_timeout <= 0:
            raise ValueError("timeout and reset_timeout must be positive")
        self.target = target
        self.kwargs = dict(kwargs or {})
        self.expected = expected
        self.spec = None if expected is None else record_spec(expected["sizes"],
                                                              expected["info_spec"])
        self.n_workers = n_workers
        self.timeout = float(timeout)
        self.reset_timeout = float(reset_timeout)
        self.on_error = on_error
        self.label = label
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.err_paths: list[str] = []
        self.error: BaseException | None = None
        self.closed = False
        self.n_active: int | None = None
        self._dir: str | None = None
        self._lock = threading.Lock()

    # --------------------------------------------------------------------- lifecycle
    @property
    def started(self) -> bool:
        return bool(self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> WorkerPool:
        """Spawn the workers and wait until each has loaded the host env's module."""
        if self.closed:
            raise self._closed_error()
        if self.procs:
            return self
        ctx = mp.get_context("spawn")
        self._dir = tempfile.mkdtemp(prefix="alma-bridge-")
        _LIVE.add(self)
        try:
            for w in range(self.n_workers):
                parent_end, child_end = ctx.Pipe(duplex=True)
                err_path = os.path.join(self._dir, f"worker{w}.err")
                args = dict(conn=child_end, target=self.target, kwargs=self.kwargs,
                            expected=self.expected, on_error=self.on_error, err_path=err_path,
                            parent_pid=os.getpid())
                # run_path of a file outside any package keeps JAX out of the worker: the
                # child never imports envs_jax/__init__.py (see _spawn_entry.py).
                proc = ctx.Process(
                    target=runpy.run_path, args=(ENTRY,),
                    kwargs={"init_globals": {"BRIDGE_ARGS": args}, "run_name": WORKER_RUN_NAME},
                    name=f"alma-bridge-{self.label}-{w}", daemon=True,
                )
                _start_without_main(proc)
                child_end.close()
                self.procs.append(proc)
                self.conns.append(parent_end)
                self.err_paths.append(err_path)
            self._gather({w: None for w in range(self.n_workers)}, self.reset_timeout, "start")
        except BaseException:
            self.close()
            raise
        return self

    def close(self, grace: float = 2.0) -> None:
        """Stop every worker: ask (for `grace` seconds), terminate, then kill; reaps them all."""
        if self.closed:
            return
        self.closed = True
        _LIVE.discard(self)
        for conn in self.conns:
            try:
                conn.send(("close",))
            except Exception:
                pass
        deadline = time.monotonic() + grace
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for stop in ("terminate", "kill"):
            alive = [p for p in self.procs if p.is_alive()]
            for proc in alive:
                getattr(proc, stop)()
            for proc in alive:
                proc.join(2.0)
        # A request may be in flight (an io_callback thread waiting on these pipes and
        # process sentinels when Ctrl-C or an exit lands, or `_fail` in this very thread):
        # closing its descriptors under it can leave that wait blocked until the step
        # timeout. The workers are dead now, so such a wait wakes up and fails; its pipes
        # are then closed by garbage collection instead of here.
        if self._lock.acquire(blocking=False):
            try:
                for conn in self.conns:
                    conn.close()
                for proc in self.procs:
                    if not proc.is_alive():
                        proc.close()
            finally:
                self._lock.release()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------- requests
    def describe(self) -> tuple[dict, dict]:
        """Sizes and info spec of the host env, as built in a worker."""
        return self._request({0: ("describe",)}, self.reset_timeout, "describe")[0]

    def reset(self, seeds: list[int]) -> dict[str, np.ndarray]:
        """Reset envs 0..N-1 with the given seeds; N may differ from earlier resets."""
        seeds = [int(s) for s in seeds]
        n, w_count = len(seeds), self.n_workers
        msgs = {w: ("reset", list(range(w, n, w_count)), seeds[w::w_count])
                for w in range(min(w_count, n))}
        out = self._scatter(self._request(msgs, self.reset_timeout, "reset"), n)
        self.n_active = n
        return out

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Step envs 0..N-1 (N of the last reset); finished envs idle until the next reset."""
        actions = np.asarray(actions)
        n = len(actions)
        if self.n_active != n:
            err = BridgeError(f"step for {n} envs, but the last reset started "
                              f"{self.n_active}: call reset_batch first")
            self._fail(err)
        msgs = {w: ("step", actions[w::self.n_workers]) for w in range(min(self.n_workers, n))}
        return self._scatter(self._request(msgs, self.timeout, "step"), n)

    def stats(self) -> list[dict]:
        """Host-side counters per worker (env errors, recent tracebacks, env get_stats())."""
        msgs = {w: ("stats",) for w in range(self.n_workers)}
        res = self._request(msgs, self.timeout, "stats")
        return [res[w] for w in range(self.n_workers)]

    def _scatter(self, parts: dict[int, dict], n: int) -> dict[str, np.ndarray]:
        if self.n_workers == 1:
            return parts[0]  # already in env order
        out = {name: np.empty((n,) + tuple(shape), dtype)
               for name, (shape, dtype) in self.spec.items()}
        for w, part in parts.items():
            for name in out:
                out[name][w::self.n_workers] = part[name]
        return out

    def _request(self, msgs: dict[int, tuple], timeout: float, cmd: str) -> dict[int, Any]:
        with self._lock:
            if self.closed or self.error is not None:
                raise self._closed_error()
            if not self.procs:
                self.start()
            for w, msg in msgs.items():
                try:
                    self.conns[w].send(msg)
                except (OSError, ValueError):
                    self._fail(self._crash_error(w, cmd))
            return self._gather(msgs, timeout, cmd)

    def _gather(self, msgs: dict, timeout: float, cmd: str) -> dict[int, Any]:
        deadline = time.monotonic() + timeout
        pending = set(msgs)
        results: dict[int, Any] = {}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(self._timeout_error(sorted(pending), cmd, timeout))
            waiting = {self.conns[w]: w for w in pending}
            sentinels = {self.procs[w].sentinel: w for w in pending}
            ready = mp.connection.wait(list(waiting) + list(sentinels), left)
            for obj in ready:
                if obj in waiting:
                    w = waiting[obj]
                    try:
                        status, payload = obj.recv()
                    except (EOFError, OSError):
                        self._fail(self._crash_error(w, cmd))
                    if status == "error":
                        self._fail(WorkerError(
                            f"bridge worker {w} (pid {self.procs[w].pid}) of {self.label!r} "
                            f"failed in {cmd!r}; its traceback:\n{payload}"))
                    results[w] = payload
                    pending.discard(w)
            for obj in ready:
                w = sentinels.get(obj)
                # a reply written just before exiting is still read on the next round
                if w is not None and w in pending and not self.conns[w].poll():
                    self._fail(self._crash_error(w, cmd))
        return results

    # ------------------------------------------------------------------------ errors
    def _fail(self, err: BridgeError) -> None:
        self.error = err
        # healthy workers close their envs within the grace; a stuck one is terminated
        self.close(grace=0.5)
        raise err

    def _closed_error(self) -> BridgeClosed:
        if self.error is not None:
            return BridgeClosed(f"bridge pool {self.label!r} stopped after an earlier error:\n"
                                f"{self.error}")
        return BridgeClosed(f"bridge pool {self.label!r} is closed")

    def _err_text(self, w: int) -> str:
        try:
            return Path(self.err_paths[w]).read_text(errors="replace").strip()
        except OSError:
            return ""

    def _crash_error(self, w: int, cmd: str) -> WorkerCrashed:
        proc = self.procs[w]
        proc.join(1.0)
        text = self._err_text(w)
        return WorkerCrashed(
            f"bridge worker {w} (pid {proc.pid}) of {self.label!r} died during {cmd!r} "
            f"({_signal_name(proc.exitcode)})"
            + (f"; its last output:\n{text}" if text else "")
        )

    def _timeout_error(self, workers: list[int], cmd: str, timeout: float) -> WorkerTimeout:
        stacks = []
        for w in workers:
            size = len(self._err_text(w))
            if hasattr(signal, "SIGUSR1") and self.procs[w].is_alive():
                try:
                    os.kill(self.procs[w].pid, signal.SIGUSR1)
                except OSError:
                    pass
                # faulthandler writes from its signal handler: wait for the dump to land
                end = time.monotonic() + 2.0
                while time.monotonic() < end and len(self._err_text(w)) <= size:
                    time.sleep(0.05)
                time.sleep(0.2)
            stacks.append(f"--- worker {w} (pid {self.procs[w].pid}) stack ---\n"
                          f"{self._err_text(w)[size:].strip() or '(no stack dump)'}")
        return WorkerTimeout(
            f"bridge worker(s) {workers} of {self.label!r} did not answer {cmd!r} within "
            f"{timeout:g} s (set timeout= / reset_timeout= to allow longer)\n"
            + "\n".join(stacks)
        )


def probe(target: str, kwargs: Mapping | None = None, timeout: float = 300.0,
          label: str = "probe") -> tuple[dict, dict]:
    """Sizes and info spec of a host env built in a throwaway worker process."""
    with WorkerPool(target, kwargs, expected=None, n_workers=1, reset_timeout=timeout,
                    label=label) as pool:
        return pool.describe()


__all__ = [
    "BridgeClosed",
    "BridgeError",
    "WorkerCrashed",
    "WorkerError",
    "WorkerPool",
    "WorkerTimeout",
    "load_target",
    "probe",
    "record_spec",
    "serve",
]
