"""SaveTheCity env steps/s: the ALMA paper's original numpy env against this JAX port, one run.

    python benchmarks/env_vs_original.py --orig-src PATH [--scenario 2-5a_2-5b]
        [--orig-steps 20000] [--num-envs 4096] [--steps 64] [--repeats 3]

PATH is the original's `src/envs/firefighters` directory, or a checkout root that holds it
(https://github.com/shariqiqbal2810/ALMA). The original is not shipped with this project and
is not installed: its package is loaded from PATH with importlib, under a private package
name, so that its relative import `from ..multiagentenv import MultiAgentEnv` finds the
checkout's own `src/envs/multiagentenv.py` (or a stand-in base class when that file is
missing). Only `firefighters/` is imported, never the original's `envs/__init__.py` (which
pulls in StarCraft II). matplotlib, imported by the original at module level, is forced to
the Agg backend.

Original side. The env is built as the original's `run.py` builds it: `scenario_dict =
scenarios[SCENARIO](rs=RandomState(0))` plus the `env_args` of its SaveTheCity config
`src/config/envs/ff.yaml` (entity_scheme, episode_limit 150, reward_scale 20,
end_on_any_burn False, game_config), read from the checkout when it has the file and PyYAML
is importable, else the same values copied here; `seed` as given (the original's
`FireFightersEnv.__init__` seeds numpy's global RNG with it). It is then stepped in this
process, one env, with actions drawn uniformly over each agent's available actions (numpy
`default_rng(seed)`, a generator separate from the env's global RNG), calling exactly the
methods the original's training loop calls. The ALMA configs (`config/algs/*.yaml`) use
`runner: parallel`, whose worker (`env_worker` in `src/runners/parallel_runner.py`) does:

  on "reset":  env.reset(test=False, index=None, n_tasks=None)  (which itself already builds
               get_entities() and get_masks() once), then get_masks(), get_entities(),
               get_avail_actions()
  on "step":   env.step(actions), then get_avail_actions(), get_masks(), get_entities()
               (also on the step that ends the episode)
  after an episode: get_stats()

`episode_runner.py` asks for the same three observation methods once per step, so both
runners build the same per-step observation. The actions of a step are drawn from the
availability returned after the previous step, as the runner's agents do. What is NOT
timed: the runner's Pipe/pickle traffic between processes, the torch batch writes and the
policy, so the original's number is an upper bound on its env speed per process. The timer
(`time.perf_counter`) covers `--orig-steps` env steps after `--orig-warmup` untimed ones,
resets (and their observations) included, as the JAX auto-reset loops include theirs.

JAX side. `benchmarks/_env_loop.py`: modes autoreset_terminal, autoreset and trainer, stepper
batch, `envs_jax.make("savethecity", scenario=...)` at `--num-envs` envs, plus one env in
mode autoreset_terminal (the like-for-like row: one env, observation and terminal
observation consumed). Compile time is measured and excluded. Every JAX row carries its
ratio to the original's env steps/s. Prints one JSON document; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HINT = ("clone https://github.com/shariqiqbal2810/ALMA and pass "
        "--orig-src ALMA/src/envs/firefighters (or --orig-src ALMA)")

# `env_args` of the original's src/config/envs/ff.yaml, used when the checkout lacks the file.
FF_ENV_ARGS = {
    "entity_scheme": True,
    "episode_limit": 150,
    "reward_scale": 20,
    "end_on_any_burn": False,
    "game_config": {
        "init_fire_chance": 0.4,
        "fire_burn_rate": 0.035,
        "fire_reduce_rate": 0.25,
        "fire_growth_rate": 1.1,
        "base_build_rate": 0.125,
        "generalist_help_factor": 0.45,
    },
}

# What the original's parallel runner asks of its env, in order (see the docstring).
RESET_CALLS = ("reset(test=False)", "get_masks", "get_entities", "get_avail_actions")
STEP_CALLS = ("step", "get_avail_actions", "get_masks", "get_entities")
EPISODE_END_CALLS = ("get_stats",)

JAX_MODES = ("autoreset_terminal", "autoreset", "trainer")

_load_counter = itertools.count()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_orig_src(path: str | os.PathLike) -> Path:
    """The original's `firefighters` package directory, from itself or from a checkout root."""
    p = Path(path).expanduser().resolve()
    for cand in (p, p / "src" / "envs" / "firefighters", p / "envs" / "firefighters"):
        if (cand / "__init__.py").is_file() and (cand / "firefighters.py").is_file():
            return cand
    raise FileNotFoundError(
        f"--orig-src {str(path)!r} (resolved to {p}) is neither the original's "
        "src/envs/firefighters directory (with __init__.py and firefighters.py) nor a "
        f"checkout root containing src/envs/firefighters; {HINT}"
    )


def load_original(ff_dir: str | os.PathLike) -> types.ModuleType:
    """Import the original's `firefighters` package from `ff_dir` without installing it.

    A private parent package (`_alma_orig_envs<N>`, pointing at `ff_dir`'s parent) stands in
    for the original's `envs` so the relative import `..multiagentenv` resolves, and the
    parent's own `__init__.py` (StarCraft II imports) is never run. Its `multiagentenv` is
    the checkout's file when present, else a stand-in with a bare `MultiAgentEnv`.
    """
    from envs_jax.bridge.workers import load_file_module

    ff_dir = resolve_orig_src(ff_dir)
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
    except ImportError:
        pass  # the original needs matplotlib; its own import will say so
    parent = f"_alma_orig_envs{next(_load_counter)}"
    pkg = types.ModuleType(parent)
    pkg.__path__ = [str(ff_dir.parent)]
    pkg.__package__ = parent
    sys.modules[parent] = pkg
    base_file = ff_dir.parent / "multiagentenv.py"
    if base_file.is_file():
        base = load_file_module(f"{parent}.multiagentenv", base_file)
    else:
        base = types.ModuleType(f"{parent}.multiagentenv")

        class MultiAgentEnv:  # the stand-in: the original's base only raises/pass-es
            def close(self):
                pass

        base.MultiAgentEnv = MultiAgentEnv
        sys.modules[base.__name__] = base
    pkg.multiagentenv = base
    module = load_file_module(f"{parent}.firefighters", ff_dir / "__init__.py", ff_dir)
    pkg.firefighters = module
    module.__alma_base_file__ = str(base_file) if base_file.is_file() else None
    return module


def ff_env_args(ff_dir: Path) -> tuple[dict, str]:
    """The `env_args` of the checkout's SaveTheCity config, and where they came from."""
    cfg_dir = ff_dir.parent.parent / "config" / "envs"
    cands = [cfg_dir / "ff.yaml"] + sorted(cfg_dir.glob("*fire*.y*ml"))
    for cfg in cands:
        if not cfg.is_file():
            continue
        try:
            import yaml
        except ImportError:
            break
        with open(cfg) as f:
            data = yaml.safe_load(f) or {}
        if isinstance(data.get("env_args"), dict):
            return dict(data["env_args"]), str(cfg)
    return json.loads(json.dumps(FF_ENV_ARGS)), "built-in copy of ALMA src/config/envs/ff.yaml"


def make_original_env(module: types.ModuleType, scenario: str, env_args: dict, seed: int):
    """`FireFightersEnv` with `scenario_dict = scenarios[scenario](rs=RandomState(0))`, as
    the original's run.py does, plus `env_args` and `seed`."""
    if scenario not in module.scenarios:
        raise ValueError(f"scenario {scenario!r} not in the original's scenarios: "
                         f"{sorted(module.scenarios)}")
    scenario_dict = module.scenarios[scenario](rs=np.random.RandomState(0))
    cls = module.FireFightersEnv
    kwargs = dict(env_args, scenario_dict=scenario_dict)
    params = inspect.signature(cls.__init__).parameters
    takes_seed = "seed" in params or any(
        q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())
    if takes_seed:
        kwargs["seed"] = seed
    env = cls(**kwargs)
    if not takes_seed and hasattr(env, "seed"):
        env.seed(seed)
    return env, scenario_dict


def sample_valid(rng: np.random.Generator, avail) -> np.ndarray:
    """One action per agent, uniform over its available actions (entries >= 1)."""
    valid = np.asarray(avail) >= 1
    counts = valid.sum(axis=1)
    pick = (rng.random(len(counts)) * counts).astype(np.int64)
    return np.argmax(np.cumsum(valid, axis=1) > pick[:, None], axis=1)


def _reset(env):
    env.reset(test=False, index=None, n_tasks=None)
    env.get_masks()
    env.get_entities()
    return env.get_avail_actions()


def time_original(env, steps: int, warmup: int = 20, seed: int = 0) -> dict:
    """Step one original env `steps` times (after `warmup` untimed steps) the way the
    original's parallel-runner worker does: env steps/s, episodes finished, mean length."""
    rng = np.random.default_rng(seed)
    avail = _reset(env)
    episodes = 0
    ep_len = 0
    lengths = []
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            episodes, lengths = 0, []
            t0 = time.perf_counter()
        _, terminated, _ = env.step(sample_valid(rng, avail))
        avail = env.get_avail_actions()
        env.get_masks()
        env.get_entities()
        ep_len += 1
        if terminated:
            env.get_stats()
            episodes += 1
            lengths.append(ep_len)
            ep_len = 0
            avail = _reset(env)
    seconds = time.perf_counter() - t0
    return {
        "steps": steps,
        "warmup_steps": warmup,
        "seconds": round(seconds, 4),
        "env_steps_per_s": round(steps / seconds, 1) if seconds > 0 else float("inf"),
        "episodes_finished": episodes,
        "mean_episode_length": round(float(np.mean(lengths)), 2) if lengths else None,
    }


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def time_jax(scenario: str, num_envs: int, steps: int, single_steps: int, repeats: int
             ) -> list[dict]:
    from _env_loop import make_loop, time_loop

    import envs_jax

    env = envs_jax.make("savethecity", scenario=scenario)
    runs = [(m, num_envs, steps) for m in JAX_MODES]
    runs.append(("autoreset_terminal", 1, single_steps))
    rows = []
    for mode, n, k in runs:
        log(f"[jax] {mode} num_envs={n} steps={k} ...")
        init, run = make_loop(env, n, k, mode, "batch")
        res = time_loop(init, run, n, k, repeats)
        row = {"mode": mode, "stepper": "step_batch" if mode == "trainer" else "batch", **res}
        log(f"[jax]   {row['env_steps_per_s']} env steps/s (compile {row['compile_s']} s)")
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orig-src", default=None,
                    help="the original's src/envs/firefighters, or an ALMA checkout root")
    ap.add_argument("--scenario", default="2-5a_2-5b")
    ap.add_argument("--orig-steps", type=int, default=20000, help="timed original env steps")
    ap.add_argument("--orig-warmup", type=int, default=20, help="untimed original steps first")
    ap.add_argument("--num-envs", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=64, help="scan length of the batched JAX rows")
    ap.add_argument("--single-steps", type=int, default=2048,
                    help="scan length of the one-env JAX row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="original env seed and action RNG")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.orig_src is None:
        ap.exit(2, f"env_vs_original: --orig-src is required; {HINT}\n")
    try:
        ff_dir = resolve_orig_src(args.orig_src)
    except FileNotFoundError as e:
        ap.exit(2, f"env_vs_original: {e}\n")

    log(f"[orig] loading {ff_dir}")
    module = load_original(ff_dir)
    env_args, cfg_source = ff_env_args(ff_dir)
    env, scen = make_original_env(module, args.scenario, env_args, args.seed)
    log(f"[orig] timing {args.orig_steps} steps ...")
    orig = time_original(env, args.orig_steps, args.orig_warmup, args.seed)
    log(f"[orig]   {orig['env_steps_per_s']} env steps/s")

    rows = time_jax(args.scenario, args.num_envs, args.steps, args.single_steps, args.repeats)
    for r in rows:
        r["ratio_vs_original"] = round(r["env_steps_per_s"] / orig["env_steps_per_s"], 2)

    from _machine import machine_info

    out = {
        "benchmark": "env_vs_original",
        "env": "savethecity",
        "scenario": args.scenario,
        "actions": "uniform over each agent's available actions",
        "machine": machine_info(),
        "original": {
            "path": str(ff_dir),
            "git_commit": git_commit(ff_dir),
            "multiagentenv": module.__alma_base_file__ or "stand-in base class",
            "config_source": cfg_source,
            "constructor_args": {
                **env_args,
                "scenario_dict": f"scenarios[{args.scenario!r}](rs=RandomState(0)): "
                                 f"{len(scen['train_scenarios'])} train scenarios, "
                                 f"max {scen['max_n_agents']} agents / "
                                 f"{scen['max_n_buildings']} buildings",
                "seed": args.seed,
            },
            "per_step_calls": list(STEP_CALLS),
            "per_reset_calls": list(RESET_CALLS),
            "per_episode_end_calls": list(EPISODE_END_CALLS),
            "process": "one env in this process, no runner Pipe/pickle, policy or torch cost",
            **orig,
        },
        "jax": rows,
        "ratios": {f"{r['mode']}/{r['stepper']}/{r['num_envs']}": r["ratio_vs_original"]
                   for r in rows},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
