"""Learners from one run used in another: parameter exports, `low_from`, `high_from`.

A *source* is either a run directory (its `config.json` and `checkpoint/`) or a parameters
export written by `export_params` (one `.npz`: the run's config, the low-level and allocation
learner states of every seed and their `t_env`; no replay buffer, so a few hundred kB at
the CPU recipe's sizes). Run directories are gitignored and do not outlive a machine; an
export is small enough to commit.

    python -m alma_jax.transfer export <run dir> <file.npz>

`low_from=<source>` (see `alma_jax.train`) starts a run's low level from the source's (all
of the learner state: parameters, optimiser state, target copies, Pop-Art statistics);
`freeze_low=true` then trains only the allocator. `alma_jax.evaluate ... high_from=<source>`
pairs one source's low level with another's allocator.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alma_jax.config import Config, ConfigError, alloc_settings, from_saved

EXPORT_SUFFIX = ".npz"
# Learner-state fields that hold optimiser moments (QMIX / LICA low levels, the allocator).
# Exports leave them out: parameters, targets and Pop-Art statistics are what a later run or
# an evaluation needs, at a third of the size; a run started from an export begins its
# optimisers afresh.
OPTIMISER_FIELDS = ("opt_state", "actor_opt", "critic_opt", "pi_opt_state",
                    "critic_opt_state")
# Keys that define what a low level computes: a source must agree on these to be reused.
LOW_LEVEL_KEYS = ("env", "env_args", "low_learner", "subtask_cond", "embed_dim", "n_heads",
                  "hidden_dim", "mix_dim", "hyper_dim", "mixer", "softmax_mixing_weights",
                  "popart", "optimizer", "lica", "refil", "copa")


@dataclasses.dataclass
class Source:
    """A loaded source: its config and host-side (numpy) learner states, seed axis first."""

    path: Path
    cfg: Config
    low: Any
    high: Any
    t_env: np.ndarray  # [S]
    has_optimiser: bool = True  # False for an export: optimiser leaves are zero placeholders

    @property
    def seeds(self) -> list[int]:
        return list(range(self.cfg.seed, self.cfg.seed + self.cfg.num_seeds))


def _abstract(cfg: Config) -> Any:
    """Shapes of the seed-batched train state of `cfg` (traced, never compiled)."""
    from alma_jax.trainer import make_train

    fns = make_train(cfg)
    seeds = jnp.arange(cfg.seed, cfg.seed + cfg.num_seeds)
    return jax.eval_shape(jax.vmap(fns.init), jax.vmap(jax.random.PRNGKey)(seeds))


def _flat(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): x
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_optimiser(name: str) -> bool:
    """Whether a leaf path (keystr) lies in one of the OPTIMISER_FIELDS."""
    return any(name.startswith(f".{f}") and name[len(f) + 1:len(f) + 2] in ("", ".", "[")
               for f in OPTIMISER_FIELDS)


def _fill(abstract: Any, arrays: dict[str, np.ndarray], what: str, path: Path) -> Any:
    """`abstract` with its leaves taken from `arrays` by tree path; errors name the leaf."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    leaves = []
    for p, leaf in paths:
        name = jax.tree_util.keystr(p)
        if name not in arrays and _is_optimiser(name):  # not exported: a placeholder
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
            continue
        if name not in arrays:
            raise ConfigError(f"{path}: the export has no {what}{name}; it was written for "
                              "another method or version")
        x = arrays[name]
        if x.shape != leaf.shape:
            raise ConfigError(f"{path}: {what}{name} has shape {x.shape}, expected "
                              f"{leaf.shape}")
        leaves.append(x.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def is_export(path: str | Path) -> bool:
    return str(path).endswith(EXPORT_SUFFIX)


def load_source(path: str | Path) -> Source:
    """A run directory's checkpoint (learners only, no replay buffer) or an export."""
    path = Path(path)
    if is_export(path):
        if not path.is_file():
            raise ConfigError(f"{path}: no such parameters export")
        with np.load(path) as z:
            cfg = from_saved(json.loads(str(z["__config__"])))
            arrays = {k: z[k] for k in z.files}
        abstract = _abstract(cfg)
        low = _fill(abstract.low, {k[4:]: v for k, v in arrays.items() if k.startswith("low:")},
                    "low", path)
        high = None
        if abstract.high is not None:
            high = _fill(abstract.high, {k[5:]: v for k, v in arrays.items()
                                         if k.startswith("high:")}, "high", path)
        has_opt = any(_is_optimiser(k.split(":", 1)[1]) for k in arrays if ":" in k)
        return Source(path, cfg, low, high, np.asarray(arrays["__t_env__"]), has_opt)
    cfg_path, ckpt = path / "config.json", path / "checkpoint"
    if not cfg_path.exists() or not ckpt.exists():
        raise ConfigError(f"{path} is neither a run directory (config.json and checkpoint/) "
                          f"nor a parameters export (*{EXPORT_SUFFIX})")
    from alma_jax.checkpoint import load_partial

    cfg = from_saved(json.loads(cfg_path.read_text()))
    abstract = _abstract(cfg)
    saved = load_partial(ckpt, {"low": abstract.low, "high": abstract.high,
                                "t_env": abstract.t_env})
    saved = jax.device_get(saved)
    return Source(path, cfg, saved["low"], saved["high"], np.asarray(saved["t_env"]))


def export_params(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the learners of `run_dir`'s checkpoint to `out` (*.npz) without replay buffer
    and optimiser moments; returns a summary."""
    out = Path(out)
    if not is_export(out):
        raise ConfigError(f"export path {out} must end in {EXPORT_SUFFIX}")
    src = load_source(run_dir)
    arrays = {}
    for part, tree in (("low", src.low), ("high", src.high)):
        if tree is not None:
            arrays.update({f"{part}:{k}": np.asarray(v) for k, v in _flat(tree).items()
                           if not _is_optimiser(k)})
    arrays["__config__"] = np.array(json.dumps(dataclasses.asdict(src.cfg)))
    arrays["__t_env__"] = src.t_env
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {"export": str(out), "bytes": out.stat().st_size, "alg": src.cfg.alg,
            "seeds": src.seeds, "t_env": src.t_env.tolist()}


def _differing(a: Config, b: Config, keys: tuple[str, ...]) -> list[str]:
    return [f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in keys
            if getattr(a, k) != getattr(b, k)]


def check_low_compatible(src: Source, cfg: Config, abstract_low: Any) -> None:
    """Stop (ConfigError) if the source's low level cannot be the run's: the keys that
    define the low level differ, or its arrays do not have the run's shapes."""
    diff = _differing(src.cfg, cfg, LOW_LEVEL_KEYS)
    if diff:
        raise ConfigError(f"low_from={src.path}: its low level differs from this run's in "
                          + "; ".join(diff) + " (source vs this run)")
    _check_shapes(f"low_from={src.path}", src.low, abstract_low)


def _check_shapes(what: str, tree: Any, abstract: Any) -> None:
    """Stop if a source's learner state does not have the run's fields and shapes."""
    got = {k: np.shape(v)[1:] for k, v in _flat(tree).items()}
    want = {k: v.shape[1:] for k, v in _flat(abstract).items()}
    if got.keys() != want.keys():
        raise ConfigError(f"{what}: learner state differs in "
                          f"{sorted(set(got) ^ set(want))[:5]}")
    bad = [f"{k} {got[k]} vs {want[k]}" for k in want if got[k] != want[k]]
    if bad:
        raise ConfigError(f"{what}: shapes differ: " + "; ".join(bad[:5]))


def prepare_high(cfg: Config, abstract_high: Any) -> tuple[Any, bool, np.ndarray]:
    """(seed-batched allocator state that `high_from` names, whether it carries optimiser
    states, the source's env-step counter per seed [S]); seed i continues seed i. Checked
    against the run before anything compiles."""
    src = load_source(cfg.high_from)
    what = f"high_from={src.path}"
    if src.high is None:
        raise ConfigError(f"{what}: its run (alg={src.cfg.alg}) has no learned allocator")
    # `alloc` with its defaults filled, so a config saved before a key existed compares equal
    views = {"env": lambda c: c.env, "env_args": lambda c: dict(c.env_args),
             "alloc": alloc_settings, "aql": lambda c: dict(c.aql)}
    diff = [f"{k}: {f(src.cfg)!r} vs {f(cfg)!r}" for k, f in views.items()
            if f(src.cfg) != f(cfg)]
    if diff:
        raise ConfigError(f"{what}: its allocator differs from this run's in "
                          + "; ".join(diff) + " (source vs this run)")
    if src.cfg.num_seeds != cfg.num_seeds:
        raise ConfigError(f"{what} has {src.cfg.num_seeds} seed(s), this run "
                          f"num_seeds={cfg.num_seeds}: match them")
    _check_shapes(what, src.high, abstract_high)
    high = jax.tree.map(lambda x, a: np.asarray(x).astype(a.dtype), src.high, abstract_high)
    return high, src.has_optimiser, np.asarray(src.t_env)


def seed_rows(src: Source, cfg: Config) -> np.ndarray:
    """Which source seed (row) each of the run's seeds starts from: seed i from seed i, or
    every seed from `low_seed`."""
    if cfg.low_seed is not None:
        if cfg.low_seed not in src.seeds:
            raise ConfigError(f"low_seed={cfg.low_seed} is not a seed of {src.path} (its "
                              f"seeds: {src.seeds})")
        return np.full((cfg.num_seeds,), src.seeds.index(cfg.low_seed))
    if src.cfg.num_seeds != cfg.num_seeds:
        raise ConfigError(f"low_from={src.path} has {src.cfg.num_seeds} seed(s), this run "
                          f"num_seeds={cfg.num_seeds}: match them or pick one with low_seed=k "
                          f"(one of {src.seeds})")
    return np.arange(cfg.num_seeds)


def prepare_low(cfg: Config, abstract_low: Any) -> tuple[Any, bool]:
    """(seed-batched low-level state that `low_from` names, whether it carries optimiser
    states), checked against the run (call before compiling anything: errors cost no
    compile time). Without optimiser states, `with_fresh_optimiser` completes it."""
    src = load_source(cfg.low_from)
    check_low_compatible(src, cfg, abstract_low)
    rows = seed_rows(src, cfg)
    low = jax.tree.map(lambda x, a: np.asarray(x)[rows].astype(a.dtype), src.low, abstract_low)
    return low, src.has_optimiser


def adopt(loaded: Any, fresh: Any, has_optimiser: bool) -> Any:
    """A loaded (host) learner state placed like `fresh` (the run's newly initialised one);
    from a parameters export, with `fresh`'s optimiser states."""
    state = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), loaded, fresh)
    return state if has_optimiser else with_fresh_optimiser(state, fresh)


def with_fresh_optimiser(low: Any, fresh: Any) -> Any:
    """`low` with the optimiser fields of `fresh` (a newly initialised learner state)."""
    return low.replace(**{f: getattr(fresh, f) for f in OPTIMISER_FIELDS if hasattr(fresh, f)})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "export":
        raise SystemExit("usage: python -m alma_jax.transfer export <run dir> <file.npz>")
    try:
        print(json.dumps(export_params(argv[1], argv[2]), indent=1))
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None


if __name__ == "__main__":
    main()
