"""Machine description attached to every benchmark's JSON output."""

from __future__ import annotations

import os
import platform

# The CPU features that decide XLA:CPU's matmul speed (vector width, bf16 and AMX units).
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_fp16", "neon", "sve", "bf16")


def machine_info() -> dict:
    """CPU model and matmul flags, cores, Python; the JAX fields too where JAX is importable
    (benchmarks/train_vs_original.py runs in the original's venv, which has no JAX)."""
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
    info = {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count()}
    try:
        import jax
    except ImportError:
        return {**info, "python": platform.python_version()}
    dev = jax.devices()[0]
    return {
        **info,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "python": platform.python_version(),
    }
