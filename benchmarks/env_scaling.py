"""SaveTheCity throughput vs num_envs and vs team size (agents, subtasks) across families.

    python benchmarks/env_scaling.py [--num-envs 1 16 256 1024] [--scenario-envs 256] \
        [--scenarios 2-5a_2-5b ... 24a_24b] [--steps 64] [--plot env_scaling.png]

The loops of `benchmarks/_env_loop.py` (random valid actions sampled inside the jitted
`lax.scan`, observations consumed every step), stepping as the trainer's rollout does by
default (`step_batch`, no auto-reset; `--step auto_reset` steps with
`env.step_autoreset_batch` in the steady state, as env_throughput.py). Two sweeps: num_envs
at `--scenario` and, at `--scenario-envs` environments, every scenario family, whose static
sizes grow with the largest team: n_agents agents, n_tasks = n_agents + 1 buildings (one
subtask each), n_entities = agents + buildings. Compile time is measured separately and
excluded. A log-log fit of the cost per env step against n_entities summarises the growth.
Prints one JSON document; `--plot` also writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env_loop import make_loop, time_loop  # noqa: E402
from _machine import machine_info  # noqa: E402

import envs_jax  # noqa: E402

FAMILIES = ["2-5a_2-5b", "2-8a_2-8b", "2-10a_2-10b", "12a_12b", "16a_16b", "20a_20b",
            "24a_24b"]


def measure(env, num_envs: int, num_steps: int, repeats: int, step: str,
            terminal_obs: bool) -> dict:
    """Best-of-`repeats` env steps/s of one configuration; compile timed separately."""
    if step == "auto_reset":
        mode = "autoreset_terminal" if terminal_obs else "autoreset"
    else:
        mode = "trainer"
    init, run = make_loop(env, num_envs, num_steps, mode)
    return time_loop(init, run, num_envs, num_steps, repeats)


def sizes(env) -> dict:
    return {"n_agents": env.n_agents, "n_tasks": env.n_tasks, "n_entities": env.n_entities,
            "entity_dim": env.entity_dim, "n_actions": env.n_actions}


def with_costs(res: dict, env) -> dict:
    """Add per-step costs: microseconds per env step and agent steps per second."""
    us = 1e6 / res["env_steps_per_s"]
    return {**res, **sizes(env), "us_per_env_step": round(us, 3),
            "agent_steps_per_s": res["env_steps_per_s"] * env.n_agents}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="2-5a_2-5b", help="scenario of the num_envs sweep")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 256, 1024])
    ap.add_argument("--scenarios", nargs="+", default=FAMILIES)
    ap.add_argument("--scenario-envs", type=int, default=256,
                    help="environments of the scenario sweep")
    ap.add_argument("--steps", type=int, default=64, help="scan length per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--step", choices=["no_reset", "auto_reset"], default="no_reset",
                    help="no_reset: step_batch as the trainer's rollout does; auto_reset: "
                         "env.step as benchmarks/env_throughput.py (a reset inside every step)")
    ap.add_argument("--terminal-obs", action="store_true",
                    help="with auto_reset: also consume info['terminal_obs']")
    ap.add_argument("--plot", default=None, help="write a PNG here")
    args = ap.parse_args()

    by_envs = []
    env = envs_jax.make("savethecity", scenario=args.scenario)
    for n in args.num_envs:
        res = measure(env, n, args.steps, args.repeats, args.step, args.terminal_obs)
        res = with_costs(res, env)
        print(json.dumps(res), file=sys.stderr, flush=True)
        by_envs.append(res)
    by_scenario = []
    for name in args.scenarios:
        env = envs_jax.make("savethecity", scenario=name)
        res = measure(env, args.scenario_envs, args.steps, args.repeats, args.step,
                      args.terminal_obs)
        res = {"scenario": name, **with_costs(res, env)}
        print(json.dumps(res), file=sys.stderr, flush=True)
        by_scenario.append(res)
    fit = None
    if len(by_scenario) >= 2:
        ne = np.log([r["n_entities"] for r in by_scenario])
        us = np.log([r["us_per_env_step"] for r in by_scenario])
        slope, _ = np.polyfit(ne, us, 1)
        fit = {"us_per_env_step_vs_n_entities_loglog_slope": round(float(slope), 3),
               "meaning": "cost per env step ~ n_entities ** slope across the families"}
    doc = {
        "benchmark": "env_scaling", "env": "savethecity",
        "actions": "uniform over available, sampled in the jitted loop",
        "step": args.step,
        "observations": "full obs + terminal obs consumed"
        if args.terminal_obs and args.step == "auto_reset" else "full obs consumed",
        "steps_per_env": args.steps, "repeats": args.repeats,
        "machine": machine_info(),
        "num_envs_sweep": {"scenario": args.scenario, "results": by_envs},
        "scenario_sweep": {"num_envs": args.scenario_envs, "results": by_scenario, "fit": fit},
    }
    print(json.dumps(doc, indent=1))
    if args.plot:
        plot(doc, args.plot)


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    envs = doc["num_envs_sweep"]["results"]
    ax = axes[0]
    ax.plot([r["num_envs"] for r in envs], [r["env_steps_per_s"] for r in envs], "o-")
    ax.set(xscale="log", yscale="log", xlabel="num_envs", ylabel="env steps / s",
           title=f"{doc['num_envs_sweep']['scenario']}: throughput vs num_envs")
    ax.grid(alpha=0.3, which="both")
    scen = doc["scenario_sweep"]["results"]
    ax = axes[1]
    x = [r["n_entities"] for r in scen]
    ax.plot(x, [r["us_per_env_step"] for r in scen], "o-", label="µs per env step")
    for r in scen:
        ax.annotate(f"{r['scenario']}\n{r['n_agents']}a/{r['n_tasks']}t", (r["n_entities"],
                    r["us_per_env_step"]), fontsize=7, textcoords="offset points",
                    xytext=(4, -10))
    fit = doc["scenario_sweep"]["fit"]
    title = f"{doc['scenario_sweep']['num_envs']} envs: cost vs team size"
    if fit:
        title += f" (slope {fit['us_per_env_step_vs_n_entities_loglog_slope']})"
    ax.set(xscale="log", yscale="log", xlabel="n_entities (agents + buildings)",
           ylabel="µs per env step", title=title)
    ax.grid(alpha=0.3, which="both")
    m = doc["machine"]
    fig.suptitle(f"SaveTheCity, {doc['step']}, {doc['observations']} ({m['backend']}, "
                 f"{m['cores']} cores)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
