"""Several devices: scheme choice and its errors, and 4 fake CPU devices against 1 device.

The device count is fixed when JAX starts, so the runs on 4 devices happen in a subprocess
(`tests/sharded_worker.py`, with `XLA_FLAGS=--xla_force_host_platform_device_count=4`), which
also runs the 1-device reference of the same global batch (4 seeds x 4 envs, 8 windows per
update) on one of its devices; this process compares the saved states and metric logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from alma_jax import sharding
from alma_jax.config import ConfigError, load_config

WORKER = Path(__file__).resolve().parent / "sharded_worker.py"
N_FAKE = 4


def run_worker(out: Path, *groups: tuple[str, ...]) -> None:
    """Run tests/sharded_worker.py on 4 fake CPU devices, one process per group of jobs.

    The groups run concurrently: compiling dominates and XLA compiles on one core, so two
    processes use both cores of a small machine.
    """
    # Default XLA optimisation on purpose: at --xla_backend_optimization_level=0 (a third
    # faster to compile) float leaves drift ~7x further apart (5e-6), too close to the
    # tolerance to tell sharding bugs from reduction order.
    flags = f"--xla_force_host_platform_device_count={N_FAKE}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), *jobs], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for jobs in groups]
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=1200)
        finally:
            p.kill()  # no-op once it has exited; stops it on a timeout or an error here
        assert p.returncode == 0, stdout[-3000:] + stderr[-6000:]


def load_state(out: Path) -> list[np.ndarray]:
    with np.load(out / "state.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def read_jsonl(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def assert_states_close(a: list[np.ndarray], b: list[np.ndarray], exact: bool) -> None:
    """Integer leaves (actions and other buffer codes, counters, keys) equal exactly; float
    leaves to float tolerance (reductions are split differently) unless `exact`."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype
        if exact or not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def assert_logs_close(a: list[dict], b: list[dict]) -> None:
    assert [r["t_env"] for r in a] == [r["t_env"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and ra["per_seed"].keys() == rb["per_seed"].keys()
        for field in ("per_seed", "mean", "q25", "q75", "iqr"):
            for k in ra["per_seed"]:
                np.testing.assert_allclose(ra[field][k], rb[field][k], rtol=1e-5, atol=1e-5,
                                           err_msg=f"t_env={ra['t_env']} {field} {k}")


# ------------------------------------------------------------------------- scheme choice
def cfg_with(**kw):
    return dataclasses.replace(load_config(["alg=heuristic"]), **kw)


def test_scheme_choice():
    assert sharding.choose_scheme(cfg_with(num_seeds=8), 4) == "seeds"
    assert sharding.choose_scheme(cfg_with(num_seeds=1, num_envs=8, batch_size=32), 4) == "envs"
    assert sharding.choose_scheme(cfg_with(num_seeds=8), 4, scheme="envs") == "envs"
    # LICA trains on the rollout's episodes: batch_size does not matter, num_envs does
    lica = cfg_with(low_learner="lica", allocation=None, subtask_cond=None, num_seeds=1,
                    num_envs=8, batch_size=6)
    assert sharding.choose_scheme(lica, 4) == "envs"
    # ... unless an AQL allocator samples windows of batch_size too
    with pytest.raises(ConfigError, match="batch_size=6"):
        sharding.choose_scheme(dataclasses.replace(lica, allocation="aql"), 4)
    with pytest.raises(ValueError, match="scheme"):
        sharding.choose_scheme(cfg_with(), 4, scheme="tensor")


@pytest.mark.parametrize("kw, named, absent", [
    ({"num_seeds": 3, "num_envs": 6, "batch_size": 6}, ["num_envs=6", "batch_size=6"], []),
    ({"num_seeds": 3, "num_envs": 8, "batch_size": 6}, ["batch_size=6"], ["num_envs=8"]),
    ({"num_seeds": 2, "num_envs": 6, "batch_size": 32}, ["num_envs=6"], ["batch_size"]),
])
def test_scheme_errors_name_the_keys_and_device_count(kw, named, absent):
    with pytest.raises(ConfigError) as err:
        sharding.choose_scheme(cfg_with(**kw), 4)
    msg = str(err.value)
    assert isinstance(err.value, sharding.ShardingError)
    assert f"num_seeds={kw['num_seeds']}" in msg and "4 devices" in msg
    for s in named:
        assert s in msg, (s, msg)
    for s in absent:
        assert s not in msg, (s, msg)
    with pytest.raises(ConfigError, match=r"num_seeds=3 to be a multiple of the device count 4"):
        sharding.choose_scheme(cfg_with(num_seeds=3), 4, scheme="seeds")


def test_bridge_envs_stay_on_one_device():
    with pytest.raises(ConfigError, match="one device"):
        sharding.choose_scheme(cfg_with(env="smac", num_seeds=4), 4)


def test_one_device_has_no_plan():
    """With one device nothing is sharded: `run` keeps its single-device path."""
    cfg = cfg_with(num_seeds=3)
    assert sharding.make_plan(cfg, jax.devices()[:1]) is None
    with pytest.raises(ValueError, match="more than one device"):
        sharding.make_plan(cfg, jax.devices()[:1], scheme="envs")
    tree = {"a": np.zeros((4, 2))}
    assert sharding.batch_constraint(None)(tree) is tree
    assert "devices: 1" in sharding.describe(None)


# --------------------------------------------------------------- 4 fake devices vs 1
def check_against_one_device(root: Path, scheme: str) -> None:
    """`root/<scheme>` (4 devices) equals `root/one` (1 device, same global batch): final
    train state (parameters, optimiser, targets, replay buffer, keys, counters) and the whole
    metric log, per seed, and the state really was laid out over the 4 devices."""
    one, many = root / "one", root / scheme
    info = json.loads((many / "info.json").read_text())
    assert info["n_devices"] == N_FAKE and info["devices_per_leaf"] == [N_FAKE]
    assert info["specs"] == (["P('data',)"] if scheme == "seeds" else ["P()"])
    assert json.loads((one / "info.json").read_text())["devices_per_leaf"] == [1]
    assert_states_close(load_state(one), load_state(many), exact=False)
    assert_logs_close(read_jsonl(one), read_jsonl(many))


@pytest.mark.slow  # two concurrent worker processes at XLA's default level: 107 s on 2 cores
def test_four_fake_devices_equal_one_device_envs(tmp_path):
    """Scheme "envs": each rollout's 4 environments and each update's 8 windows are split
    over 4 devices (replicated parameters, all-reduced gradients)."""
    run_worker(tmp_path, ("one",), ("envs",))
    check_against_one_device(tmp_path, "envs")


@pytest.mark.slow
def test_four_fake_devices_equal_one_device_seeds_and_resume(tmp_path):
    """Scheme "seeds": one whole seed per device. The same run stopped half way and resumed
    from its checkpoint ends in the same state, bit for bit, with the same log.

    Slow only because of the budget of the default test run: three more compilations."""
    run_worker(tmp_path, ("one",), ("seeds", "resume"))
    check_against_one_device(tmp_path, "seeds")
    assert_states_close(load_state(tmp_path / "seeds"), load_state(tmp_path / "resume"),
                        exact=True)
    assert read_jsonl(tmp_path / "seeds") == read_jsonl(tmp_path / "resume")


def test_distributed_init_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.delenv("ALMA_JAX_DISTRIBUTED", raising=False)
    assert not sharding.init_distributed_from_env() and not calls
    monkeypatch.setenv("ALMA_JAX_DISTRIBUTED", "1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert sharding.init_distributed_from_env()
    assert calls == [{"num_processes": 2, "process_id": 1}]


def test_cli_reports_a_config_the_devices_cannot_split():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={N_FAKE}")
    r = subprocess.run([sys.executable, "-m", "alma_jax.train", "num_seeds=3", "num_envs=6",
                        "batch_size=6"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "config error" in r.stderr and "num_envs=6 and batch_size=6" in r.stderr
    assert f"over {N_FAKE} devices" in r.stderr
