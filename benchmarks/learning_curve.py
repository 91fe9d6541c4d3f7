"""Learning check: train, then plot greedy test solved rate (per seed) against env steps.

    python benchmarks/learning_curve.py --minutes 30 --out benchmarks/results/heuristic_cpu \
        alg=heuristic num_seeds=2 [key=value ...]

Runs `alma_jax.train` with the given overrides and a wall-clock budget (`max_wall_seconds`),
then reads `metrics.jsonl` and writes `curve.png` and `curve.json` (eval solved rate and
return per seed over env steps) into `--out`. The random policy solves 0% of episodes
(spec savethecity.md 12: policy U, 6000 episodes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from alma_jax.config import load_config  # noqa: E402
from alma_jax.train import run  # noqa: E402

# The uniformly random policy on 2-5a_2-5b (spec savethecity.md 12: policy U, 6000 episodes),
# drawn for scale in the learning-curve and comparison plots.
RANDOM_POLICY = {"eval/solved_mean": 0.0, "eval/prop_buildings_completed_mean": 0.0089,
                 "eval/return_mean": -43.35}


def finish_axes(axes, metric_keys) -> None:
    """Shared look of the env-step plots: the random policy's value of each panel's metric
    (RANDOM_POLICY key) dashed, a grid, a legend, and env steps in thousands."""
    for ax, key in zip(axes, metric_keys):
        ax.axhline(RANDOM_POLICY[key], color="grey", ls="--", lw=1, label="random policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e3:.0f}k")


def read_curve(metrics: Path, key: str) -> tuple[list[int], np.ndarray]:
    ts, vals = [], []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if key in rec["per_seed"]:
            ts.append(rec["t_env"])
            vals.append(rec["per_seed"][key])
    return ts, np.array(vals)


def plot(out: Path, alg: str, seed0: int, extra: dict) -> dict:
    """Write curve.json and curve.png from `<out>/metrics.jsonl`."""
    ts, solved = read_curve(out / "metrics.jsonl", "eval/solved_mean")
    _, ret = read_curve(out / "metrics.jsonl", "eval/return_mean")
    _, prop = read_curve(out / "metrics.jsonl", "eval/prop_buildings_completed_mean")
    result = {"benchmark": "learning_curve", "alg": alg, **extra, "machine": machine_info(),
              "t_env": ts, "eval_solved_per_seed": solved.tolist(),
              "eval_return_per_seed": ret.tolist(),
              "eval_prop_buildings_completed_per_seed": prop.tolist()}
    (out / "curve.json").write_text(json.dumps(result, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(solved, "test solved rate", "solved"), (prop, "buildings completed (fraction)",
                                                         "buildings completed"),
              (ret, "test return", "return")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (vals, ylabel, title) in zip(axes, panels):
        for s in range(vals.shape[1]):
            ax.plot(ts, vals[:, s], marker="o", ms=3, label=f"seed {seed0 + s}")
        ax.set(xlabel="env steps", ylabel=ylabel, title=f"{alg}: {title}")
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e3:.0f}k")
        ax.grid(alpha=0.3)
    for ax, key, shown in zip(axes, RANDOM_POLICY, ("0%", "0.9%", "-43.4")):
        ax.axhline(RANDOM_POLICY[key], color="grey", ls="--", lw=1,
                   label=f"random policy ({shown})")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--out", default="benchmarks/results/learning")
    ap.add_argument("--plot-only", action="store_true", help="re-plot an existing run in --out")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        saved = json.loads((out / "config.json").read_text())
        cfg_alg, seed0 = saved["alg"], saved["seed"]
    else:
        cfg = load_config([*args.overrides, f"out_dir={out}",
                           f"max_wall_seconds={int(args.minutes * 60)}", "progress=false"])
        run(cfg)
        cfg_alg, seed0 = cfg.alg, cfg.seed
    result = plot(out, cfg_alg, seed0, {"overrides": args.overrides, "minutes": args.minutes})
    print(json.dumps({k: result[k] for k in ("alg", "t_env", "eval_solved_per_seed")}))


if __name__ == "__main__":
    main()
