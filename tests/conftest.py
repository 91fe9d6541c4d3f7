"""Suite-wide settings: XLA's optimisation level and a persistent compilation cache.

Compilation, not execution, dominates this suite: its programs are the real ones at tiny
sizes. XLA's LLVM back end at optimisation level 0 compiles them about 1.3-1.5x faster and
runs them a little slower, a good trade for tests (measured on a 2-core AVX2 EPYC: four of
the heaviest non-trainer tests 260 -> 209 s, two end-to-end trainer runs 116 -> 80 s). The
level changes only how XLA's kernels are generated, not the HLO they compute. Set here, before
anything imports JAX, so subprocesses inherit it; a level already in XLA_FLAGS is kept, and
tests/test_sharding.py sets its workers' flags itself (default level, on purpose).
"""

from __future__ import annotations

import os

import pytest

_LEVEL = "--xla_backend_optimization_level"
if _LEVEL not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_LEVEL}=0".strip()


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent compilation cache (in a temporary directory) for the whole run: tests
    that compile the same program (the same env step, a trainer run that differs only in
    host-side settings) compile it once. Only a speed-up: it relies on a private JAX module,
    so without it the tests just compile."""
    import jax

    try:
        from jax._src import compilation_cache as cc

        cc.reset_cache  # noqa: B018
    except (ImportError, AttributeError):
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in names}
    jax.config.update(names[0], str(tmp_path_factory.mktemp("jit_cache")))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    cc.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()
