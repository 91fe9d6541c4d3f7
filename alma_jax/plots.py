"""Seed aggregates (mean and interquartile range) of a run's metrics, and plots of them.

    python -m alma_jax.plots runs/heur [runs/alma ...] [--key eval/solved_mean ...] \\
        [--out curves.png]

`metrics.jsonl` records carry, next to the per-seed values and their `mean`, the seed
quantiles `q25`, `q75` and `iqr = q75 - q25` of every key (`seed_stats`, numpy's linear
interpolation, NaN seeds ignored). `plot_mean_iqr` draws a seed mean with its interquartile
band; `plot_runs` compares runs directory by directory and writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_KEYS = ("eval/solved_mean", "eval/return_mean")


def seed_stats(per_seed: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """`{"q25": {key: v}, "q75": {...}, "iqr": {...}}` over the seeds of every key.

    NaN seeds are ignored; a key whose seeds are all NaN gets NaN.
    """
    out: dict[str, dict[str, float]] = {"q25": {}, "q75": {}, "iqr": {}}
    for key, values in per_seed.items():
        v = np.asarray(values, dtype=float)
        if np.isfinite(v).any():
            with warnings.catch_warnings():  # an infinite seed makes the band infinite
                warnings.simplefilter("ignore", RuntimeWarning)
                q25, q75 = (float(q) for q in np.nanpercentile(v, [25.0, 75.0]))
        else:
            q25 = q75 = float("nan")
        out["q25"][key], out["q75"][key] = q25, q75
        out["iqr"][key] = q75 - q25
    return out


def read_metric(out_dir: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(t_env [N], per-seed values [N, S]) of `key` from `<out_dir>/metrics.jsonl`."""
    path = Path(out_dir)
    path = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
    ts, vals = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if key in rec["per_seed"]:
            ts.append(rec["t_env"])
            vals.append(rec["per_seed"][key])
    if not ts:
        raise KeyError(f"{key!r} is not logged in {path}")
    return np.asarray(ts), np.asarray(vals, dtype=float)


def aggregate(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, q25, q75) over the seed axis (last) of `values` [N, S], as in metrics.jsonl."""
    stats = [seed_stats({"v": row}) for row in np.atleast_2d(values)]
    with warnings.catch_warnings():  # all-NaN rows stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=-1)
    return (mean, np.array([s["q25"]["v"] for s in stats]),
            np.array([s["q75"]["v"] for s in stats]))


def plot_mean_iqr(ax: Any, t: np.ndarray, values: np.ndarray, label: str | None = None,
                  color: Any = None, alpha: float = 0.25) -> Any:
    """Draw the seed mean of `values` [N, S] against `t` with its interquartile band."""
    mean, q25, q75 = aggregate(values)
    n = values.shape[-1]
    line, = ax.plot(t, mean, color=color, label=f"{label} (n={n} seeds)" if label else None)
    ax.fill_between(t, q25, q75, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def plot_runs(runs: Mapping[str, str | Path], keys: Sequence[str] = DEFAULT_KEYS,
              path: str | Path | None = None) -> Any:
    """One panel per key, one mean + IQR curve per run (label -> run dir); PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, out_dir in runs.items():
            t, v = read_metric(out_dir, key)
            plot_mean_iqr(ax, t, v, label=label)
        ax.set(xlabel="env steps", ylabel=key, title=f"{key}: mean, IQR band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Plot seed mean and IQR of runs' metrics.")
    ap.add_argument("runs", nargs="+", help="run directories (out_dir of alma_jax.train)")
    ap.add_argument("--key", nargs="+", default=list(DEFAULT_KEYS))
    ap.add_argument("--out", default="curves.png")
    args = ap.parse_args(argv)
    plot_runs({Path(r).name: r for r in args.runs}, args.key, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
