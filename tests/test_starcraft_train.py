"""Every kind of learner trains end to end on the pure-JAX StarCraft env (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import alma_jax.train as train_mod
from alma_jax.config import ConfigError, load_config

TINY = [
    "env=starcraft_jax", "env.map_name=3m", "+env_args.episode_limit=20", "num_envs=4",
    "buffer_size=32", "batch_size=6", "max_traj_len=16", "updates_per_rollout=2",
    "rollouts_per_chunk=2", "embed_dim=16", "hyper_dim=16", "hidden_dim=8", "mix_dim=8",
    "target_update_interval=8", "test_interval=200", "test_episodes=4", "log_interval=1",
    "progress=false", "total_env_steps=300", "num_seeds=1",
]
_AQL = ["aql.n_proposals=4", "aql.max_bs=40", "alloc.embed_dim=16", "alloc.batch_size=6"]
_LICA = ["lica.embed_dim=16", "lica.hyper_dim=16", "lica.hidden_dim=8", "lica.mix_dim=8",
         "num_envs=4"]
EXTRA = {"alma": _AQL, "lica": _LICA, "alma_lica": _AQL + _LICA}


# In CI: a flat method on starcraft_jax (allocating methods are trained end to end on
# SaveTheCity in test_trainer.py); every other combination runs with `pytest -m slow`.
@pytest.mark.parametrize("alg", ["aqmix", *(
    pytest.param(a, marks=pytest.mark.slow) for a in ("lica", "heuristic", "alma", "refil",
                                                      "copa", "alma_lica"))])
def test_trains_on_starcraft_jax(tmp_path, alg):
    cfg = load_config([f"alg={alg}", *TINY, *EXTRA.get(alg, []), f"out_dir={tmp_path}"])
    out = train_mod.run(cfg)
    assert int(np.min(np.asarray(out["state"].t_env))) >= 300
    records = [json.loads(ln) for ln in (Path(tmp_path) / "metrics.jsonl").read_text()
               .splitlines()]
    evals = [r for r in records if "eval/return_mean" in r["mean"]]
    chunks = [r for r in records if "learner_updates" in r["mean"]]
    assert len(evals) >= 2 and chunks
    for key in ("eval/battle_won_mean", "eval/dead_enemies_mean", "eval/return_mean"):
        assert np.isfinite(evals[-1]["mean"][key]), key
    # SMAC's scaled reward: an episode earns at most reward_scale_rate = 20
    assert 0.0 <= evals[-1]["mean"]["eval/return_mean"] <= 20.0 + 1e-4
    loss = "losses/critic_loss" if alg.endswith("lica") else "losses/q_loss"
    assert np.isfinite(chunks[-1]["mean"][loss]) and chunks[-1]["mean"][loss] != 0.0
    if alg == "aqmix":  # a flat method evaluates from its checkpoint, with a GIF of a battle
        from alma_jax.evaluate import evaluate

        summary = evaluate(tmp_path, episodes=4, gif=str(tmp_path / "battle.gif"),
                           gif_episodes=1)
        assert summary["allocation"] == "None" and summary["gif_frames"] >= 2
        assert (tmp_path / "battle.gif").stat().st_size > 0


MULTIARMY = ["env=multiarmy_jax", "+env_args.episode_limit=20",
             "+env_args.team_sizes=[3,4]"]


@pytest.mark.parametrize("alg", [
    pytest.param(a, marks=pytest.mark.slow) for a in ("alma", "heuristic", "aqmix", "lica",
                                                      "refil", "copa", "alma_lica")])
def test_trains_on_multiarmy_jax(tmp_path, alg):
    base = [o for o in TINY if not o.startswith(("env=", "env.", "+env_args"))]
    cfg = load_config([f"alg={alg}", *base, *MULTIARMY, *EXTRA.get(alg, []),
                       f"out_dir={tmp_path}"])
    out = train_mod.run(cfg)
    assert int(np.min(np.asarray(out["state"].t_env))) >= 300
    records = [json.loads(ln) for ln in (Path(tmp_path) / "metrics.jsonl").read_text()
               .splitlines()]
    evals = [r for r in records if "eval/return_mean" in r["mean"]]
    for key in ("eval/battle_won_mean", "eval/perc_armies_defeated_mean",
                "eval/base_infiltrated_mean", "eval/return_mean"):
        assert np.isfinite(evals[-1]["mean"][key]), key
    if alg in ("heuristic", "alma", "alma_lica"):  # the allocating methods
        assert "eval_alloc/agents_per_used_subtask" in evals[-1]["mean"]
    chunks = [r for r in records if "learner_updates" in r["mean"]]
    if alg == "alma":
        assert np.isfinite(chunks[-1]["mean"]["losses/alloc_q_loss"])


def test_bad_starcraft_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="allowed.*map_name"):
        load_config(["env=starcraft_jax", "+env_args.nope=1", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown starcraft_jax map_name"):
        load_config(["env=starcraft_jax", "env.map_name=4m", f"out_dir={tmp_path}"])
