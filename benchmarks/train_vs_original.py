"""Training env steps/s of the ALMA paper's ORIGINAL PyTorch trainer, SaveTheCity, this machine.

    /tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig \
        [--alg heuristic alma] [--window-s 180] [--episodes 400] [--num-envs 8] [--out FILE]

The counterpart of `benchmarks/train_throughput.py --alg heuristic alma --num-envs 8` (this
project's trainer, env steps/s with compile excluded), for running both on one machine in one
sitting. This script needs no JAX and none of this project's packages: it runs under the
original's own venv. `machine_info()` (benchmarks/_machine.py) reports JAX only where it is
importable.

Setup (a venv of its own; nothing goes into the project's venv):

    git -C /work/.mirror/shariqiqbal2810+ALMA/repo archive HEAD | tar -x -C /tmp/alma_orig
        (or: git clone https://github.com/shariqiqbal2810/ALMA /tmp/alma_orig)
    python3.11 -m venv /tmp/orig_venv
    /tmp/orig_venv/bin/pip install \
        /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \
        numpy scipy pyyaml ortools cloudpickle matplotlib imageio

(any CPU torch wheel will do where /opt/wheels does not exist: `pip install torch`). wandb,
pysc2, s2clientprotocol are not needed (see the stand-ins below).

The real measurement, with the defaults (a timed window of whole rollouts, closed at the
first rollout boundary 180 s after it opened, or after 400 episodes; before it, start-up and
warm-up take about 1 minute per alg where the original runs near its earlier speeds, more
where it is slower; each rollout prints a progress line to stderr):

    /tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig \
        --alg heuristic alma --out benchmarks/results/train_vs_original.json

Run it on an otherwise idle machine and not under `nice`: torch's intra-op threads (2 here)
wait on each other, so a competing process slows the original far more than its share of the
CPU (the niceness is recorded in the JSON). `--set KEY=VALUE` passes further overrides in the
original's syntax; it changes what is measured and is meant for debugging only.

What runs. For each `--alg`, a fresh child process (this file again, `--_child ALG`) puts the
checkout's `src/` on sys.path, builds the config exactly as the original's `src/main.py` does,
with the original's own functions (`yaml.load` of `config/default.yaml`, `_get_config` for
`--env-config=ff` and `--config=qmix_atten`, `recursive_dict_update`, `recursive_cli_gen`,
`restore_nested_dicts`) from the command-line overrides listed below, seeds numpy and torch as
`main.main` does (but with `--seed`, not a random draw), does what `run.run` does before
training (`args_sanity_check`, `SimpleNamespace`, `Logger`), and then calls the original's
`run.run_sequential` unchanged: `--num-envs` env worker processes (`runner: parallel`),
replay buffer, `training_iters` low-level updates (`QLearner.train`, on 32 sampled episodes)
per rollout and, for ALMA, one allocator update (`QLearner.alloc_train_aql`, on a second
sample of 32 episodes drawn with the `decay_old` filter) after each of them. A child per alg
keeps each alg's torch state, worker processes and memory apart.

Original config overrides, all alike for both algs (the README's SaveTheCity commands):
    --env-config=ff --config=qmix_atten --scenario=2-5a_2-5b
    --epsilon_anneal_time=2000000 --hier_agent.action_length=5
    heuristic: --agent.subtask_cond=mask --hier_agent.task_allocation=heuristic
    alma:      --agent.subtask_cond=mask --hier_agent.task_allocation=aql
  left at the configs' values (reported in the JSON): batch_size 32 episodes
  (default.yaml), max_traj_len 64 (default.yaml), buffer_size 5000 (qmix_atten.yaml),
  batch_size_run 8 and training_iters 8 (qmix_atten.yaml; `--num-envs` sets batch_size_run and
  training_iters together, so the ratio stays one update per collected episode as in
  train_throughput.py's updates_per_rollout=num_envs), lr 5e-4 RMSprop, target_update_interval
  200, alloc_target_update_interval 50, hier_agent.* (n_proposals 32, alloc_eps, decay_old
  150000, max_bs 400, ...), t_max 15e6 (ff.yaml; the alloc-eps schedules are fractions of it).
  Not training settings, set so that nothing but training happens in the timed window:
    --use_cuda=False (unless --cuda)  --save_model=False  (no wandb: use_wandb False)
    --test_interval=10**12 --test_nepisode=<num_envs>: the original always runs one test
        pass in its first loop iteration (last_test_T starts at -test_interval-1); this makes
        it one rollout, in the untimed warm-up, and never again.
    --log_interval / --runner_log_interval / --learner_log_interval = 10**12: the stats are
        logged once, on the first call, and never in the window.

What is timed. Wrappers around `ParallelRunner.run`, `ReplayBuffer.insert_episode_batch`,
`ReplayBuffer.sample`, `QLearner.train` and `QLearner.alloc_train_aql` record
`time.perf_counter()` before and after each call (and `runner.t_env`). Training rollouts
(test_mode False) are numbered from 0. The window starts when training rollout number
W = `--warmup-rollouts` begins (default ceil(batch_size / num_envs) = 4: rollouts 0-2 only fill
the buffer, rollout 3 makes the first, untimed, updates) and ends when rollout W + R begins,
where R = ceil(--episodes / num_envs) or, if smaller, the first R whose start is at least
--window-s seconds after the window opened; then the wrapper stops training (it raises an
exception that unwinds `run_sequential`; the workers are then closed). The window therefore
holds R whole cycles of the original's loop: collect 8 episodes, insert, then `training_iters`
x (sample 32 episodes, low-level update[, sample, allocator update]), plus the loop's own
bookkeeping. env steps = the runner's `t_env` difference (training steps only, as the
original counts). NOT timed: process and worker start-up, imports, network construction, the
W warm-up rollouts with their updates, the one test rollout, closing.

Reported per alg: env steps, wall seconds, env steps/s, episodes, mean episode length,
low-level updates and mean seconds per update, allocator updates and their mean seconds
(ALMA), seconds per (low-level + allocator) pair, and the window split into collection
(`runner.run`), insert, sampling, low-level update, allocator update and the rest; also
torch version, torch.get_num_threads() (torch's default; the script does not set it),
interop threads, the child's start-up and warm-up seconds, CPU seconds of the child and its
workers, and the resolved config keys that matter. One JSON document goes to stdout (and to
`--out FILE`); progress and the original's own console log go to stderr.

Compatibility shims, applied at run time in the child (the checkout is never edited):
  - `yaml.load(stream)` without a Loader (PyYAML >= 6 requires one; the original pinned
    pyyaml 5.4.1, whose default was FullLoader): wrapped to default to `yaml.FullLoader`.
  - `collections.Mapping` (removed in Python 3.10; used by main.py's config merging): set to
    `collections.abc.Mapping`.
  - `Tensor.masked_fill` with a uint8 mask (the original was written for torch 1.1, where
    uint8 masks were allowed; torch 2 raises): `torch.Tensor.masked_fill` is wrapped to cast a
    uint8 mask to bool first. This adds one Python call per masked_fill to the original's time.
    Indexing with uint8 masks still works in torch 2 (with a deprecation warning, shown once),
    and so does the original's indexing with a list of slices (torch 2.13 still reads it as a
    tuple, with a warning); neither needs a shim.
  - `envs.starcraft2` (imported by the original's `envs/__init__.py`, needs pysc2 and
    s2clientprotocol): replaced in sys.modules by a stand-in with placeholder env classes and
    an empty scenario registry. SaveTheCity does not touch it.
  - `wandb` (imported at module level by main.py, run.py and two controllers; unused with
    use_wandb False): a stand-in module is used only when wandb is not installed.
  - matplotlib is forced to the Agg backend (MPLBACKEND=Agg).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
HINT = ("get the original with `git clone https://github.com/shariqiqbal2810/ALMA` (or a "
        "`git archive` of a mirror) and pass its root or its src/ directory as --orig-src")
BIG = 10 ** 12  # an interval the run never reaches: "never" for tests and logging

# Command-line overrides as the original's README gives them for SaveTheCity.
COMMON_OVERRIDES = [
    "--env-config=ff",
    "--config=qmix_atten",
    "--scenario=2-5a_2-5b",
    "--epsilon_anneal_time=2000000",
    "--hier_agent.action_length=5",
]
ALG_OVERRIDES = {
    "heuristic": ["--agent.subtask_cond=mask", "--hier_agent.task_allocation=heuristic"],
    "alma": ["--agent.subtask_cond=mask", "--hier_agent.task_allocation=aql"],
}
# Config keys copied into the JSON so that the settings of a run can be checked.
REPORTED_KEYS = (
    "name", "env", "scenario", "runner", "batch_size_run", "training_iters", "batch_size",
    "buffer_size", "max_traj_len", "buffer_opt_mem", "lr", "optim_alpha", "optim_eps",
    "grad_norm_clip", "gamma", "target_update_interval", "alloc_target_update_interval",
    "epsilon_start", "epsilon_finish", "epsilon_anneal_time", "t_max", "learner", "mixer",
    "mac", "double_q", "popart", "rnn_hidden_dim", "attn_embed_dim", "attn_n_heads",
    "alloc_embed_dim", "alloc_n_heads", "mixing_embed_dim", "hypernet_embed", "multi_task",
    "use_cuda", "save_model", "test_interval", "test_nepisode", "log_interval",
    "runner_log_interval", "learner_log_interval", "seed",
)
SHIMS = [
    "yaml.load defaults to Loader=yaml.FullLoader",
    "collections.Mapping = collections.abc.Mapping",
    "torch.Tensor.masked_fill casts uint8 masks to bool",
    "envs.starcraft2 replaced by a stand-in (no pysc2 / s2clientprotocol)",
    "MPLBACKEND=Agg",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_src(path: str | os.PathLike) -> Path:
    """The original's `src` directory, given it or the checkout root that holds it."""
    p = Path(path).expanduser().resolve()
    for cand in (p, p / "src"):
        if (cand / "main.py").is_file() and (cand / "run.py").is_file() \
                and (cand / "config" / "default.yaml").is_file():
            return cand
    raise FileNotFoundError(
        f"--orig-src {str(path)!r} (resolved to {p}) holds neither main.py, run.py and "
        f"config/default.yaml nor a src/ directory with them; {HINT}")


def machine_block() -> dict:
    """`machine_info()` from _machine.py (its JAX fields only where JAX is importable)."""
    sys.path.insert(0, str(HERE))
    from _machine import machine_info

    return machine_info()


# ----------------------------------------------------------------------------------------------
# Child: one alg, in-process in the original's code.


class _StopTraining(Exception):
    """Raised from the runner wrapper once the timed rollouts are done."""


def _install_shims_before_import() -> None:
    import collections
    import collections.abc

    os.environ.setdefault("MPLBACKEND", "Agg")
    if not hasattr(collections, "Mapping"):
        collections.Mapping = collections.abc.Mapping

    # StarCraft II: a stand-in for the original's envs/starcraft2 package.
    sc2 = types.ModuleType("envs.starcraft2")

    def _placeholder(name):
        def __init__(self, *a, **k):
            raise RuntimeError(f"{name} is a stand-in: StarCraft II is not set up here")
        return type(name, (), {"__init__": __init__})

    for name in ("StarCraft2Env", "StarCraft2CustomEnv", "StarCraft2MultiArmyEnv"):
        setattr(sc2, name, _placeholder(name))
    sc2.custom_scenario_registry = {}
    sys.modules["envs.starcraft2"] = sc2

    # wandb: only if it is not installed; nothing calls it with use_wandb False.
    try:
        import wandb  # noqa: F401
    except ImportError:
        wb = types.ModuleType("wandb")

        def _unused(*a, **k):
            raise RuntimeError("wandb is a stand-in here; run with use_wandb False")

        for name in ("init", "save", "log", "restore", "agent", "finish", "Api"):
            setattr(wb, name, _unused)
        wb.run = None
        sys.modules["wandb"] = wb
        SHIMS.append("wandb replaced by a stand-in (not installed)")


def _install_shims_after_import() -> None:
    import torch
    import yaml

    plain_load = yaml.load

    def load(stream, Loader=None, **kw):
        return plain_load(stream, Loader=Loader or yaml.FullLoader, **kw)

    yaml.load = load

    plain_masked_fill = torch.Tensor.masked_fill

    def masked_fill(self, mask, value):
        if mask.dtype == torch.uint8:
            mask = mask.bool()
        return plain_masked_fill(self, mask, value)

    torch.Tensor.masked_fill = masked_fill


class Recorder:
    """Timestamps of the original's calls; stops training after the timed rollouts."""

    def __init__(self, warmup: int, timed: int, tag: str, window_s: float | None = None):
        self.warmup, self.timed, self.tag, self.window_s = warmup, timed, tag, window_s
        self.calls: dict[str, list[tuple[float, float]]] = {
            k: [] for k in ("rollout", "test_rollout", "insert", "sample", "train", "alloc")}
        self.rollout_starts: list[tuple[float, int]] = []  # (time, t_env) per train rollout
        self.runner = None
        self.t_launch = time.perf_counter()

    def wrap(self, cls, attr: str, key: str) -> None:
        plain = getattr(cls, attr)
        calls = self.calls[key]

        def timed(obj, *a, **k):
            t0 = time.perf_counter()
            out = plain(obj, *a, **k)
            calls.append((t0, time.perf_counter()))
            return out

        setattr(cls, attr, timed)

    def wrap_runner(self, cls) -> None:
        plain = cls.run
        rec = self

        def run(runner, test_mode=False, *a, **k):
            rec.runner = runner
            if test_mode:
                t0 = time.perf_counter()
                out = plain(runner, test_mode, *a, **k)
                rec.calls["test_rollout"].append((t0, time.perf_counter()))
                return out
            t0 = time.perf_counter()
            idx = len(rec.rollout_starts)
            rec.rollout_starts.append((t0, int(runner.t_env)))
            prev = rec.rollout_starts[idx - 1][0] if idx else rec.t_launch
            log(f"[{rec.tag}] rollout {idx} starts: t_env {runner.t_env}, "
                f"{t0 - prev:.1f} s since the last"
                + (" (timed window opens)" if idx == rec.warmup else ""))
            if idx > rec.warmup:
                open_s = t0 - rec.rollout_starts[rec.warmup][0]
                if idx == rec.warmup + rec.timed or (
                        rec.window_s is not None and open_s >= rec.window_s):
                    rec.timed = idx - rec.warmup
                    raise _StopTraining
            out = plain(runner, test_mode, *a, **k)
            rec.calls["rollout"].append((t0, time.perf_counter()))
            return out

        cls.run = run

    def summary(self) -> dict:
        w, r = self.warmup, self.timed
        (t_a, env_a), (t_b, env_b) = self.rollout_starts[w], self.rollout_starts[w + r]
        wall = t_b - t_a

        def inside(key):
            return [b - a for a, b in self.calls[key] if a >= t_a and b <= t_b]

        parts = {k: inside(k) for k in ("rollout", "insert", "sample", "train", "alloc",
                                         "test_rollout")}
        sums = {k: sum(v) for k, v in parts.items()}
        steps = env_b - env_a
        n_train, n_alloc = len(parts["train"]), len(parts["alloc"])
        res = {
            "timed_rollouts": r,
            "episodes": r * self.runner.batch_size,
            "env_steps": steps,
            "wall_s": round(wall, 3),
            "env_steps_per_s": round(steps / wall, 2),
            "mean_episode_len": round(steps / (r * self.runner.batch_size), 2),
            "low_level_updates": n_train,
            "s_per_low_level_update": round(sums["train"] / n_train, 4) if n_train else None,
            "alloc_updates": n_alloc,
            "s_per_alloc_update": round(sums["alloc"] / n_alloc, 4) if n_alloc else None,
            "s_per_update_pair": (round((sums["train"] + sums["alloc"]) / n_train, 4)
                                  if n_alloc and n_train else None),
            "s_per_rollout": round(sums["rollout"] / r, 3),
            "window_split_s": {
                "collect (runner.run)": round(sums["rollout"], 3),
                "buffer insert": round(sums["insert"], 3),
                "buffer sample": round(sums["sample"], 3),
                "low-level update": round(sums["train"], 3),
                "allocator update": round(sums["alloc"], 3),
                "rest of the loop": round(wall - sum(sums[k] for k in (
                    "rollout", "insert", "sample", "train", "alloc", "test_rollout")), 3),
            },
            "test_rollouts_in_window": len(parts["test_rollout"]),
            "startup_s": round(self.rollout_starts[0][0] - self.t_launch, 2),
            "warmup_s": round(t_a - self.rollout_starts[0][0], 2),
            "warmup_rollouts": w,
            "warmup_updates": sum(1 for a, _ in self.calls["train"] if a < t_a),
        }
        if w >= 1:  # the cycle before the window: the first updates when w is the default
            t_prev = self.rollout_starts[w - 1][0]
            first = [b - a for a, b in self.calls["train"] if t_prev <= a < t_a]
            res["last_warmup_cycle_s"] = round(t_a - t_prev, 2)
            res["last_warmup_cycle_s_per_low_level_update"] = (
                round(sum(first) / len(first), 4) if first else None)
        return res


def child(opts) -> None:
    src = resolve_src(opts.orig_src)
    tag = opts._child
    _install_shims_before_import()
    sys.path.insert(0, str(src))
    # main.py imports ortools first of all ("segfault happens if we wait"); so do we.
    from ortools.constraint_solver import pywrapcp  # noqa: F401, I001
    from ortools.linear_solver import pywraplp  # noqa: F401
    import numpy as np
    import torch as th

    _install_shims_after_import()
    # the original's modules; main is its src/main.py (its __main__ block does not run)
    import main as orig_main
    import run as orig_run
    import yaml
    from components.episode_buffer import ReplayBuffer
    from learners.q_learner import QLearner
    from runners.parallel_runner import ParallelRunner
    from utils.logging import Logger

    n = opts.num_envs
    overrides = COMMON_OVERRIDES + ALG_OVERRIDES[tag] + [
        f"--batch_size_run={n}", f"--training_iters={n}",
        f"--use_cuda={bool(opts.cuda)}", "--save_model=False",
        f"--test_interval={BIG}", f"--test_nepisode={n}",
        f"--log_interval={BIG}", f"--runner_log_interval={BIG}",
        f"--learner_log_interval={BIG}",
    ] + [s if s.startswith("--") else f"--{s}" for s in opts.set]

    # The config, built as the original's main.py builds it from its command line.
    params = ["main.py"] + list(overrides)
    with open(src / "config" / "default.yaml") as f:
        config = yaml.load(f)
    env_config = orig_main._get_config(params, "--env-config", "envs")
    alg_config = orig_main._get_config(params, "--config", "algs")
    config = orig_main.recursive_dict_update(config, env_config)
    config = orig_main.recursive_dict_update(config, alg_config)
    parser = orig_main.recursive_cli_gen(argparse.ArgumentParser(prog="main.py"), config)
    config = orig_main.restore_nested_dicts(vars(parser.parse_args(params[1:])))
    config.update(use_wandb=False, wb_notes=[], wb_tags=[], wb_entity="entity")

    # main.main's seeding (with a fixed seed instead of a random one)
    config["seed"] = opts.seed
    np.random.seed(opts.seed)  # noqa: NPY002 (the original draws from numpy's global RNG)
    th.manual_seed(opts.seed)
    config["env_args"]["seed"] = opts.seed

    console = orig_main.logger
    config = orig_run.args_sanity_check(config, console)
    args = types.SimpleNamespace(**config)
    args.device = "cuda" if args.use_cuda else "cpu"
    args.unique_token = f"{args.name}__train_vs_original"
    logger = Logger(console)

    warmup = opts.warmup_rollouts
    if warmup is None:
        warmup = math.ceil(args.batch_size / n)
    timed = max(1, math.ceil(opts.episodes / n))
    rec = Recorder(warmup, timed, tag, opts.window_s)
    rec.wrap_runner(ParallelRunner)
    rec.wrap(ReplayBuffer, "insert_episode_batch", "insert")
    rec.wrap(ReplayBuffer, "sample", "sample")
    rec.wrap(QLearner, "train", "train")
    rec.wrap(QLearner, "alloc_train_aql", "alloc")

    threads = th.get_num_threads()
    log(f"[{tag}] torch {th.__version__}, {threads} threads; warm-up {warmup} rollouts, "
        f"timed {timed} rollouts of {n} episodes at most"
        + (f", or whole rollouts until {opts.window_s} s" if opts.window_s else ""))
    workdir = tempfile.mkdtemp(prefix="alma_orig_run_")
    os.chdir(workdir)  # anything the original might write lands here, not in the checkout
    try:
        orig_run.run_sequential(args=args, logger=logger)
        raise RuntimeError("run_sequential returned before the timed rollouts were done "
                           f"(t_max {args.t_max} reached?)")
    except _StopTraining:
        pass
    finally:
        if rec.runner is not None:
            rec.runner.close_env()
            for p in rec.runner.ps:
                p.join(timeout=10)

    res = {"alg": tag, **rec.summary()}
    cfg = vars(args)
    res["config"] = {k: cfg[k] for k in REPORTED_KEYS if k in cfg}
    res["config"]["agent"] = dict(cfg["agent"])
    res["config"]["hier_agent"] = dict(cfg["hier_agent"])
    res["config"]["env_args"] = {k: v for k, v in cfg["env_args"].items()
                                 if k != "scenario_dict"}
    res["overrides"] = overrides
    res["torch"] = th.__version__
    res["torch_threads"] = threads
    res["torch_interop_threads"] = th.get_num_interop_threads()
    res["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")
    res["numpy"] = np.__version__
    res["shims"] = SHIMS
    with open(opts._result, "w") as f:
        json.dump(res, f)
    log(f"[{tag}] {res['env_steps']} env steps in {res['wall_s']} s: "
        f"{res['env_steps_per_s']} env steps/s")


# ----------------------------------------------------------------------------------------------
# Parent: one child per alg, one JSON document.


def run_child(alg: str, episodes: int, opts) -> dict:
    fd, result_path = tempfile.mkstemp(prefix=f"train_vs_original_{alg}_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", alg,
           "--_result", result_path, "--orig-src", str(opts.orig_src),
           "--episodes", str(episodes), "--num-envs", str(opts.num_envs),
           "--seed", str(opts.seed)]
    cmd += ["--window-s", str(opts.window_s or 0)]
    if opts.warmup_rollouts is not None:
        cmd += ["--warmup-rollouts", str(opts.warmup_rollouts)]
    if opts.cuda:
        cmd.append("--cuda")
    for s in opts.set:
        cmd += ["--set", s]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        with open(result_path) as f:
            text = f.read()
        res = json.loads(text) if text.strip() else None
    finally:
        os.unlink(result_path)
    if proc.returncode != 0 or res is None:
        return {"alg": alg, "error": f"child exited with {proc.returncode}; see stderr",
                "child_total_s": round(total, 1)}
    res["child_total_s"] = round(total, 1)
    res["child_cpu_s"] = round(cpu, 1)  # child + its env workers, user + system
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orig-src", required=True,
                    help="the original's checkout root or its src/ directory")
    ap.add_argument("--alg", nargs="+", default=["heuristic", "alma"],
                    choices=sorted(ALG_OVERRIDES))
    ap.add_argument("--episodes", type=int, nargs="+", default=[400],
                    help="most timed episodes: one value for every alg, or one per --alg in "
                         "its order (rounded up to whole rollouts of num_envs)")
    ap.add_argument("--num-envs", type=int, default=8,
                    help="parallel envs (batch_size_run); training_iters follows it")
    ap.add_argument("--warmup-rollouts", type=int, default=None,
                    help="untimed training rollouts first (default ceil(batch_size/num_envs))")
    ap.add_argument("--window-s", type=float, default=180.0,
                    help="close the timed window at the first rollout boundary at least this "
                         "many seconds after it opened, unless --episodes ends it first; "
                         "0: --episodes alone")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cuda", action="store_true", help="use_cuda True (default: CPU)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override in the original's CLI syntax, e.g. "
                         "env_args.episode_limit=20 (changes the measurement: for debugging)")
    ap.add_argument("--out", default=None, help="also write the JSON document here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args()

    if opts.window_s is not None and opts.window_s <= 0:
        opts.window_s = None
    if opts._child:
        opts.episodes = opts.episodes[0]
        child(opts)
        return
    if len(opts.episodes) == 1:
        episodes = dict.fromkeys(opts.alg, opts.episodes[0])
    elif len(opts.episodes) == len(opts.alg):
        episodes = dict(zip(opts.alg, opts.episodes))
    else:
        ap.error(f"--episodes takes one value, or one per --alg ({len(opts.alg)})")

    src = resolve_src(opts.orig_src)
    opts.orig_src = src
    results = []
    for alg in opts.alg:
        log(f"== {alg}")
        res = run_child(alg, episodes[alg], opts)
        log(json.dumps({k: v for k, v in res.items() if k not in ("config", "overrides",
                                                                   "shims")}))
        results.append(res)
    doc = {
        "benchmark": "train_vs_original",
        "what": "original PyTorch ALMA trainer (run.run_sequential), SaveTheCity 2-5a_2-5b, "
                "env steps/s over whole collect+update cycles after warm-up",
        "orig_src": str(src),
        "num_envs": opts.num_envs,
        "episodes_requested": episodes,
        "window_s": opts.window_s,
        "seed": opts.seed,
        "extra_overrides": opts.set,
        "machine": {**machine_block(), "python_executable": sys.executable,
                    "platform": platform.platform(), "niceness": os.nice(0)},
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(text + "\n")
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
