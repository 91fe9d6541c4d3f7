"""Machine description attached to every benchmark's JSON output, and a shared timer."""

from __future__ import annotations

import os
import platform
import time

import jax

# The CPU features that decide XLA:CPU's matmul speed (vector width, bf16 and AMX units).
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_fp16", "neon", "sve", "bf16")


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = [x for x in MATMUL_FLAGS if x in have]
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "python": platform.python_version(),
    }


def time_env_runner(run, num_envs: int, num_steps: int, repeats: int) -> dict:
    """Compile a jitted `run(key)` ahead of time, warm it up, then keep the best of `repeats`
    timed calls: compile seconds, best run seconds and env steps/s (compile excluded)."""
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = run.lower(key).compile()
    compile_s = time.perf_counter() - t0
    compiled(key).block_until_ready()  # the first call of an executable pays one-off costs
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        compiled(jax.random.key(r + 1)).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"num_envs": num_envs, "steps_per_env": num_steps, "compile_s": round(compile_s, 3),
            "run_s": round(best, 4), "env_steps_per_s": round(num_envs * num_steps / best)}
