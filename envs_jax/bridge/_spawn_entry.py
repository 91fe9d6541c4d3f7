"""Body of a bridge worker process, run with `runpy.run_path` by `WorkerPool.start`.

The spawned child unpickles its target before any of our code runs; pointing the target at
`runpy.run_path` (stdlib) instead of a function of `envs_jax` keeps `envs_jax/__init__.py`,
and with it JAX, out of the worker. The packages on the way to the worker's modules are
installed as bare namespace stubs, so importing `envs_jax.bridge.workers`, the host env
modules and `envs_jax.savethecity.scenarios` loads those numpy-only files alone.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

STUB_PACKAGES = ("envs_jax", "envs_jax.bridge", "envs_jax.savethecity")


def install_stub_packages() -> None:
    """Register import-free stand-ins for the packages whose __init__ would import JAX."""
    root = Path(__file__).resolve().parent.parent
    for name in STUB_PACKAGES:
        if name in sys.modules:
            continue
        path = root.joinpath(*name.split(".")[1:])
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(path)]
        module.__spec__ = spec
        sys.modules[name] = module


if __name__ == "__alma_bridge_worker__":
    install_stub_packages()
    from envs_jax.bridge.workers import serve

    serve(**globals()["BRIDGE_ARGS"])
