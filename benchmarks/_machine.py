"""Machine description attached to every benchmark's JSON output."""

from __future__ import annotations

import os
import platform

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
