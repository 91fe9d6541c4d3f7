"""benchmarks/train_vs_original.py without torch or the original: the timed window's
bookkeeping (which rollouts and updates fall inside it, env steps, the split) on a fake runner
with scripted clocks, and the checkout-path guard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from envs_jax.bridge.workers import load_file_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_vs_original.py"


@pytest.fixture(scope="module")
def bench():
    yield load_file_module("_bench_train_vs_original", SCRIPT)
    sys.modules.pop("_bench_train_vs_original", None)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_window_counts_whole_cycles_after_warmup(bench, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)

    class Runner:
        batch_size = 2  # envs per rollout
        t_env = 0

        def run(self, test_mode=False):
            clock.now += 1.0  # collecting takes 1 s and 10 env steps per rollout
            self.t_env += 10

    class Learner:
        def train(self):
            clock.now += 0.5

        def alloc_train_aql(self):
            clock.now += 2.0

    rec = bench.Recorder(warmup=2, timed=3, tag="t")
    rec.wrap_runner(Runner)
    rec.wrap(Learner, "train", "train")
    rec.wrap(Learner, "alloc_train_aql", "alloc")
    runner, learner = Runner(), Learner()
    with pytest.raises(bench._StopTraining):
        for _ in range(10):  # each cycle: one rollout, then 2 x (update + allocator update)
            runner.run()
            for _ in range(2):
                learner.train()
                learner.alloc_train_aql()
    out = rec.summary()
    # 3 timed cycles of 1 + 2 * (0.5 + 2.0) = 6 s and 10 env steps each.
    assert out["timed_rollouts"] == 3 and out["episodes"] == 6
    assert out["env_steps"] == 30 and out["wall_s"] == pytest.approx(18.0)
    assert out["env_steps_per_s"] == pytest.approx(30 / 18, abs=0.01)
    assert out["low_level_updates"] == 6 and out["alloc_updates"] == 6
    assert out["s_per_low_level_update"] == pytest.approx(0.5)
    assert out["s_per_alloc_update"] == pytest.approx(2.0)
    assert out["s_per_update_pair"] == pytest.approx(2.5)
    assert out["window_split_s"]["collect (runner.run)"] == pytest.approx(3.0)
    assert out["window_split_s"]["rest of the loop"] == pytest.approx(0.0, abs=1e-9)
    # the 2 warm-up cycles (12 s, 4 updates) stay outside the window
    assert out["warmup_s"] == pytest.approx(12.0) and out["warmup_updates"] == 4


def test_window_closes_at_the_first_rollout_after_window_s(bench, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)

    class Runner:
        batch_size = 1
        t_env = 0

        def run(self, test_mode=False):
            clock.now += 4.0
            self.t_env += 7

    rec = bench.Recorder(warmup=1, timed=100, tag="t", window_s=10.0)
    rec.wrap_runner(Runner)
    runner = Runner()
    with pytest.raises(bench._StopTraining):
        for _ in range(100):
            runner.run()
    out = rec.summary()
    # rollouts start at 4, 8, 12 s after the window opened: the one at 12 s closes it
    assert out["timed_rollouts"] == 3 and out["env_steps"] == 21
    assert out["wall_s"] == pytest.approx(12.0)


def test_orig_src_must_hold_the_original(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="main.py"):
        bench.resolve_src(tmp_path)
    src = tmp_path / "src"
    (src / "config").mkdir(parents=True)
    for name in ("main.py", "run.py", "config/default.yaml"):
        (src / name).write_text("")
    assert bench.resolve_src(tmp_path) == src.resolve()
    assert bench.resolve_src(src) == src.resolve()


def test_machine_info_without_jax_keeps_the_cpu_fields(monkeypatch):
    # The original's venv has no JAX: machine_info must still describe the CPU, minus JAX.
    machine = load_file_module("_bench_machine", SCRIPT.parent / "_machine.py")
    with_jax = machine.machine_info()
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` now raises ImportError
    without = machine.machine_info()
    assert "jax" in with_jax and "n_devices" in with_jax
    assert set(without) == {"cpu", "cpu_flags", "cores", "python"}
    assert {k: without[k] for k in without} == {k: with_jax[k] for k in without}
    sys.modules.pop("_bench_machine", None)
