"""A plain single-agent DQN on a one-agent SaveTheCity scenario: how hard is navigation?

    python benchmarks/reference_dqn.py [--iters 3000] [--scenario 1a_1b] \
        [--game init_fire_chance=0.0]

Not part of alma-jax's methods: a yardstick for the learning checks in the README. The agent
is an MLP (two hidden layers of 128) on the flattened entity features, trained by double DQN
on single transitions (64 auto-resetting environments, a 200k-transition replay, Adam 1e-3,
batches of 256, 4 updates per 16 collected steps per environment, a hard target copy every
500 updates, epsilon 1 -> 0.05 over the first third of the iterations). It prints one JSON
document: greedy solved rate (64 fresh episodes, first episode of each) against updates and
env steps, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from envs_jax import make  # noqa: E402

N_ENVS, STEPS_PER_ITER, UPDATES_PER_ITER, BATCH, CAPACITY = 64, 16, 4, 256, 200_000
TARGET_EVERY, GAMMA = 500, 0.99


class MLP(nn.Module):
    n_actions: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.n_actions)(x)


def build(env):
    net = MLP(env.n_actions)
    opt = optax.adam(1e-3)

    def feat(obs):
        return obs.entities.reshape(obs.entities.shape[:-2] + (-1,))

    def avail(obs):
        return obs.avail_actions[..., 0, :] >= 1

    def greedy(params, obs):
        return jnp.argmax(jnp.where(avail(obs), net.apply(params, feat(obs)), -jnp.inf), -1)

    @jax.jit
    def collect(params, obs, state, key, eps, buf, ptr):
        def body(c, k):
            obs, state, buf, ptr = c
            k_eps, k_rand, k_env = jax.random.split(k, 3)
            rand = jax.random.categorical(k_rand, jnp.where(avail(obs), 0.0, -jnp.inf))
            a = jnp.where(jax.random.uniform(k_eps, (N_ENVS,)) < eps, rand, greedy(params, obs))
            obs2, state2, r, done, info = jax.vmap(env.step)(
                jax.random.split(k_env, N_ENVS), state, a[:, None])
            final = info["terminal_obs"]  # the true next observation, also at time-outs
            idx = (ptr + jnp.arange(N_ENVS)) % CAPACITY
            new = dict(x=feat(obs), a=a, r=r, d=(done & ~info["episode_limit"]).astype(r.dtype),
                       x2=feat(final), av2=avail(final))
            buf = {k_: buf[k_].at[idx].set(v) for k_, v in new.items()}
            return (obs2, state2, buf, ptr + N_ENVS), None

        (obs, state, buf, ptr), _ = jax.lax.scan(body, (obs, state, buf, ptr),
                                                  jax.random.split(key, STEPS_PER_ITER))
        return obs, state, buf, ptr

    @jax.jit
    def train(params, target, opt_state, buf, size, key):
        def one(c, k):
            params, opt_state = c
            b = {n: v[jax.random.randint(k, (BATCH,), 0, size)] for n, v in buf.items()}
            a_next = jnp.argmax(jnp.where(b["av2"], net.apply(params, b["x2"]), -jnp.inf), -1)
            q_next = jnp.take_along_axis(net.apply(target, b["x2"]), a_next[:, None], -1)[:, 0]
            y = jax.lax.stop_gradient(b["r"] + GAMMA * (1.0 - b["d"]) * q_next)

            def loss(p):
                q = jnp.take_along_axis(net.apply(p, b["x"]), b["a"][:, None], -1)[:, 0]
                return jnp.mean((q - y) ** 2)

            grads = jax.grad(loss)(params)
            upd, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), None

        (params, opt_state), _ = jax.lax.scan(one, (params, opt_state),
                                              jax.random.split(key, UPDATES_PER_ITER))
        return params, opt_state

    @jax.jit
    def evaluate(params, key):
        obs, state = env.reset_batch(jax.random.split(key, N_ENVS))

        def body(c, k):
            obs, state, alive, solved = c
            obs2, state2, _, done, info = env.step_batch(
                jax.random.split(k, N_ENVS), state, greedy(params, obs)[:, None])
            solved = solved + jnp.where(alive & done, info["solved"], 0.0)
            return (obs2, state2, alive & ~done, solved), None

        init = (obs, state, jnp.ones(N_ENVS, bool), jnp.zeros(N_ENVS))
        (_, _, _, solved), _ = jax.lax.scan(body, init,
                                            jax.random.split(key, env.episode_limit))
        return solved.mean()

    return net, opt, feat, collect, train, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--scenario", default="1a_1b")
    ap.add_argument("--game", nargs="*", default=["init_fire_chance=0.0"], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250)
    args = ap.parse_args()
    game = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.game)}
    env = make("savethecity", scenario=args.scenario, game=game)
    if env.n_agents != 1:
        raise SystemExit(f"--scenario {args.scenario!r} has {env.n_agents} agent slots; this "
                         "reference is single-agent (try 1a_1b)")
    net, opt, feat, collect, train, evaluate = build(env)
    key = jax.random.PRNGKey(args.seed)
    key, k_reset, k_init = jax.random.split(key, 3)
    obs, state = env.reset_batch(jax.random.split(k_reset, N_ENVS))
    params = target = net.init(k_init, feat(obs))
    opt_state = opt.init(params)
    dim = feat(obs).shape[-1]
    buf = dict(x=jnp.zeros((CAPACITY, dim)), a=jnp.zeros(CAPACITY, jnp.int32),
               r=jnp.zeros(CAPACITY), d=jnp.zeros(CAPACITY), x2=jnp.zeros((CAPACITY, dim)),
               av2=jnp.zeros((CAPACITY, env.n_actions), bool))
    ptr, updates, curve = 0, 0, []
    anneal = max(args.iters // 3, 1)
    t0 = time.perf_counter()
    for it in range(args.iters + 1):
        key, k_col, k_train, k_eval = jax.random.split(key, 4)
        eps = max(0.05, 1.0 - 0.95 * it / anneal)
        obs, state, buf, ptr = collect(params, obs, state, k_col, eps, buf, ptr)
        if ptr >= 2 * BATCH:
            params, opt_state = train(params, target, opt_state, buf, min(ptr, CAPACITY),
                                      k_train)
            updates += UPDATES_PER_ITER
            if updates % TARGET_EVERY == 0:
                target = params
        if it % args.eval_every == 0:
            solved = float(evaluate(params, k_eval))
            curve.append({"iter": it, "env_steps": int(ptr), "updates": updates,
                          "epsilon": round(eps, 3), "greedy_solved": solved})
            print(json.dumps(curve[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "reference_dqn", "scenario": args.scenario, "game": game,
                      "wall_s": round(time.perf_counter() - t0, 1), "curve": curve,
                      "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
