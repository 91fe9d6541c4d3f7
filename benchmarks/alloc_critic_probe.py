"""Does ALMA's allocation critic prefer the heuristic's allocations or its own clumped picks?

    python benchmarks/alloc_critic_probe.py --low benchmarks/results/alma_claim/low_heuristic.npz \
        --alloc benchmarks/results/alma_claim/alloc.npz [--episodes 32] [--seeds 0 1]

Issue 17's diagnosis asks whether the learned allocator's failure (it clumps agents and
solves 3% of episodes where the heuristic allocation solves 18% on the same frozen low level)
sits in the critic or in the proposal network's search. For each allocator seed this plays
greedy episodes on the frozen low level under two behaviours, the env's heuristic allocation
and the learned allocator, and at every row of every episode asks the learned allocator, with
the allocation held before that row as `last_alloc`:

* its proposals (32 samples of the proposal network) and their critic values; `best` is the
  critic's pick, exactly as when acting;
* the critic's value of the heuristic's allocation of the same state, under the same TaskEmbed
  permutation as the proposals (a fair comparison);
* how clumped each allocation is (agents per staffed subtask, pooled over rows as the
  trainer's `eval_alloc` metrics; share of open subtasks left without agents), with the
  trainer's own `alma_jax.allocation.spread_terms`.

The critic values are denormalised with the allocator's Pop-Art statistics and compared with
the return that actually followed from that row in the critic's own units (rewards summed
over decision segments, divided by `action_length`, discounted by gamma per decision of
`action_length` rows: spec alma.md 3.9). Prints one JSON document; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from alma_jax.allocation import spread_terms  # noqa: E402
from alma_jax.evaluate import load_run, play_episodes  # noqa: E402
from alma_jax.learners.aql import AllocParams  # noqa: E402
from alma_jax.popart import denormalise  # noqa: E402
from envs_jax.savethecity import heuristic_allocation  # noqa: E402


def make_probe(learner, env):
    """Jitted probe of one row: (state, prev_alloc, key) -> dict of scalars."""

    def probe(params: AllocParams, stats, state, prev_alloc, key):
        obs = env.get_obs(state)
        _, props = learner.choose(params, key, obs, prev_alloc)
        heur = heuristic_allocation(obs).astype(bool) & ~obs.entity_mask[
            : env.n_agents, None].astype(bool)
        q_heur = learner.critic_value(params.critic, obs.entities, obs.entity_mask,
                                      obs.entity2task_mask, heur, props.critic_perm)
        spread = {name: spread_terms(a, obs.task_mask) for name, a in (
            ("best", props.allocs[props.best]), ("heuristic", heur),
            ("proposal", props.allocs[0]))}
        return {
            "q_best": denormalise(stats, props.values[props.best]),
            "q_heuristic": denormalise(stats, q_heur),
            "q_proposals_mean": denormalise(stats, jnp.mean(props.values)),
            "heuristic_beats_best": q_heur > props.values[props.best],
            "heuristic_rank": jnp.sum(props.values > q_heur),  # proposals valued above it
            "best_is_heuristic": jnp.all(props.allocs[props.best] == heur),
            **{f"on_staffed_{k}": v[0] for k, v in spread.items()},
            **{f"staffed_{k}": v[1] for k, v in spread.items()},
            **{f"open_without_agents_{k}": v[2] for k, v in spread.items()},
        }

    return jax.jit(jax.vmap(probe, in_axes=(None, None, 0, 0, 0)))


def segment_returns(rewards: np.ndarray, action_length: int, gamma: float) -> np.ndarray:
    """Per row t: the critic's target units from t on, with segments of action_length rows."""
    T = len(rewards)
    out = np.zeros(T)
    for t in range(T):
        r = rewards[t:]
        n_seg = -(-len(r) // action_length)
        segs = [r[i * action_length:(i + 1) * action_length].sum() / action_length
                for i in range(n_seg)]
        out[t] = sum(gamma ** i * s for i, s in enumerate(segs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--low", required=True)
    ap.add_argument("--alloc", required=True)
    ap.add_argument("--episodes", type=int, default=32, help="per behaviour and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cfg_l, fns_l, saved_l, pol_l = load_run(args.low, high_from=args.alloc)
    cfg_h, fns_h, _, pol_h = load_run(args.low, high="heuristic")
    learner, env = fns_l.high_learner, fns_l.env
    probe = make_probe(learner, env)
    gamma = learner.cfg.gamma
    result = {}
    for seed in args.seeds:
        high = jax.tree.map(lambda x, s=seed: jnp.asarray(x[s]), saved_l["high"])
        params = learner.alloc_params(high, 0.0, 0.0)
        per_arm = {}
        for arm, fns, cfg, pol in (("heuristic", fns_h, cfg_h, pol_h),
                                   ("learned", fns_l, cfg_l, pol_l)):
            one = jax.tree.map(lambda x, s=seed: x[s], pol)
            eps = play_episodes(fns, cfg, one, jax.random.PRNGKey(args.seed + seed),
                                args.episodes)
            rows, realised, solved = [], [], []
            key = jax.random.PRNGKey(10_000 + seed)
            for ep in eps:
                states = ep["states"][:-1]
                stacked = jax.tree.map(lambda *xs: np.stack(xs), *states)
                prev = [np.zeros((env.n_agents, env.n_tasks), bool)] + [
                    a for a in ep["allocations"][:-2]]
                key, k = jax.random.split(key)
                out = probe(params, high.critic_stats, stacked, np.stack(prev).astype(bool),
                            jax.random.split(k, len(states)))
                rows.append({k2: np.asarray(v) for k2, v in out.items()})
                realised.append(segment_returns(np.asarray(ep["rewards"][1:]),
                                                cfg.action_length, gamma))
                last = ep["states"][-1]
                solved.append(float(np.all((np.asarray(last.health) >= 1.0)
                                           | ~np.asarray(last.bld_valid))))
            cat = {k2: np.concatenate([r[k2] for r in rows]) for k2 in rows[0]}
            g = np.concatenate(realised)
            # pooled as the trainer's eval_alloc metrics: agents over staffed subtasks
            per_staffed = {f"agents_per_staffed_{k}": float(
                cat.pop(f"on_staffed_{k}").sum() / max(cat.pop(f"staffed_{k}").sum(), 1.0))
                for k in ("best", "heuristic", "proposal")}
            per_arm[arm] = {
                "episodes": len(eps), "rows": int(len(g)),
                "solved": float(np.mean(solved)),
                "return_per_episode": float(np.mean([e["return"] for e in eps])),
                **per_staffed,
                **{k2: float(np.mean(v)) for k2, v in cat.items()},
                "realised_return_from_row": float(np.mean(g)),
                "q_best_minus_realised": float(np.mean(cat["q_best"] - g)),
                "corr_q_best_realised": float(np.corrcoef(cat["q_best"], g)[0, 1]),
            }
            print(json.dumps({"seed": seed, "arm": arm, **per_arm[arm]}), file=sys.stderr,
                  flush=True)
        result[f"seed_{seed}"] = per_arm
    doc = {"benchmark": "alloc_critic_probe", "low": args.low, "alloc": args.alloc,
           "episodes_per_arm_and_seed": args.episodes, "machine": machine_info(),
           "command": " ".join(["python", *sys.argv]), "result": result}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
