"""How fast does credit reach the agents through the mixer? A one-step navigation check.

    python benchmarks/mixer_credit.py [--updates 300] [--scenario 2-5a_2-5b] \
        [--variants softmax:0.0005 abs:0.0005 softmax:0.002]

Random-policy episodes (heuristic allocation) are collected once with the trainer's rollout.
Their subtask rewards are then replaced by a reward that depends only on the row's own state
and actions: subtask k gets +1 for every agent allocated to k whose action moves it closer
(Manhattan distance, positions read from the entity features) to k's building. With gamma = 0
the low-level learner (`alg=heuristic` sizes: embed 32, mixer 16) has to learn exactly "move
towards your building"; its greedy agents' fraction of closer moves is reported as updates go.
Each variant is `mixing:lr` with mixing `softmax` (the paper's softmax mixing weights, alma.md
2.3) or `abs` (absolute values, as in QMIX), Pop-Art on, RMSProp as in the paper. Prints one
JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from alma_jax import buffer as bf  # noqa: E402
from alma_jax.avail import parse_avail  # noqa: E402
from alma_jax.config import load_config  # noqa: E402
from alma_jax.learners.qmix import QMixLearner  # noqa: E402
from alma_jax.trainer import make_train  # noqa: E402
from envs_jax.savethecity.env import MOVE_DELTA, decode_entities  # noqa: E402


def closer(w: bf.Window, actions: jax.Array, alloc: jax.Array) -> jax.Array:
    """[B, T, NA] 1.0 where the agent's action moves it closer to its allocated building."""
    na = actions.shape[-1]
    pos = decode_entities(w.entities)[1]
    bld = pos[..., na:, :]  # non-agent entities are the buildings, task k = building k
    target = jnp.einsum("btak,btkd->btad", alloc.astype(jnp.int32), bld[..., : alloc.shape[-1], :])
    agent = pos[..., :na, :]
    moved = agent + jnp.asarray(MOVE_DELTA)[actions]
    d0 = jnp.abs(agent - target).sum(-1)
    d1 = jnp.abs(moved - target).sum(-1)
    return ((d1 < d0) & alloc.any(-1)).astype(jnp.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--scenario", default="2-5a_2-5b")
    ap.add_argument("--variants", nargs="*",
                    default=["softmax:0.0005", "abs:0.0005", "softmax:0.002"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(["alg=heuristic", f"env_args.scenario={args.scenario}", "embed_dim=32",
                       "hyper_dim=32", "hidden_dim=32", "mix_dim=16", "progress=false",
                       "rollouts_per_chunk=10", "buffer_size=200",
                       "epsilon_anneal_time=1000000000"])  # epsilon stays ~1: random data
    cfg = dataclasses.replace(cfg, updates_per_rollout=0)  # collect only
    fns = make_train(cfg)
    state = jax.jit(fns.init)(jax.random.PRNGKey(args.seed))
    state, _ = jax.jit(fns.chunk)(state)
    buf = state.buffer
    base = fns.learner.cfg
    example = jax.tree.map(lambda x: x[0, 0], buf.data)

    def run(mixing: str, lr: float) -> list[dict]:
        learner = QMixLearner(dataclasses.replace(
            base, gamma=0.0, lr=lr, softmax_mixing_weights=(mixing == "softmax")))

        @jax.jit
        def step(low, key):
            w = bf.sample_windows(buf, key, cfg.batch_size, cfg.max_traj_len)
            alloc = bf.stored_alloc(w)
            r = jnp.einsum("bta,btak->btk", closer(w, w.actions, alloc), alloc.astype(jnp.float32))
            return learner.update(low, w.replace(task_rewards=r), key)

        @jax.jit
        def greedy_closer(low, key):
            w = bf.sample_windows(buf, key, cfg.batch_size, cfg.max_traj_len)
            alloc = bf.stored_alloc(w)
            q = learner._utilities(low.params["agent"], w, alloc)
            avail = jax.vmap(jax.vmap(parse_avail, in_axes=(0, 0, None)),
                             in_axes=(0, 0, None))(w.avail_actions, alloc, False)
            greedy = jnp.argmax(jnp.where(avail, q, -jnp.inf), -1)
            live = bf.loss_mask(w)[..., None] & alloc.any(-1)
            live = live & ~w.entity_mask[..., : greedy.shape[-1]].astype(bool)
            return jnp.sum(closer(w, greedy, alloc) * live) / jnp.sum(live)

        low = learner.init(jax.random.PRNGKey(args.seed + 1), example)
        curve = []
        for i in range(args.updates + 1):
            if i % 50 == 0:
                frac = float(greedy_closer(low, jax.random.PRNGKey(10**6 + i)))
                curve.append({"updates": i, "greedy_closer_frac": round(frac, 4)})
                print(mixing, lr, curve[-1], file=sys.stderr)
            low, _ = step(low, jax.random.PRNGKey(i))
            if i % 25 == 24:
                low = learner.update_target(low)
        return curve

    t0 = time.perf_counter()
    out = {}
    for v in args.variants:
        mixing, lr = v.split(":")
        if mixing not in ("softmax", "abs"):
            raise SystemExit(f"variant {v!r}: mixing must be 'softmax' or 'abs'")
        out[v] = run(mixing, float(lr))
    print(json.dumps({"benchmark": "mixer_credit", "scenario": args.scenario,
                      "episodes": int(buf.size), "updates": args.updates, "results": out,
                      "wall_s": round(time.perf_counter() - t0, 1),
                      "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
