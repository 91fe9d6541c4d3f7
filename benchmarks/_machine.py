"""Machine description attached to every benchmark's JSON output."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# The repository root, so that the JAX-free `alma_jax.cpuinfo` imports where the package is
# not installed (the original trainer's venv runs benchmarks/train_vs_original.py).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from alma_jax.cpuinfo import read_cpuinfo  # noqa: E402

# The CPU features that decide XLA:CPU's matmul speed (vector width, bf16 and AMX units).
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_fp16", "neon", "sve", "bf16")


def machine_info() -> dict:
    """CPU model and matmul flags, cores, Python; the JAX fields too where JAX is importable
    (benchmarks/train_vs_original.py runs in the original's venv, which has no JAX)."""
    model, have = read_cpuinfo()
    cpu = platform.processor() or platform.machine()
    if model and cpu in ("", platform.machine()):
        cpu = model
    flags = [x for x in MATMUL_FLAGS if x in (have or ())]
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
