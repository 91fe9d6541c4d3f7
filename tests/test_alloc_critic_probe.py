"""The critic probe's hand-checkable pieces: the critic's return units and the spread measure."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.bridge.workers import load_file_module

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "alloc_critic_probe.py"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(_PATH.parent))  # the script imports its sibling _machine.py
    return load_file_module("_bench_alloc_critic_probe", _PATH)


def test_segment_returns_in_the_critics_units(probe):
    """Segments of action_length rows, summed / action_length, gamma per segment (spec 3.9)."""
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = probe.segment_returns(r, action_length=2, gamma=0.5)
    want = [
        (1 + 2) / 2 + 0.5 * (3 + 4) / 2 + 0.25 * 5 / 2,
        (2 + 3) / 2 + 0.5 * (4 + 5) / 2,
        (3 + 4) / 2 + 0.5 * 5 / 2,
        (4 + 5) / 2,
        5 / 2,
    ]
    np.testing.assert_allclose(got, want)


def test_spread_terms():
    """3 agents on subtask 0, 1 on subtask 2; subtasks 0-3 open, 4 finished; a second row
    with everyone on subtask 1. Pooled: 8 agents over 3 staffed subtasks."""
    from alma_jax.allocation import spread_terms

    row0 = jnp.zeros((4, 5), bool).at[jnp.array([0, 1, 2, 3]), jnp.array([0, 0, 0, 2])].set(True)
    row1 = jnp.zeros((4, 5), bool).at[:, 1].set(True)
    task_mask = jnp.array([[False, False, False, False, True]] * 2)
    on_used, n_used, empty = spread_terms(jnp.stack([row0, row1]), task_mask)
    np.testing.assert_allclose(on_used, [4.0, 4.0])
    np.testing.assert_allclose(n_used, [2.0, 1.0])
    np.testing.assert_allclose(empty, [0.5, 0.75])  # subtasks 1, 3 / 0, 2, 3 of 4 open
    assert float(on_used.sum() / n_used.sum()) == pytest.approx(8 / 3)
