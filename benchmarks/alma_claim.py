"""ALMA's claim on one frozen low level: learned allocation vs the heuristic vs random.

The paper's zero-shot experiment (ALMA, Fig. 6b): low-level policies trained under the
heuristic allocation, then an allocation controller learned on top of them with the low level
frozen. Every arm below runs the SAME low-level parameters (greedy), only the allocator differs.

    # 1. the low level: the recipe=cpu heuristic learning check, exported (parameters only)
    python benchmarks/learning_curve.py --minutes 28 \
        --out benchmarks/results/alma_claim/low_heuristic \
        alg=heuristic recipe=cpu num_seeds=2 test_interval=100000 test_episodes=64
    python -m alma_jax.transfer export benchmarks/results/alma_claim/low_heuristic \
        benchmarks/results/alma_claim/low_heuristic.npz
    # 2. ALMA's allocator on it, low level frozen (resumable: rerun with resume=true)
    python -m alma_jax.train alg=alma recipe=cpu num_seeds=2 freeze_low=true \
        low_from=benchmarks/results/alma_claim/low_heuristic.npz out_dir=runs/alma_claim_alloc ...
    # 3. the three arms, >= 1,000 greedy episodes each, and the figure
    python benchmarks/alma_claim.py --low benchmarks/results/alma_claim/low_heuristic.npz \
        --alloc runs/alma_claim_alloc --episodes 512

Two diagnostic arms: the learned allocator's proposal network alone (its first sampled
proposal, no critic choice: `evaluate ... prop_eps=1`), and the learned allocator with every
agent kept on its previous subtask while that subtask is open (`evaluate ... keep_open=true`:
the heuristic's stability, the learned choice only for agents without an open subtask; not
ALMA). `--arms kept` runs only the named arms and merges them into an existing claim.json.

Writes `<out>/claim.json` ({"heuristic"|"learned"|"random"|"proposals": {"solved", "ci95",
"episodes", "buildings_completed", "return", ...}, "commands", "machine"}), `<out>/claim.png`
and, when
the allocator run's metrics exist, its curve (`<out>/alloc_curve.json`, kept in git).
Solved-rate intervals are Wilson 95% intervals over all episodes of all seeds pooled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from learning_curve import RANDOM_POLICY, read_curve  # noqa: E402

from alma_jax.evaluate import evaluate  # noqa: E402

ARMS = ("heuristic", "learned", "random", "proposals", "kept")
LABELS = {"heuristic": "heuristic", "learned": "learned\n(ALMA)", "random": "random",
          "proposals": "learned,\nproposals only", "kept": "learned,\nagents kept"}
ALLOC_KEYS = ("eval_alloc/agents_per_used_subtask", "eval_alloc/open_subtasks_without_agents",
              "eval_alloc/agents_switching")


def arm_summary(s: dict) -> dict:
    """The claim.json record of one evaluate() summary."""
    mean, per_seed, n = s["mean"], s["per_seed"], s["solved"]["episodes"]
    ret_sd = float(np.sqrt(np.mean(np.square(per_seed["eval/return_std"]))))
    ret = mean["eval/return_mean"]
    half = 1.959964 * ret_sd / np.sqrt(n)
    return {
        "solved": s["solved"]["rate"], "ci95": s["solved"]["ci95"], "episodes": n,
        "solved_per_seed": per_seed["eval/solved_mean"],
        "ci95_per_seed": s["solved"]["ci95_per_seed"],
        "buildings_completed": mean["eval/prop_buildings_completed_mean"],
        "buildings_completed_per_seed": per_seed["eval/prop_buildings_completed_mean"],
        "return": ret, "return_ci95": [ret - half, ret + half],
        "return_per_seed": per_seed["eval/return_mean"],
        "allocation": {k.split("/")[1]: mean[k] for k in ALLOC_KEYS if k in mean},
        "allocator": s["allocation"], "t_env": s["t_env"],
    }


def alloc_curve(run: Path, out: Path) -> dict | None:
    """The allocator run's greedy test curve (from metrics.jsonl, else the saved copy)."""
    metrics, saved = run / "metrics.jsonl", out / "alloc_curve.json"
    if metrics.exists():
        curve = {}
        for key in ("eval/solved_mean", "eval/prop_buildings_completed_mean",
                    "eval/return_mean", *ALLOC_KEYS, "eval_alloc/agents_per_used_subtask"):
            ts, v = read_curve(metrics, key)
            if ts:
                curve[key] = {"t_env": ts, "per_seed": v.tolist()}
        saved.write_text(json.dumps(curve, indent=1))
        return curve
    return json.loads(saved.read_text()) if saved.exists() else None


def plot(out: Path, result: dict, curve: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("solved", "ci95", "test solved rate"),
              ("buildings_completed", None, "buildings completed (fraction)"),
              ("return", "return_ci95", "test return")]
    n = len(panels) + (curve is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8))
    colors = {"heuristic": "tab:blue", "learned": "tab:red", "random": "tab:grey",
              "proposals": "tab:orange", "kept": "tab:purple"}
    arms = [arm for arm in ARMS if arm in result]
    for ax, (key, ci, title) in zip(axes, panels):
        for i, arm in enumerate(arms):
            r = result[arm]
            err = None
            if ci is not None:
                err = [[r[key] - r[ci][0]], [r[ci][1] - r[key]]]
            ax.bar(i, r[key], color=colors[arm], yerr=err, capsize=6)
            seeds = r[{"solved": "solved_per_seed", "return": "return_per_seed"}.get(
                key, "buildings_completed_per_seed")]
            ax.plot([i] * len(seeds), seeds, "k.", ms=5)
        ax.set_xticks(range(len(arms)), [LABELS[arm] for arm in arms], fontsize=8)
        ax.set_title(f"{title}\n(same frozen low level; dots = seeds)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if curve is not None:
        ax = axes[-1]
        c = curve["eval/solved_mean"]
        vals = np.array(c["per_seed"])
        for s in range(vals.shape[1]):
            ax.plot(c["t_env"], vals[:, s], marker="o", ms=3, color=colors["learned"],
                    alpha=0.5 + 0.5 * (s == 0), label=f"learned, seed {s}")
        h = result["heuristic"]
        ax.axhspan(h["ci95"][0], h["ci95"][1], color=colors["heuristic"], alpha=0.2,
                   label="heuristic (95% CI)")
        ax.axhline(RANDOM_POLICY["eval/solved_mean"], color="grey", ls="--", lw=1)
        ax.set(xlabel="allocator training env steps", ylabel="test solved rate",
               title="allocator training\n(64 greedy episodes per seed and point)")
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e3:.0f}k")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "claim.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--low", required=True, help="the low level: run dir or *.npz export")
    ap.add_argument("--alloc", required=True, help="the allocator: run dir or *.npz export")
    ap.add_argument("--episodes", type=int, default=512, help="per seed and arm")
    ap.add_argument("--out", default="benchmarks/results/alma_claim")
    ap.add_argument("--commands", nargs="*", default=[],
                    help="commands that made the inputs, one quoted string each")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                    help="arms to run; a subset is merged into <out>/claim.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"episodes": args.episodes, "gif": "none", "seed": 12345}
    runs = {
        "heuristic": lambda: evaluate(args.low, high="heuristic", **common),
        "learned": lambda: evaluate(args.low, high_from=args.alloc, **common),
        "random": lambda: evaluate(args.low, high="random", **common),
        # diagnostics: the proposal network alone (no critic choice); agents kept on their
        # open subtasks (does the learned allocator's switching cost the low level?)
        "proposals": lambda: evaluate(args.low, high_from=args.alloc, prop_eps=1.0, **common),
        "kept": lambda: evaluate(args.low, high_from=args.alloc, keep_open=True, **common),
    }
    result, old = {}, {}
    if set(args.arms) != set(ARMS) and (out / "claim.json").exists():
        old = json.loads((out / "claim.json").read_text())
        result = {arm: old[arm] for arm in ARMS if arm in old}
    result.update({arm: arm_summary(runs[arm]()) for arm in args.arms})
    missing = {"heuristic", "learned"} - set(result)
    if missing:
        raise SystemExit(f"alma_claim: no {sorted(missing)} arm in {out / 'claim.json'}; "
                         "run them too (--arms)")
    h, lrn = result["heuristic"], result["learned"]
    result["learned_ci_wholly_above_heuristic"] = bool(lrn["ci95"][0] > h["ci95"][1])
    # this invocation without --commands (whose text is already listed before it)
    me = ["python", "benchmarks/alma_claim.py", "--low", args.low, "--alloc", args.alloc,
          "--episodes", str(args.episodes), "--out", args.out]
    if set(args.arms) != set(ARMS):
        me += ["--arms", *args.arms]
    earlier = [c for c in old.get("commands", []) if c not in args.commands]
    result["commands"] = earlier + args.commands + [" ".join(me)]
    result["machine"] = machine_info()
    # an export has no metrics: the curve saved beside an earlier claim.json, if any
    curve = alloc_curve(Path(args.alloc), out)
    (out / "claim.json").write_text(json.dumps(result, indent=1))
    plot(out, result, curve)
    print(json.dumps({arm: {k: result[arm][k] for k in ("solved", "ci95", "episodes",
                                                        "buildings_completed", "return")}
                      for arm in ARMS if arm in result}, indent=1))


if __name__ == "__main__":
    main()
