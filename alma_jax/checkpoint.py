"""Checkpoints: the whole jitted train state (orbax) plus the host loop's counters (JSON).

The train state holds everything a run needs to continue bit-exactly: parameters, optimiser
states, target copies, Pop-Art statistics, the replay buffer, RNG keys and step counters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_checkpoint(path: Path, state: Any, host: dict[str, int]) -> None:
    """Write `state` and `host` to `path`, replacing any previous checkpoint there.

    Multi-host: every process calls this (orbax writes each process's shards); only the
    first process touches the directories and host.json, between barriers.
    """
    path = Path(path).resolve()
    tmp = path.with_name(path.name + ".tmp")
    primary, many = jax.process_index() == 0, jax.process_count() > 1
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if many:
        _barrier("alma_jax_checkpoint_start")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "state", state)
        ckptr.wait_until_finished()
    if many:
        _barrier("alma_jax_checkpoint_written")
    if primary:
        (tmp / "host.json").write_text(json.dumps(host))
        # swap in only complete checkpoints, so a killed run keeps its previous one intact
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    if many:
        _barrier("alma_jax_checkpoint_done")


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def load_checkpoint(path: Path, abstract_state: Any) -> tuple[Any, dict[str, int]]:
    """Restore (state, host) saved by `save_checkpoint`; `abstract_state` gives the structure."""
    path = Path(path).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path / "state", abstract_state)
    host = json.loads((path / "host.json").read_text())
    return state, host


def load_partial(path: Path, abstract_item: dict[str, Any]) -> dict[str, Any]:
    """Restore only some fields of a saved train state, e.g. `{"low": abstract.low}` for
    evaluation (skips reading the replay buffer). Keys are the state's field names."""
    path = Path(path).resolve()
    args = ocp.args.PyTreeRestore(
        item=abstract_item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_item),
        partial_restore=True,
    )
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(path / "state", args=args)
