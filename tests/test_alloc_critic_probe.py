"""The critic probe's two hand-checkable pieces: the critic's return units and clumping."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "alloc_critic_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("alloc_critic_probe", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(_PATH.parent))
    spec.loader.exec_module(mod)
    return mod


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


def test_clumping(probe):
    """3 agents on subtask 0, 1 on subtask 2; subtasks 0-3 open, 4 finished."""
    alloc = jnp.zeros((4, 5), bool).at[jnp.array([0, 1, 2, 3]), jnp.array([0, 0, 0, 2])].set(True)
    task_mask = jnp.array([False, False, False, False, True])
    per_staffed, empty = probe.clumping(alloc, task_mask)
    assert float(per_staffed) == pytest.approx(2.0)  # 4 agents over 2 staffed subtasks
    assert float(empty) == pytest.approx(0.5)  # subtasks 1 and 3 of the 4 open ones
