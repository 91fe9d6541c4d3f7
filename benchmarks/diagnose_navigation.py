"""Why a SaveTheCity run does not solve episodes yet: does its greedy policy navigate?

    python benchmarks/diagnose_navigation.py --run benchmarks/results/heuristic_cpu_nstep5 \
        [--episodes 8] [--probe-steps 1000]

Two measurements, printed as one JSON document:

1. `greedy_moves` (needs `--run`, a directory with `config.json` and `checkpoint/`): greedy
   episodes of the run's first seed, host loop of `alma_jax.evaluate.play_episodes`; for every
   move an allocated agent makes, whether it brings the agent closer to (or farther from) its
   allocated building (Manhattan distance). A navigating policy moves closer far more often;
   a policy that has not learned to navigate moves closer about as often as farther.
2. `capacity_probe`: the spec's entity-attention agent (alma.md 2.2, here embed 32) trained by
   plain supervised regression (Adam, 256 fresh reset states a step, heuristic allocation,
   subtask mask) to say which of the four 1-cell moves reduce the distance to the allocated
   building. It separates "the network cannot represent navigation from absolute one-hot
   positions" from "Q-learning has not found it yet".

`greedy_moves` also reports each seed's Pop-Art scale `a` (alma.md 2.5) of the mixer outputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

MOVE_NAMES = ["stay", "N1", "E1", "S1", "W1", "N2", "E2", "S2", "W2", "extinguish", "build",
              "freeze"]


def greedy_moves(run: Path, episodes: int, seed: int) -> dict:
    from alma_jax.evaluate import load_run, play_episodes

    cfg, fns, saved, policy = load_run(run)
    first = jax.tree.map(lambda x: x[0], policy)
    played = play_episodes(fns, cfg, first, jax.random.PRNGKey(seed), episodes)
    counts: collections.Counter = collections.Counter()
    closer = farther = level = 0
    # The agents' utilities of their greedy actions: their scale against the mixer's ELU
    # (flat, gradient exp(x), far below zero) is one suspect for what stalls learning.
    low = jax.tree.map(lambda x: x[0], saved["low"].params)
    agent_q = jax.jit(fns.learner.agent_q)
    get_obs = jax.jit(fns.env.get_obs)
    chosen_q = []
    for ep in played:
        last = -np.ones(fns.env.n_agents, np.int32)
        for st, alloc, actions in zip(ep["states"][:-1], ep["allocations"][:-1],
                                      ep["actions"][:-1]):
            obs = get_obs(st)
            q = np.asarray(agent_q(low["agent"], obs.entities, obs.obs_mask, obs.entity_mask,
                                   obs.entity2task_mask, jnp.asarray(last),
                                   jnp.asarray(alloc)))
            valid = np.asarray(st.agent_valid)
            chosen_q.extend(q[np.arange(len(actions)), actions][valid].tolist())
            last = np.asarray(actions, np.int32)
    for ep in played:
        rows = zip(ep["states"][:-1], ep["allocations"][:-1], ep["actions"][:-1],
                   ep["states"][1:])
        for st, alloc, actions, nxt in rows:
            for i in range(st.agent_pos.shape[0]):
                if not st.agent_valid[i] or alloc is None or not alloc[i].any():
                    continue
                target = st.bld_pos[int(np.argmax(alloc[i]))]
                d0 = np.abs(st.agent_pos[i] - target).sum()
                d1 = np.abs(nxt.agent_pos[i] - target).sum()
                counts[MOVE_NAMES[int(actions[i])]] += 1
                if 1 <= actions[i] <= 8:
                    closer += int(d1 < d0)
                    farther += int(d1 > d0)
                    level += int(d1 == d0)
    mixer = saved["low"].params.get("mixer", {}).get("params", {})
    scale = np.asarray(mixer["popart_a"]) if "popart_a" in mixer else None
    return {"run": str(run), "alg": cfg.alg, "t_env": int(np.asarray(saved["t_env"])[0]),
            # Pop-Art scale a of each seed's mixer outputs (starts at 1; the agents'
            # gradients are multiplied by it)
            "popart_scale_per_seed": None if scale is None else np.round(scale, 4).tolist(),
            "episodes": episodes, "returns": [round(ep["return"], 2) for ep in played],
            "moves_closer": closer, "moves_farther": farther, "moves_same_distance": level,
            "greedy_utility_quantiles": dict(zip(
                ("min", "q25", "median", "q75", "max"),
                np.round(np.quantile(chosen_q, [0, 0.25, 0.5, 0.75, 1]), 2).tolist())),
            "action_counts": dict(counts.most_common())}


def capacity_probe(steps: int, seed: int, embed_dim: int = 32) -> dict:
    import optax

    import envs_jax
    from alma_jax.nn import EntityAttentionAgent, entity_inputs, membership
    from envs_jax.savethecity.env import heuristic_allocation

    env = envs_jax.make("savethecity")
    na = env.n_agents
    net = EntityAttentionAgent(n_agents=na, n_actions=env.n_actions, embed_dim=embed_dim,
                               hidden_dim=32, subtask_cond="mask")

    def sample(key):
        obs, st = env.reset(key)
        alloc = heuristic_allocation(st)
        d = st.bld_pos[jnp.argmax(alloc, -1)] - st.agent_pos  # [A, 2]
        # N (y+1), E (x+1), S (y-1), W (x-1): which 1-cell moves get closer
        good = jnp.stack([d[:, 1] > 0, d[:, 0] > 0, d[:, 1] < 0, d[:, 0] < 0], -1)
        x = entity_inputs(obs.entities, jnp.zeros((na, env.n_actions)))
        return (x, obs.obs_mask, obs.entity_mask, membership(obs.entity2task_mask, alloc),
                good.astype(jnp.float32), st.agent_valid & jnp.any(alloc, -1))

    batch = jax.vmap(sample)
    key = jax.random.PRNGKey(seed)
    x, om, em, mem, _, _ = batch(jax.random.split(key, 2))
    params = net.init(key, x[0], om[0], em[0], mem[0])
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, key):
        x, om, em, mem, good, valid = batch(jax.random.split(key, 256))

        def loss(p):
            logits = jax.vmap(lambda *a: net.apply(p, *a))(x, om, em, mem)[..., 1:5]
            per_agent = optax.sigmoid_binary_cross_entropy(logits, good).mean(-1)
            right = ((logits > 0) == (good > 0.5)).all(-1)
            n = valid.sum()
            return (per_agent * valid).sum() / n, (right * valid).sum() / n

        (value, acc), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, acc

    curve, t0 = [], time.perf_counter()
    for i in range(steps + 1):
        key, k = jax.random.split(key)
        params, opt_state, value, acc = step(params, opt_state, k)
        if i % max(steps // 8, 1) == 0:
            curve.append({"step": i, "loss": round(float(value), 5),
                          "all_four_moves_right": round(float(acc), 4)})
    return {"embed_dim": embed_dim, "batch": 256, "steps": steps, "curve": curve,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="run directory (greedy_moves)")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--probe-steps", type=int, default=1000, help="0 skips the probe")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    doc: dict = {"benchmark": "diagnose_navigation", "machine": machine_info()}
    if args.run is not None:
        doc["greedy_moves"] = greedy_moves(args.run, args.episodes, args.seed)
    if args.probe_steps:
        doc["capacity_probe"] = capacity_probe(args.probe_steps, args.seed)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
