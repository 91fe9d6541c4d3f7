"""bf16 against fp32 learning: two `learning_curve.py` results in one figure, and a verdict.

    python benchmarks/learning_curve.py --minutes 28 --out benchmarks/results/training_cost/bf16 \
        alg=heuristic recipe=cpu num_seeds=2 test_interval=100000 test_episodes=64 precision=bf16
    python benchmarks/precision_check.py --fp32 benchmarks/results/training_cost/fp32 \
        [more fp32 runs ...] --bf16 benchmarks/results/training_cost/bf16 \
        --out benchmarks/results/training_cost

For each test metric (solved rate, buildings completed, return) the bf16 run's seed mean is
compared, at each of its evaluation points up to the shortest run's last one, with the range
of every fp32 seed (of all `--fp32` runs pooled) at the same env steps (linear interpolation
between each run's evaluation points). Reports the fraction of points inside that range,
widened for rates by the binomial standard error of one evaluation's test episodes, and the
same against each fp32 run alone; writes `precision_check.png` (every run: seed mean and
min-max band) and `precision_check.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import finish_axes  # noqa: E402

METRICS = (("eval_solved_per_seed", "eval/solved_mean", "test solved rate", True),
           ("eval_prop_buildings_completed_per_seed", "eval/prop_buildings_completed_mean",
            "test buildings completed", True),
           ("eval_return_per_seed", "eval/return_mean", "test return", False))


def load(path: Path) -> dict:
    path = path / "curve.json" if path.is_dir() else path
    return json.loads(path.read_text())


def test_episodes(curve: dict) -> int:
    for o in curve.get("overrides", []):
        if o.startswith("test_episodes="):
            return int(o.split("=", 1)[1])
    return 64


def compare(fp32s: list[dict], bf16: dict) -> dict:
    t16 = np.array(bf16["t_env"], float)
    upto = min([t16[-1]] + [f["t_env"][-1] for f in fp32s])
    sel = t16 <= upto
    n_eps = test_episodes(bf16) * len(bf16[METRICS[0][0]][0])  # episodes per seed-mean point
    out = {"compared_up_to_env_steps": int(upto), "points": int(sel.sum()),
           "fp32_seeds": sum(len(f[METRICS[0][0]][0]) for f in fp32s)}
    for key, _, label, is_rate in METRICS:
        v16 = np.array(bf16[key], float)
        # every fp32 seed's curve at the bf16 evaluation points: [points, seeds]
        seeds = np.concatenate([
            np.stack([np.interp(t16[sel], f["t_env"], np.array(f[key], float)[:, i])
                      for i in range(len(f[key][0]))], 1) for f in fp32s], 1)
        lo, hi = seeds.min(1), seeds.max(1)
        mean16 = v16[sel].mean(1)
        # a rate from n episodes moves by about sqrt(p(1-p)/n) between identical policies
        slack = np.sqrt(np.clip(mean16 * (1 - mean16), 0, None) / n_eps) if is_rate else 0.0
        inside = (mean16 >= lo - slack) & (mean16 <= hi + slack)
        out[label] = {"fraction_inside_fp32_range": round(float(inside.mean()), 3),
                      "bf16_mean_at_end": round(float(mean16[-1]), 4),
                      "fp32_seed_range_at_end": [round(float(lo[-1]), 4),
                                                 round(float(hi[-1]), 4)]}
    return out


def plot(runs: list[tuple[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(15, 4))
    for name, curve in runs:
        t = curve["t_env"]
        for ax, (key, _, label, _) in zip(axes, METRICS):
            v = np.array(curve[key], float)
            (line,) = ax.plot(t, v.mean(1), marker="o", ms=3,
                              label=f"{name} ({v.shape[1]} seeds)")
            ax.fill_between(t, v.min(1), v.max(1), color=line.get_color(), alpha=0.2)
            ax.set(xlabel="env steps", ylabel=label)
    finish_axes(axes, [rkey for _, rkey, _, _ in METRICS])
    fig.suptitle("recipe=cpu heuristic on 2-5a_2-5b: bf16 vs fp32 (seed mean, band = min-max)")
    fig.tight_layout()
    fig.savefig(out / "precision_check.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, nargs="+", required=True,
                    help="learning_curve.py outputs (dirs), pooled as the fp32 seed range")
    ap.add_argument("--bf16", type=Path, required=True, help="learning_curve.py output (dir)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fp32s, bf16 = [load(p) for p in args.fp32], load(args.bf16)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(f"fp32: {p.name}, {f.get('machine', {}).get('cpu', '?')}", f)
            for p, f in zip(args.fp32, fp32s)]
    plot(runs + [(f"bf16: {args.bf16.name}, {bf16.get('machine', {}).get('cpu', '?')}", bf16)],
         args.out)
    doc = {"benchmark": "precision_check", "fp32": [str(p) for p in args.fp32],
           "bf16": str(args.bf16), "bf16_overrides": bf16.get("overrides"),
           "pooled": compare(fp32s, bf16),
           "against_each_fp32_run": {str(p): compare([f], bf16) for p, f in zip(args.fp32, fp32s)}}
    (args.out / "precision_check.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
