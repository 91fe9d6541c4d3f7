"""Learning curves of several methods at the same env-step budget, in one plot.

    python benchmarks/compare_methods.py --algs alma heuristic aqmix --steps 400000 \
        --minutes 60 --out benchmarks/results/compare num_seeds=2 [key=value ...]

Each method trains with the same overrides and `total_env_steps=--steps` (and a wall-clock cap
of `--minutes` per method, so a slow method stops early and its curve is shorter), one after
the other, in `<out>/<alg>/`. Then `<out>/compare.png` shows the greedy test solved rate, proportion
of buildings completed and return against env steps: the mean over seeds with the
interquartile range as a band, and the uniformly random policy's 2-5a_2-5b values dashed.
Each finished method also leaves `<out>/<alg>/curve.json` (its overrides, budget, wall time,
machine and per-seed curves); it is small and kept in git, so the figure can be rebuilt after the
gitignored `metrics.jsonl` is gone. `--plot-only` re-plots from `metrics.jsonl` where it exists,
else from `curve.json`. Prints one JSON document with every curve (also written to
`<out>/compare.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from learning_curve import finish_axes, read_curve  # noqa: E402

KEYS = (("eval/solved_mean", "test solved rate"),
        ("eval/prop_buildings_completed_mean", "test buildings completed"),
        ("eval/return_mean", "test return"))


def load_curves(run_dir: Path) -> dict | None:
    """{metric: {"t_env": [...], "per_seed": [[...], ...]}} from a run's metrics or curve.json."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        curves = {}
        for key, _ in KEYS:
            ts, v = read_curve(metrics, key)
            if ts:
                curves[key] = {"t_env": ts, "per_seed": v.tolist()}
        return curves
    saved = run_dir / "curve.json"
    if saved.exists():
        return json.loads(saved.read_text())["curves"]
    return None


def plot(out: Path, algs: list[str]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    fig, axes = plt.subplots(1, len(KEYS), figsize=(15, 4))
    for alg in algs:
        alg_curves = load_curves(out / alg)
        if alg_curves is None:
            print(f"compare_methods: no metrics.jsonl or curve.json in {out / alg}; skipped",
                  file=sys.stderr)
            continue
        curves[alg] = alg_curves
        for ax, (key, label) in zip(axes, KEYS):
            if key not in alg_curves:
                continue
            ts, v = alg_curves[key]["t_env"], np.array(alg_curves[key]["per_seed"])
            mean = v.mean(1)
            q25, q75 = np.percentile(v, 25, axis=1), np.percentile(v, 75, axis=1)
            (line,) = ax.plot(ts, mean, marker="o", ms=3, label=f"{alg} ({v.shape[1]} seeds)")
            ax.fill_between(ts, q25, q75, color=line.get_color(), alpha=0.2)
            ax.set(xlabel="env steps", ylabel=label)
    finish_axes(axes, [key for key, _ in KEYS])
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
            start = time.time()
            run(cfg)
            record = {"alg": alg, "steps": args.steps, "minutes": args.minutes,
                      "overrides": args.overrides, "wall_seconds": round(time.time() - start, 1),
                      "machine": machine_info(), "curves": load_curves(out / alg)}
            (out / alg / "curve.json").write_text(json.dumps(record, indent=1) + "\n")
    curves = plot(out, args.algs)
    doc = json.dumps({"benchmark": "compare_methods", "algs": args.algs, "steps": args.steps,
                      "minutes": args.minutes, "overrides": args.overrides,
                      "machine": machine_info(), "curves": curves})
    (out / "compare.json").write_text(doc + "\n")
    print(doc)


if __name__ == "__main__":
    main()
