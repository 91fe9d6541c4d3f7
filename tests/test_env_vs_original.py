"""benchmarks/env_vs_original.py without the real original: its CLI guard, path resolution,
loader and original-timing loop, run against a tiny fake of the original package."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from envs_jax.bridge.workers import load_file_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "env_vs_original.py"


@pytest.fixture(scope="module")
def bench():
    yield load_file_module("_bench_env_vs_original", SCRIPT)
    sys.modules.pop("_bench_env_vs_original", None)


BASE = """
class MultiAgentEnv(object):
    FROM_CHECKOUT = True

    def close(self):
        pass
"""

# A trivial FireFightersEnv with the methods the benchmark calls; episodes last 3 steps.
FAKE = """
import numpy as np
from ..multiagentenv import MultiAgentEnv

N_ACTIONS = 8


class FireFightersEnv(MultiAgentEnv):
    def __init__(self, entity_scheme=True, scenario_dict=None, episode_limit=3, seed=0,
                 **kwargs):
        self.scenario_dict = scenario_dict
        self.episode_limit = episode_limit
        self.kwargs = kwargs
        self.n_agents = scenario_dict["max_n_agents"]
        self.calls = []
        np.random.seed(seed)

    def reset(self, index=None, test=False, n_tasks=None):
        self.calls.append("reset")
        self.time = 0
        return self.get_entities(), self.get_masks()

    def get_avail_actions(self):
        self.calls.append("get_avail_actions")
        avail = np.zeros((self.n_agents, N_ACTIONS), dtype=np.int64)
        avail[:, 0] = 1
        avail[:, 1 + self.time % 3] = 2  # entries >= 1 are available, as in the original
        return avail.tolist()

    def get_entities(self):
        self.calls.append("get_entities")
        return [np.zeros(4, dtype=np.float32) for _ in range(self.n_agents)]

    def get_masks(self):
        self.calls.append("get_masks")
        return {"entity_mask": np.zeros(self.n_agents, dtype=np.uint8)}

    def step(self, actions):
        self.calls.append("step")
        avail = np.asarray(self.get_avail_actions())
        self.calls.pop()
        assert all(avail[i, int(a)] >= 1 for i, a in enumerate(actions)), actions
        self.time += 1
        return float(np.random.rand()), self.time >= self.episode_limit, {}

    def get_stats(self):
        self.calls.append("get_stats")
        return {}
"""

INIT = """
from .firefighters import FireFightersEnv
from .scenarios import scenarios
"""

SCENARIOS = """
def _make(rs=None):
    return {"train_scenarios": [(["F", "B"], (3, 3))], "test_scenarios": [],
            "max_n_agents": 2, "max_n_buildings": 3, "bld_spacing": 3}


scenarios = {"2-5a_2-5b": _make}
"""

YAML = """
env: ff
scenario: "2-5a_2-5b"
env_args:
  entity_scheme: True
  episode_limit: 4
  reward_scale: 20
"""


def write_fake(root: Path, with_base: bool = True, with_config: bool = False) -> Path:
    ff = root / "src" / "envs" / "firefighters"
    ff.mkdir(parents=True)
    (ff / "__init__.py").write_text(textwrap.dedent(INIT))
    (ff / "firefighters.py").write_text(textwrap.dedent(FAKE))
    (ff / "scenarios.py").write_text(textwrap.dedent(SCENARIOS))
    if with_base:
        (root / "src" / "envs" / "multiagentenv.py").write_text(textwrap.dedent(BASE))
    if with_config:
        cfg = root / "src" / "config" / "envs"
        cfg.mkdir(parents=True)
        (cfg / "ff.yaml").write_text(textwrap.dedent(YAML))
    return ff


def test_main_without_orig_src_exits_2(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--orig-src" in err and "shariqiqbal2810/ALMA" in err


def test_bad_path_names_path_and_expectation(bench, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="src/envs/firefighters"):
        bench.resolve_orig_src(tmp_path)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--orig-src", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "nowhere" in capsys.readouterr().err


def test_fake_original_is_loaded_and_timed(bench, tmp_path):
    ff = write_fake(tmp_path, with_config=True)
    assert bench.resolve_orig_src(tmp_path) == ff.resolve()  # checkout root accepted
    assert bench.resolve_orig_src(ff) == ff.resolve()  # the package directory too
    module = bench.load_original(tmp_path)
    assert module.__alma_base_file__ is not None
    assert module.FireFightersEnv.FROM_CHECKOUT  # the checkout's own base class
    env_args, source = bench.ff_env_args(ff.resolve())
    assert source.endswith("ff.yaml") and env_args["episode_limit"] == 4
    env, scen = bench.make_original_env(module, "2-5a_2-5b", env_args, seed=0)
    assert env.scenario_dict is scen and env.kwargs == {"reward_scale": 20}
    res = bench.time_original(env, steps=12, warmup=2, seed=0)
    assert res["env_steps_per_s"] > 0
    assert res["episodes_finished"] == 3 and res["mean_episode_length"] == 4
    # the runner's call pattern: reset obs, then each step followed by its observation
    assert env.calls[:4] == ["reset", "get_entities", "get_masks", "get_masks"]
    step_at = env.calls.index("step")
    assert env.calls[step_at:step_at + 4] == list(bench.STEP_CALLS)
    assert env.calls.count("step") == 14
    assert env.calls.count("get_stats") == 3


def test_stand_in_base_when_checkout_lacks_multiagentenv(bench, tmp_path):
    ff = write_fake(tmp_path, with_base=False)
    module = bench.load_original(ff)
    assert module.__alma_base_file__ is None
    env_args, source = bench.ff_env_args(ff.resolve())
    assert source.startswith("built-in") and env_args["episode_limit"] == 150
    env, _ = bench.make_original_env(module, "2-5a_2-5b", {"episode_limit": 3}, seed=1)
    res = bench.time_original(env, steps=9, warmup=0, seed=1)
    assert res["env_steps_per_s"] > 0 and res["episodes_finished"] == 3
