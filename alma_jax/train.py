"""Command line: `python -m alma_jax.train env=savethecity alg=heuristic [key=value ...]`.

The host loop only calls the jitted (and seed-vmapped) chunk, then logs, evaluates and
checkpoints. Metrics go to `<out_dir>/metrics.jsonl` (one line per record: per-seed values,
their mean and the seed quantiles q25 / q75 / iqr), `<out_dir>/metrics.csv` (seed means) and,
with `tensorboard=true`, TensorBoard. Several visible devices: see `alma_jax.sharding`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alma_jax import buffer as bf
from alma_jax import sharding
from alma_jax.checkpoint import load_checkpoint, save_checkpoint
from alma_jax.config import Config, ConfigError, load_config
from alma_jax.cpuinfo import read_cpuinfo
from alma_jax.nn import precision
from alma_jax.plots import seed_stats
from alma_jax.trainer import TrainFns, make_train


def _to_host(tree: Any) -> Any:
    return jax.tree.map(sharding.fetch, tree)


def _t_env(state: Any) -> int:
    return int(np.min(_to_host(state.t_env)))  # seeds advance at slightly different rates


class RunStopped(RuntimeError):
    """A host-side environment failed mid-run; the message says where the last checkpoint is."""


class MetricLog:
    """Appends records to metrics.jsonl (all seeds, seed mean and IQR) and metrics.csv (means)."""

    def __init__(self, out_dir: Path, tensorboard: bool, enabled: bool = True):
        self.jsonl = out_dir / "metrics.jsonl"
        self.csv = out_dir / "metrics.csv"
        self.writer = None
        self.enabled = enabled  # False: compute the seed means, write nothing (other hosts)
        if tensorboard and enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # keep the core install small
                print("tensorboard=true needs `pip install tensorboardX`; logging to files only")
            else:
                self.writer = SummaryWriter(str(out_dir / "tb"))

    def write(self, t_env: int, values: dict[str, np.ndarray]) -> dict[str, float]:
        per_seed = {k: np.atleast_1d(v).astype(float).tolist() for k, v in values.items()}
        means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                 for k, v in per_seed.items()}
        if not self.enabled:
            return means
        spread = seed_stats(per_seed)  # q25 / q75 / iqr over seeds, for mean + IQR plots
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"t_env": t_env, "per_seed": per_seed, "mean": means, **spread})
                    + "\n")
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.writer(f)
            for k, v in sorted(means.items()):
                if new:
                    w.writerow(["t_env", "key", "mean"])
                    new = False
                w.writerow([t_env, k, v])
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(k, v, t_env)
        return means

    def truncate_after(self, t_env: int) -> None:
        """Drop records logged after `t_env`: a run resumed from a checkpoint taken at `t_env`
        logs them again (they were written by a killed run after its last checkpoint)."""
        if not self.enabled:
            return
        if self.jsonl.exists():
            lines = [ln for ln in self.jsonl.read_text().splitlines(keepends=True) if ln.strip()]
            self.jsonl.write_text("".join(ln for ln in lines if json.loads(ln)["t_env"] <= t_env))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                rows = list(csv.reader(f))
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerows(rows[:1] + [r for r in rows[1:] if int(r[0]) <= t_env])


def _writable_out_dir(path: str) -> Path:
    """out_dir, created if needed; a ConfigError naming the path if it cannot be written."""
    out_dir = Path(path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out_dir={path!r} cannot be written: {e.strerror or e}") from None
    return out_dir


def run(cfg: Config, devices: Sequence[jax.Device] | None = None,
        scheme: str | None = None) -> dict[str, Any]:
    """Train with `cfg`; returns the final host-side summary (also used by tests).

    `devices` (default: every visible device) and `scheme` ("seeds" / "envs", default chosen
    from the config) lay the run out over several devices, see `alma_jax.sharding`; a single
    device (e.g. `jax.devices()[:1]`) runs unsharded on the default device.
    """
    out_dir = _writable_out_dir(cfg.out_dir)
    plan = sharding.make_plan(cfg, devices, scheme)  # None: one device, nothing sharded
    # multi-host: every process runs this loop; only the first writes logs and the bar
    primary = jax.process_index() == 0
    if plan is None:
        fns: TrainFns = make_train(cfg)
        init = jax.jit(jax.vmap(fns.init))
        chunk = jax.jit(jax.vmap(fns.chunk), donate_argnums=0)
        evaluate = jax.jit(jax.vmap(fns.evaluate))
    else:
        fns = make_train(cfg, mesh=plan.trainer_mesh)
        init, chunk, evaluate = plan.jit(fns)
        print(sharding.describe(plan), flush=True)
    if cfg.precision == "bf16" and primary:
        note = precision.bf16_speed_note(jax.default_backend(), read_cpuinfo()[1])
        if note:
            print(note, flush=True)
    copies = cfg.num_seeds if plan is None else plan.seeds_per_device(cfg.num_seeds)
    needed = bf.check_buffer_fits(fns.example_episode, cfg.buffer_size, n_copies=copies)
    print(f"replay buffer: {copies} x buffer_size={cfg.buffer_size} episodes = "
          f"{needed / 2**30:.2f} GiB" + ("" if plan is None else " per device"), flush=True)
    seeds = jnp.arange(cfg.seed, cfg.seed + cfg.num_seeds)
    host = {"next_test": 0, "next_checkpoint": cfg.checkpoint_interval, "next_log": 0}

    ckpt_dir = out_dir / "checkpoint"
    state, resumed_at = None, None
    if cfg.resume and not ckpt_dir.exists() and primary:
        print(f"resume=true: no checkpoint in {out_dir}, starting from scratch", flush=True)
    if cfg.resume and ckpt_dir.exists():
        abstract = jax.eval_shape(init, jax.vmap(jax.random.PRNGKey)(seeds))
        # explicit target shardings: a checkpoint saved on another device count restores too
        state, host = load_checkpoint(ckpt_dir, sharding.restore_target(abstract, plan))
        resumed_at = _t_env(state)
        print(f"resumed from {ckpt_dir} at t_env={resumed_at}", flush=True)
    else:
        if primary:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
            (out_dir / "metrics.csv").unlink(missing_ok=True)
        keys = jax.vmap(jax.random.PRNGKey)(seeds)
        low_init = None
        if cfg.low_from is not None:  # checked before anything compiles
            from alma_jax import transfer

            low_init, has_opt = transfer.prepare_low(cfg, jax.eval_shape(init, keys).low)
        high_init = None
        if cfg.high_from is not None:
            from alma_jax import transfer

            high_init, high_opt, high_t_env = transfer.prepare_high(
                cfg, jax.eval_shape(init, keys).high)
        state = init(keys)
        if high_init is not None:
            # The env-step counter goes on from the source's, so the allocator's exploration
            # schedules (functions of t_env) continue instead of starting over.
            t_env = jax.device_put(high_t_env.astype(state.t_env.dtype), state.t_env.sharding)
            state = state.replace(high=transfer.adopt(high_init, state.high, high_opt),
                                  t_env=t_env)
            print(f"allocator from {cfg.high_from}, continuing at t_env="
                  f"{[int(t) for t in high_t_env]}", flush=True)
        if low_init is not None:
            state = state.replace(low=transfer.adopt(low_init, state.low, has_opt))
            print(f"low level from {cfg.low_from}"
                  + (" (frozen: training the allocator only)" if cfg.freeze_low else ""),
                  flush=True)
    if primary:
        with open(out_dir / "config.json", "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
    log = MetricLog(out_dir, cfg.tensorboard, enabled=primary)
    if resumed_at is not None:
        log.truncate_after(resumed_at)

    bar = None
    if cfg.progress and primary:
        from tqdm import tqdm

        bar = tqdm(total=cfg.total_env_steps, unit="step", dynamic_ncols=True, file=sys.stdout)
        bar.update(_t_env(state))
    latest: dict[str, float] = {}
    t_env = _t_env(state)
    saved_at = resumed_at  # t_env of the checkpoint on disk from this run (None: none yet)
    # A host-side env (StarCraft bridge) can fail inside a chunk: stop with a plain message
    # that says which checkpoint survives, instead of a traceback through XLA.
    try:
        t0, steps0, compiling = time.perf_counter(), t_env, True
        wall0 = t0
        while True:
            t_env = _t_env(state)
            if t_env >= host["next_test"]:
                key = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.PRNGKey(s), t))(
                    seeds, state.t_env)  # from the counters: resuming replays the same tests
                ev = log.write(t_env, _to_host(evaluate(state, key)))
                latest = {k: v for k, v in ev.items()
                          if k in ("eval/solved_mean", "eval/return_mean")}
                host["next_test"] = (t_env // cfg.test_interval + 1) * cfg.test_interval
            if t_env >= cfg.total_env_steps:
                break
            if cfg.max_wall_seconds and time.perf_counter() - wall0 > cfg.max_wall_seconds:
                print(f"max_wall_seconds={cfg.max_wall_seconds} reached at t_env={t_env}",
                      flush=True)
                break
            if t_env >= host["next_checkpoint"]:
                save_checkpoint(ckpt_dir, state, host)
                saved_at = t_env
                host["next_checkpoint"] = (t_env // cfg.checkpoint_interval + 1) * \
                    cfg.checkpoint_interval
            state, metrics = chunk(state)
            metrics = _to_host(metrics)
            new_t = _t_env(state)
            if compiling:  # the first chunk includes compilation: keep it out of the rate
                t0, steps0, compiling = time.perf_counter(), new_t, False
            if new_t >= host["next_log"]:
                means = {k: np.nanmean(v, axis=-1) if v.ndim > 1 else v
                         for k, v in metrics.items() if k != "t_env"}
                log.write(new_t, means)
                host["next_log"] = (new_t // cfg.log_interval + 1) * cfg.log_interval
            if bar is not None:
                rate = (new_t - steps0) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix({"steps/s": f"{rate:,.0f}", **{k.split("/")[1]: f"{v:.3f}"
                                                             for k, v in latest.items()}})
                bar.update(new_t - t_env)
    except Exception as err:
        env_error = getattr(fns.env, "last_error", None)
        if env_error is None:
            raise
        where = ("no checkpoint was written yet" if saved_at is None else
                 f"the last checkpoint ({ckpt_dir}, t_env={saved_at}) is intact: fix the "
                 "environment and rerun with resume=true")
        raise RunStopped(f"the environment failed after t_env={t_env}; {where}.\n"
                         f"{type(env_error).__name__}: {env_error}") from err
    if bar is not None:
        bar.close()
    save_checkpoint(ckpt_dir, state, host)
    return {"t_env": _to_host(state.t_env), "state": state, "latest": latest}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys and defaults: configs/config.yaml; methods: configs/alg/*.yaml")
        return
    sharding.init_distributed_from_env()  # multi-host: before anything touches a device
    try:
        cfg = load_config(argv)
        sharding.make_plan(cfg)  # fails on a device count the config cannot be split over
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    try:
        out = run(cfg)
    except ConfigError as e:  # e.g. out_dir not writable, low_from not compatible
        raise SystemExit(f"config error: {e}") from None
    except RunStopped as e:
        raise SystemExit(f"run stopped: {e}") from None
    print(f"done: {int(np.min(_to_host(out['t_env'])))} env steps; metrics in {cfg.out_dir}")


if __name__ == "__main__":
    main()
