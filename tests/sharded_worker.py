"""Subprocess half of tests/test_sharding.py: runs that need several (fake) CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_worker.py OUT JOB..

The device count is fixed when JAX starts, so the tests run this script in a fresh process.
Each job trains one tiny run with `alma_jax.train.run` into `OUT/<job>` and saves the final
train state's leaves (`OUT/<job>/state.npz`) and how they were laid out (`OUT/<job>/info.json`).

Jobs: `one` (the reference: 1 device), `seeds` and `envs` (all devices, that scheme), `resume`
(all devices, scheme seeds: stopped half way, then resumed from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import tiny_config  # noqa: E402

import alma_jax.train as train_mod  # noqa: E402

# 4 seeds, 4 envs, 8 windows per update: every job splits evenly over 4 devices, so one
# 1-device reference serves both schemes (the global batch is the same).
SHARED = {"num_seeds": 4, "batch_size": 8, "seed": 5}
HALF = 500  # env steps of the first half of the `resume` job


def config(out: Path, **kw):
    return tiny_config(out, "heuristic", **{**SHARED, **kw})


def save(out: Path, result: dict) -> None:
    state = result["state"]
    leaves = jax.tree.leaves(state)
    np.savez(out / "state.npz", *[np.asarray(x) for x in leaves])
    sharded = [str(x.sharding.spec) for x in leaves if hasattr(x.sharding, "spec")]
    info = {"n_devices": jax.device_count(), "n_leaves": len(leaves),
            "specs": sorted(set(sharded)),
            "devices_per_leaf": sorted({len(x.sharding.device_set) for x in leaves})}
    (out / "info.json").write_text(json.dumps(info))


def job(root: Path, name: str) -> None:
    out = root / name
    if name == "one":
        result = train_mod.run(config(out), devices=jax.devices()[:1])
    elif name in ("seeds", "envs"):
        result = train_mod.run(config(out), scheme=name)
    elif name == "resume":
        cfg = config(out)
        train_mod.run(dataclasses.replace(cfg, total_env_steps=HALF), scheme="seeds")
        result = train_mod.run(dataclasses.replace(cfg, resume=True), scheme="seeds")
    else:
        raise SystemExit(f"unknown job {name!r}")
    save(out, result)


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    # Jobs that repeat a program (the resume job's two halves, the seeds job's) reuse its
    # compiled executable from this persistent cache instead of compiling it again; one
    # cache per process, as the tests run workers side by side.
    jax.config.update("jax_compilation_cache_dir", str(root / ("jit_cache_" + "_".join(argv[1:]))))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    for name in argv[1:]:
        job(root, name)


if __name__ == "__main__":
    main(sys.argv[1:])
