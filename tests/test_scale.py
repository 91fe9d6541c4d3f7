"""Seed aggregates (mean and IQR) in the metric log and plots; the memory model and its error."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alma_jax import buffer as bf
from alma_jax.memory import MemoryModel, compiled_memory, tree_nbytes
from alma_jax.plots import aggregate, plot_mean_iqr, plot_runs, read_metric, seed_stats
from alma_jax.train import MetricLog


# ------------------------------------------------------------------------------ IQR
def test_seed_stats_are_numpy_quartiles():
    per_seed = {"a": [4.0, 1.0, 3.0, 2.0], "one": [7.0], "gap": [1.0, float("nan"), 3.0],
                "none": [float("nan"), float("nan")]}
    s = seed_stats(per_seed)
    assert s["q25"]["a"] == 1.75 and s["q75"]["a"] == 3.25 and s["iqr"]["a"] == 1.5
    assert s["q25"]["one"] == s["q75"]["one"] == 7.0 and s["iqr"]["one"] == 0.0
    assert (s["q25"]["gap"], s["q75"]["gap"]) == (1.5, 2.5)  # NaN seeds are left out
    assert all(math.isnan(s[q]["none"]) for q in ("q25", "q75", "iqr"))


def test_metric_log_records_mean_and_iqr(tmp_path):
    log = MetricLog(tmp_path, tensorboard=False)
    rng = np.random.default_rng(0)
    for t in range(5):
        log.write(100 * t, {"eval/solved_mean": rng.uniform(size=5),
                            "loss": np.full(5, float(t))})
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        v = np.array(r["per_seed"]["eval/solved_mean"])
        q25, q75 = np.percentile(v, [25, 75])
        assert r["mean"]["eval/solved_mean"] == pytest.approx(v.mean())
        assert r["q25"]["eval/solved_mean"] == pytest.approx(q25)
        assert r["q75"]["eval/solved_mean"] == pytest.approx(q75)
        assert r["iqr"]["eval/solved_mean"] == pytest.approx(q75 - q25)
        assert r["iqr"]["loss"] == 0.0
    # the CSV keeps its seed-mean layout
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "t_env,key,mean"

    t, vals = read_metric(tmp_path, "eval/solved_mean")
    assert t.tolist() == [0, 100, 200, 300, 400] and vals.shape == (5, 5)
    mean, q25, q75 = aggregate(vals)
    np.testing.assert_allclose(q25, [r["q25"]["eval/solved_mean"] for r in records])
    np.testing.assert_allclose(q75, [r["q75"]["eval/solved_mean"] for r in records])
    np.testing.assert_allclose(mean, [r["mean"]["eval/solved_mean"] for r in records])
    with pytest.raises(KeyError, match="nope"):
        read_metric(tmp_path, "nope")


def test_plot_mean_with_iqr_band(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, shift in (("a", 0.0), ("b", 1.0)):
        (tmp_path / name).mkdir()
        log = MetricLog(tmp_path / name, tensorboard=False)
        for t in range(4):
            log.write(10 * t, {"eval/solved_mean": shift + np.arange(4.0) * t})
    fig, ax = plt.subplots()
    t, v = read_metric(tmp_path / "a", "eval/solved_mean")
    line = plot_mean_iqr(ax, t, v, label="a")
    np.testing.assert_allclose(line.get_ydata(), v.mean(1))
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(np.percentile(v, 25, axis=1).min())
    assert band[:, 1].max() == pytest.approx(np.percentile(v, 75, axis=1).max())
    plt.close(fig)
    png = tmp_path / "curves.png"
    fig = plot_runs({"a": tmp_path / "a", "b": tmp_path / "b"}, ["eval/solved_mean"], png)
    assert png.stat().st_size > 1000 and len(fig.axes[0].lines) == 2
    plt.close(fig)


# --------------------------------------------------------------------------- memory
def example_episode():
    return bf.empty_episodes((), 150, 5, 11, 6, 12, 58)  # SaveTheCity 2-5a_2-5b sizes


def test_memory_model_matches_buffer_bytes():
    ex = example_episode()
    model = MemoryModel.from_example(ex, state_bytes_per_seed=1000)
    for c in (1, 7, 5000):
        assert model.per_seed(c) - 1000 == bf.buffer_nbytes(bf.buffer_spec(ex, c))
    assert model.total(3, 10) == 3 * model.per_seed(10)


def test_memory_budget_largest_fit_and_error():
    ex = example_episode()
    model = MemoryModel.from_example(ex, state_bytes_per_seed=4096,
                                     activation_bytes_per_seed=2048,
                                     activation_bytes_fixed=10_000)
    budget = model.total(4, 300) + model.episode * 4 - 1  # 4 seeds fit 300 slots, not 301
    assert model.max_buffer_size(4, budget) == 300
    assert model.check(4, 300, budget) == model.total(4, 300)
    assert model.max_num_seeds(300, budget) == 4
    with pytest.raises(bf.BufferTooLargeError) as err:
        model.check(8, 300, budget, source="test budget")
    msg = str(err.value)
    for part in ("num_seeds=8 x buffer_size=300 does not fit", "[test budget]",
                 f"buffer_size <= {model.max_buffer_size(8, budget)}", "num_seeds <= 4",
                 "replay", "train state", "activations"):
        assert part in msg, (part, msg)
    assert 0 < model.max_buffer_size(8, budget) < 300
    assert model.max_buffer_size(10**6, budget) == 0  # not even an empty buffer fits
    with pytest.raises(bf.BufferTooLargeError, match="does not fit even with an empty buffer"):
        model.check(10**6, 1, budget)
    with pytest.raises(bf.BufferTooLargeError, match="does not fit even one seed"):
        model.check(1, 10**9, budget)
    # the trainer's own start-up check agrees on the replay part
    with pytest.raises(bf.BufferTooLargeError, match="buffer_size=300"):
        bf.check_buffer_fits(ex, 300, budget_bytes=4 * model.episode * 300, n_copies=8)


def test_compiled_memory_reports_temp_bytes():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    stats = compiled_memory(lambda a: jnp.tanh(a @ a) @ a, x)
    if stats is None:
        pytest.skip("this backend reports no memory analysis")
    assert stats["argument"] == 256 * 256 * 4 and stats["output"] == 256 * 256 * 4
    assert stats["temp"] >= 0
    assert tree_nbytes({"a": x, "b": jnp.zeros(3, jnp.int8)}) == 256 * 256 * 4 + 3
