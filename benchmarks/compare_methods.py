"""Learning curves of several methods at the same env-step budget, in one plot.

    python benchmarks/compare_methods.py --algs alma heuristic aqmix --steps 400000 \
        --minutes 60 --out benchmarks/results/compare num_seeds=2 [key=value ...]

Each method trains with the same overrides and `total_env_steps=--steps` (and a wall-clock cap
of `--minutes` per method, so a slow method stops early and its curve is shorter), one after
the other, in `<out>/<alg>/`. Then `<out>/compare.png` shows the greedy test solved rate and
return against env steps: the mean over seeds with the interquartile range as a band.
`--plot-only` re-plots existing runs. Prints one JSON document with every curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from learning_curve import read_curve  # noqa: E402


def plot(out: Path, algs: list[str]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = (("eval/solved_mean", "test solved rate"), ("eval/return_mean", "test return"))
    for alg in algs:
        metrics = out / alg / "metrics.jsonl"
        if not metrics.exists():
            continue
        curves[alg] = {}
        for ax, (key, label) in zip(axes, keys):
            ts, v = read_curve(metrics, key)
            if not ts:
                continue
            mean = v.mean(1)
            q25, q75 = np.percentile(v, 25, axis=1), np.percentile(v, 75, axis=1)
            (line,) = ax.plot(ts, mean, marker="o", ms=3, label=f"{alg} ({v.shape[1]} seeds)")
            ax.fill_between(ts, q25, q75, color=line.get_color(), alpha=0.2)
            ax.set(xlabel="env steps", ylabel=label)
            curves[alg][key] = {"t_env": ts, "per_seed": v.tolist()}
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e3:.0f}k")
    axes[0].axhline(0.0, color="grey", ls="--", lw=1)
    axes[1].axhline(-43.35, color="grey", ls="--", lw=1)
    fig.suptitle("SaveTheCity: greedy test episodes (mean over seeds, band = IQR)")
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algs", nargs="+", default=["alma", "heuristic", "aqmix"])
    ap.add_argument("--steps", type=int, default=400_000, help="env steps per method")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap per method")
    ap.add_argument("--out", default="benchmarks/results/compare")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.plot_only:
        from alma_jax.config import load_config
        from alma_jax.train import run

        for alg in args.algs:
            cfg = load_config([f"alg={alg}", *args.overrides, f"out_dir={out / alg}",
                               f"total_env_steps={args.steps}", "progress=false",
                               f"max_wall_seconds={int(args.minutes * 60)}"])
            run(cfg)
    curves = plot(out, args.algs)
    print(json.dumps({"benchmark": "compare_methods", "algs": args.algs, "steps": args.steps,
                      "minutes": args.minutes, "overrides": args.overrides,
                      "machine": machine_info(), "curves": curves}))


if __name__ == "__main__":
    main()
