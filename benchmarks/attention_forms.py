"""Ways to compute the masked attention block, timed forward and backward at the mixer's shapes.

    python benchmarks/attention_forms.py [--repeats 10] [--rounds 3]

- `keys_projected` (what `alma_jax.nn.attention.MaskedMHA` does): k and v projected for all NE
  entities, then the batched q·k and w·v products over 32-wide heads.
- `queries_pulled_back`: with NQ < NE queries, q·(x Wk) = (q Wk^T)·x, and the values are
  aggregated before their projection, so no entity is projected at all; fewer FLOPs, but the
  batched products become 128 wide.
- `heads_split_concat` / `heads_split_sum`: one product per head and per q/k/v, on that head's
  kernel columns, so each head's k and v come out [.., NE, 32] without the transposes that
  one [.., NE, 128] product split into heads needs; the heads then concatenated into the
  output layer, or each multiplied by its rows of the output kernel and summed.

All are the same function (checked: max gradient difference printed). Rows = 32 windows x 63
rows, 11 entities, 5 queries, 128 features, 4 heads. Best-of-`repeats` mean ms per call per
round, compile excluded; XLA-counted GFLOP. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

B, NE, NQ, D, H = 2016, 11, 5, 128, 4
HD = D // H


def _softmax_blocked(logits, blocked):
    w = jax.nn.softmax(jnp.where(blocked, -1e9, logits), -1)
    return jnp.where(blocked, 0.0, w)


def keys_projected(p, x, blocked):
    q = (x[:, :NQ] @ p["wq"]).reshape(B, NQ, H, HD)
    k = (x @ p["wk"]).reshape(B, NE, H, HD)
    v = (x @ p["wv"]).reshape(B, NE, H, HD)
    w = _softmax_blocked(jnp.einsum("bqhd,bkhd->bhqk", q, k) / HD**0.5, blocked[:, None])
    heads = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, NQ, D)
    return heads @ p["wo"] + p["bo"]


def queries_pulled_back(p, x, blocked):
    q = (x[:, :NQ] @ p["wq"]).reshape(B, NQ, H, HD)
    qk = jnp.einsum("bqhd,ehd->bqhe", q, p["wk"].reshape(D, H, HD))  # q Wk^T per head
    w = _softmax_blocked(jnp.einsum("bqhe,bke->bhqk", qk, x) / HD**0.5, blocked[:, None])
    agg = jnp.einsum("bhqk,bke->bqhe", w, x)  # values aggregated before their projection
    heads = jnp.einsum("bqhe,ehd->bqhd", agg, p["wv"].reshape(D, H, HD)).reshape(B, NQ, D)
    return heads @ p["wo"] + p["bo"]


def _head_outputs(p, x, blocked):
    outs = []
    for h in range(H):
        cols = slice(h * HD, (h + 1) * HD)
        q = x[:, :NQ] @ p["wq"][:, cols]
        k = x @ p["wk"][:, cols]
        v = x @ p["wv"][:, cols]
        w = _softmax_blocked(jnp.einsum("bqd,bkd->bqk", q, k) / HD**0.5, blocked)
        outs.append(jnp.einsum("bqk,bkd->bqd", w, v))
    return outs


def heads_split_concat(p, x, blocked):
    return jnp.concatenate(_head_outputs(p, x, blocked), -1) @ p["wo"] + p["bo"]


def heads_split_sum(p, x, blocked):
    outs = _head_outputs(p, x, blocked)
    return sum(o @ p["wo"][h * HD:(h + 1) * HD] for h, o in enumerate(outs)) + p["bo"]


FORMS = {"keys_projected": keys_projected, "queries_pulled_back": queries_pulled_back,
         "heads_split_concat": heads_split_concat, "heads_split_sum": heads_split_sum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ks = jax.random.split(jax.random.PRNGKey(0), 7)
    p = {n: jax.random.normal(k, (D, D)) * 0.1 for n, k in zip(("wq", "wk", "wv", "wo"), ks)}
    p["bo"] = jnp.zeros(D)
    x = jax.random.normal(ks[4], (B, NE, D))
    blocked = jax.random.bernoulli(ks[5], 0.2, (B, NQ, NE))
    fns = {n: jax.jit(jax.value_and_grad(lambda p, x, b, f=f: jnp.sum(jnp.tanh(f(p, x, b)))))
           for n, f in FORMS.items()}
    ref = fns["keys_projected"](p, x, blocked)
    rows = {}
    for n, f in fns.items():
        out = f(p, x, blocked)
        diff = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
        cost = f.lower(p, x, blocked).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        rows[n] = {"gflop": round(cost.get("flops", 0.0) / 1e9, 3), "max_diff": diff, "ms": []}
    for _ in range(args.rounds):  # alternate the forms, so drift hits both alike
        for n, f in fns.items():
            jax.block_until_ready(f(p, x, blocked))
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                out = f(p, x, blocked)
            jax.block_until_ready(out)
            rows[n]["ms"].append(round((time.perf_counter() - t0) / args.repeats * 1e3, 1))
    print(json.dumps({"benchmark": "attention_forms", "rows": B, "entities": NE, "queries": NQ,
                      "features": D, "heads": H, "notes": "forward + backward, ms per call",
                      "machine": machine_info(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
