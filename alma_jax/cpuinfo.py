"""The CPU's model name and feature flags from /proc/cpuinfo, without importing JAX.

Shared by the trainer (`precision=bf16`'s start-up note) and `benchmarks/_machine.py`, which
also runs in the original PyTorch trainer's venv, where JAX is not installed.
"""

from __future__ import annotations


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str] | None]:
    """(model name, feature flags) of the first CPU listed; None for what cannot be read
    (no such file, e.g. not Linux). x86 lists `flags`, Arm `Features`."""
    model, flags = None, None
    try:
        with open(path) as f:
            for line in f:
                if model is None and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif flags is None and line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags
