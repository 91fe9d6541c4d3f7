"""Battles a person would check on `starcraft_jax` maps: who wins under scripted play.

    python benchmarks/starcraft_sanity.py [--maps 3m 8m ...] [--battles 512] [--out FILE]

Per map, `--battles` vmapped battles of each:
- `attack_move`: both teams attack-move toward the other's start (SMAC's scripted opponent on
  both sides): on symmetric maps each side should win about half;
- `focus_fire` / `spread_fire`: the agents in SMAC's action space against the scripted
  enemies (`envs_jax.starcraft.scripted`): focus fire should win more.
And per multi-army family (`multiarmy_jax`), a scripted low level (each agent fights the
nearest enemy of its allocated army) under three allocations re-chosen every 3 steps: the
env's heuristic, uniformly random, and everyone on the first open army.
Prints (and with --out writes) one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402
from envs_jax.starcraft import MAPS, scripted  # noqa: E402


def run_map(name: str, n: int, seed: int) -> dict:
    env = envs_jax.make("starcraft_jax", map_name=name)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    agents, enemies = jax.jit(jax.vmap(lambda k: scripted.attack_move_battle(env, k)))(keys)
    row = {"map": name, "battles": n,
           "attack_move": {"agents_won": float(agents.mean()),
                           "enemies_won": float(enemies.mean())}}
    for pol in ("focus_fire", "spread_fire"):
        fn = getattr(scripted, pol)
        out = jax.jit(jax.vmap(lambda k, fn=fn: scripted.play(env, fn, k)))(keys)
        row[pol] = {"battle_won": float(out["battle_won"].mean()),
                    "return": float(out["return"].mean()),
                    "length": float(out["length"].mean())}
    return row


def run_family(name: str, n: int, seed: int) -> dict:
    from envs_jax.bridge.sc2multiarmy import SCENARIOS  # noqa: F401 (listed in --families)

    env = envs_jax.make("multiarmy_jax", scenario=name)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    row = {"scenario": name, "episodes": n}
    for how in ("heuristic", "random", "first"):
        out = jax.jit(jax.vmap(lambda k, how=how: scripted.army_play(env, how, k)))(keys)
        row[how] = {k: float(v.mean()) for k, v in out.items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    ap.add_argument("--battles", type=int, default=512)
    ap.add_argument("--families", nargs="*", default=None,
                    help="multiarmy_jax scenarios (default: all four; none: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for name in args.maps:
        t0 = time.perf_counter()
        rows.append(run_map(name, args.battles, args.seed))
        print(json.dumps(rows[-1]), f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    from envs_jax.bridge.sc2multiarmy import SCENARIOS

    army_rows = []
    for name in (SCENARIOS if args.families is None else args.families):
        t0 = time.perf_counter()
        army_rows.append(run_family(name, args.battles, args.seed))
        print(json.dumps(army_rows[-1]), f"({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    doc = {"benchmark": "starcraft_sanity", "command": " ".join(sys.argv),
           "machine": machine_info(), "results": rows, "multiarmy": army_rows}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
