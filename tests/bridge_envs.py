"""Tiny host envs for the bridge tests: scripted episodes, crashes, hangs, bad outputs.

Loaded by file path inside bridge workers, so numpy and the standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

import numpy as np

SIZES = {"n_agents": 2, "n_entities": 3, "n_tasks": 1, "n_actions": 3, "entity_dim": 4,
         "episode_limit": 6}


class ScriptedEnv:
    """`HostEnv` whose episode of env seed s lasts 1 + s % 5 steps; optional faults.

    entities[0] = (seed % 65536, t, sum of actions so far, pid % 65536). `fail_at`,
    `exit_at`, `hang_at`, `segv_at` make step number k (1-based) raise, exit the process,
    sleep or segfault.
    """

    def __init__(self, fail_at: int = 0, exit_at: int = 0, hang_at: int = 0, segv_at: int = 0,
                 bad_shape: bool = False, fail_reset: bool = False):
        self.fail_at, self.exit_at, self.hang_at = fail_at, exit_at, hang_at
        self.segv_at = segv_at
        self.bad_shape = bad_shape
        self.fail_reset = fail_reset
        self.seed = 0
        self.t = 0
        self.acc = 0
        self.closed = False

    def env_info(self) -> dict[str, int]:
        return dict(SIZES)

    def info_spec(self) -> dict:
        return {"task_rewards": ((1,), "float32"), "tasks_terminated": ((1,), "bool"),
                "tasks_changed": ((), "bool"), "episode_limit": ((), "bool"),
                "episode_length": ((), "int32")}

    def _obs(self) -> dict[str, np.ndarray]:
        ent = np.zeros((3, 5 if self.bad_shape else 4), np.float32)
        ent[0, :4] = (self.seed % 65536, self.t, self.acc, os.getpid() % 65536)
        return {"entities": ent, "avail_actions": np.ones((2, 3), np.int32),
                "obs_mask": np.zeros((3, 3), bool), "entity_mask": np.zeros(3, bool),
                "entity2task_mask": np.zeros((3, 1), bool), "task_mask": np.zeros(1, bool)}

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        if self.fail_reset:
            raise RuntimeError("scripted reset failure")
        self.seed, self.t, self.acc = int(seed), 0, 0
        return self._obs()

    def step(self, actions: np.ndarray):
        self.t += 1
        if self.t == self.fail_at:
            raise ValueError(f"scripted failure at step {self.t} (seed {self.seed})")
        if self.t == self.exit_at:
            os._exit(7)
        if self.t == self.hang_at:
            time.sleep(600)
        if self.t == self.segv_at:
            ctypes.string_at(0)  # a crash in native code: no Python exception
        self.acc += int(np.sum(actions))
        done = self.t >= 1 + self.seed % 5
        info = {"task_rewards": [1.0], "tasks_terminated": [done], "tasks_changed": done,
                "episode_length": self.t}
        return self._obs(), 1.0, done, info

    def get_stats(self) -> dict:
        return {"jax_imported": "jax" in sys.modules, "pid": os.getpid()}

    def close(self) -> None:
        self.closed = True



def crashing_city(crash_after: int, **kw):
    """The numpy SaveTheCity, raising on its `crash_after`-th step (counted over episodes).

    A factory, so that importing this file (as the scripted envs' workers do) stays JAX-free.
    """
    from envs_jax.bridge.host_savethecity import HostSaveTheCity

    class CrashingCity(HostSaveTheCity):
        def step(self, actions):
            self.steps_taken = getattr(self, "steps_taken", 0) + 1
            if self.steps_taken >= crash_after:
                raise RuntimeError(f"scripted crash after {self.steps_taken} steps")
            return super().step(actions)

    return CrashingCity(**kw)
