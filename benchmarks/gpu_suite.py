"""Everything the README's GPU table needs, in one command of under 8 minutes on one GPU.

    python benchmarks/gpu_suite.py [--out benchmarks/results/gpu_suite.json] [--quick]

Runs, each as its own process with a time limit (475 s in all), at GPU sizes (thousands of
envs, 8-32 seeds): `env_throughput.py` (1k-64k envs), `train_throughput.py` (`heuristic` and
`alma` at 1,024 envs, fp32 and bf16), `seeds.py` (1, 8 and 16 vmapped seeds against as many
separate runs), `memory.py` (seeds and buffers that fit in this device's memory, up to 32
seeds) and `update_cost.py` (every learner, fp32 and bf16). Writes one JSON
with every part's document (or its error) and prints the README's GPU table in Markdown.
`--quick` shrinks every size so the whole suite can be checked on a CPU in a few minutes;
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (name, script, arguments at GPU sizes, arguments with --quick, time limit in seconds)
PARTS = [
    ("env_throughput", "env_throughput.py",
     ["--num-envs", "1024", "4096", "16384", "65536", "--repeats", "3"],
     ["--num-envs", "64", "--steps", "32", "--repeats", "1"], 60),
    ("train_throughput", "train_throughput.py",
     ["--alg", "heuristic", "alma", "--num-envs", "1024", "--precision", "fp32", "bf16",
      "--rollouts", "2"],
     ["--alg", "heuristic", "--num-envs", "8", "--rollouts", "1", "--buffer-size", "64"], 150),
    ("seeds", "seeds.py", ["--seeds", "1", "8", "16", "--chunks", "2"],
     ["--seeds", "1", "2", "--chunks", "1"], 100),
    ("memory", "memory.py", ["--seeds", "1", "8", "32", "--buffer-sizes", "5000", "20000"],
     ["--seeds", "1", "2", "--buffer-sizes", "100"], 45),
    ("update_cost", "update_cost.py",
     ["--learners", "heuristic", "aqmix", "alma_alloc", "lica", "--precision", "fp32", "bf16",
      "--top", "8"],
     ["--learners", "heuristic", "--top", "0", "--repeats", "1", "batch_size=4"], 120),
]


def run_part(script: str, args: list[str], limit: int) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                              text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"over its {limit} s limit", "wall_s": limit}
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["exit " + str(proc.returncode)],
                "wall_s": wall}
    return {"result": json.loads(proc.stdout), "wall_s": wall}


def table(parts: dict, device: str = "one GPU") -> str:
    """The README's GPU table: one line per headline figure; failed parts are left out."""
    rows = []

    def res(name):
        return parts.get(name, {}).get("result", {}).get("results", [])

    for r in res("env_throughput"):
        rows.append((f"SaveTheCity env steps/s, {r['num_envs']:,} envs",
                     f"{r['env_steps_per_s']:,}"))
    for r in res("train_throughput"):
        rows.append((f"training env steps/s, `{r['alg']}`, {r['num_envs']} envs, "
                     f"{r['precision']}", f"{r['env_steps_per_s']:,}"))
    for r in res("update_cost"):
        rows.append((f"one `{r['learner']}` gradient step ({r['batch']}), {r['precision']}",
                     f"{r['step_s'] * 1e3:.1f} ms, {r['gflop_per_s']} GFLOP/s"))
    for r in res("seeds"):
        v = r.get("vmapped", {})
        rows.append((f"{r['num_seeds']} seeds vmapped, training env steps/s (all seeds)",
                     f"{v.get('env_steps_per_s_excl_compile', '-'):,} "
                     f"({r.get('speedup_excl_compile', '-')}x separate runs)"))
    if not rows:
        return "GPU: not measured (every part failed; see the JSON)\n"
    lines = [f"| what ({device}) | figure |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    from _machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_suite.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    parts = {}
    for name, script, gpu_args, quick_args, limit in PARTS:
        parts[name] = run_part(script, quick_args if args.quick else gpu_args, limit)
        status = parts[name].get("error", "ok")
        print(f"{name}: {status} ({parts[name]['wall_s']} s)", file=sys.stderr, flush=True)
    machine = machine_info()
    device = f"{machine['device']}, {machine['backend']}" + (", --quick" if args.quick else "")
    doc = {"benchmark": "gpu_suite", "quick": args.quick, "machine": machine,
           "wall_s": round(time.perf_counter() - t0, 1), "parts": parts,
           "table": table(parts, device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(doc["table"])


if __name__ == "__main__":
    main()
