"""benchmarks/update_cost.py's timeline: the split of the step's span by how many XLA worker
threads run a traced op, on a hand-made trace whose answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from envs_jax.bridge.workers import load_file_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "update_cost.py"


@pytest.fixture(scope="module")
def bench():
    yield load_file_module("_bench_update_cost", SCRIPT)
    sys.modules.pop("_bench_update_cost", None)


def thread(tid: int, name: str) -> dict:
    return {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}}


def op(tid: int, name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur}


def test_timeline_splits_the_span_by_running_ops(bench):
    kinds = {"fusion.1": "fusion/kLoop f32[8]", "dot.2": "dot f32[128,128]",
             "dot.3": "dot f32[4,4]"}
    us = 1000.0  # trace times are in microseconds
    events = [
        thread(10, "tf_XLAEigen/1"), thread(11, "tf_XLAEigen/2"), thread(12, "python"),
        # worker 10: 0-4 ms a fusion, then a 0.5 ms dot launch at 4 ms
        op(10, "fusion.1", 0, 4 * us), op(10, "dot.2", 4 * us, 0.5 * us),
        # worker 11: 2-6 ms a YNNPACK fusion, then nothing until a 2 ms dot at 8-10 ms
        op(11, "ynn_fusion.7", 2 * us, 4 * us), op(11, "dot.3", 8 * us, 2 * us),
        # not counted: the host thread, and an event that is no XLA op
        op(12, "fusion.1", 0, 10 * us), op(10, "ThunkExecutor::Execute", 0, 10 * us),
    ]
    t = bench.timeline(events, kinds, calls=1)
    # span 0-10 ms: two ops run during 2-4.5 ms; one during 0-2, 4.5-6 and 8-10; none 6-8
    assert t["span_ms"] == 10.0
    assert t["both_ms"] == 2.5
    assert t["one_ms"] == 5.5
    assert t["none_ms"] == 2.0
    assert t["threads"] == 2
    assert t["thread_busy_fraction"] == [0.45, 0.6]
    assert t["async_dots"] == 1  # dot.2's launch is short; dot.3 ran traced for 2 ms
    assert bench.timeline(events, kinds, calls=2)["none_ms"] == 1.0


def test_timeline_without_worker_ops_is_empty(bench):
    assert bench.timeline([thread(12, "python"), op(12, "fusion.1", 0, 5.0)],
                          {"fusion.1": "fusion/kLoop"}, calls=1) == {}
