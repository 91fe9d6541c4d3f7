"""Every configuration key in one place: its default, type and allowed values.

`load_config(overrides)` reads `configs/config.yaml` with the `env/` and `alg/` groups through
Hydra's compose API (so `key=value`, `env=...`, `alg=...` overrides use Hydra's grammar), then
checks every key before anything is compiled. Errors name the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ALGS = ("aqmix", "heuristic", "random_alloc", "alma", "alma_nomask", "refil", "copa", "lica",
        "alma_lica")
RECIPES = ("cpu",)  # configs/recipe/<name>.yaml: named bundles of overrides
ENVS = ("savethecity", "traffic_junction", "starcraft_jax", "multiarmy_jax", "host_savethecity",
        "host_traffic_junction", "smac", "sc2multiarmy")


# The allocator's own networks and optimiser (alma.md errata E2): not the low level's keys,
# so a recipe that shrinks or re-optimises the low level leaves the allocator as it was.
# updates_per_rollout None = the low level's; batch_size = episodes per allocator step (3.11).
ALLOC_DEFAULTS: dict[str, Any] = {
    "embed_dim": 128, "n_heads": 4, "optimizer": "rmsprop", "lr": 5e-4, "popart": True,
    "grad_clip": 10.0, "batch_size": 32, "updates_per_rollout": None,
}
_ALLOC_TYPES: dict[str, tuple[type, ...]] = {
    "embed_dim": (int,), "n_heads": (int,), "optimizer": (str,), "lr": (int, float),
    "popart": (bool,), "grad_clip": (int, float), "batch_size": (int,),
    "updates_per_rollout": (int, type(None)),
}


def alloc_settings(cfg: Config) -> dict[str, Any]:
    """`cfg.alloc` completed with the defaults (a config written before a key existed)."""
    return {**ALLOC_DEFAULTS, **dict(cfg.alloc)}


# envs with a spec heuristic allocation
HEURISTIC_ENVS = ("savethecity", "host_savethecity", "sc2multiarmy", "starcraft_jax",
                  "multiarmy_jax")
# envs that compute their heuristic inside the env, only when asked, and write it into the
# agents' subtask rows (starcraft.md A.13)
HOST_HEURISTIC_ENVS = ("sc2multiarmy", "multiarmy_jax")


class ConfigError(ValueError):
    """A configuration key has an unknown name or a bad value."""


@dataclass(frozen=True)
class Config:
    """A full run: environment, method, budget, logging. Defaults are the paper's (alma.md 4.8)."""

    # what to run
    env: str = "savethecity"
    alg: str = "heuristic"
    env_args: dict = field(default_factory=dict)  # forwarded to envs_jax.make
    # method (set by configs/alg/*.yaml)
    subtask_cond: str | None = None  # None | 'mask' | 'full_obs'
    allocation: str | None = None  # None | 'heuristic' | 'random' | 'aql'
    low_learner: str = "qmix"  # 'qmix' (A-QMIX value learner) | 'lica' (actor-critic)
    action_length: int = 5
    # learned allocation (AQL, alma.md 3); exploration horizons in absolute env steps (E1)
    alloc_eps_anneal_time: int = 750_000
    prop_alloc_eps_finish: float = 0.05
    prop_alloc_eps_anneal_time: int = 3_000_000
    alloc_target_update_interval: int = 50  # episodes
    alloc: dict = field(default_factory=lambda: dict(ALLOC_DEFAULTS))  # allocator nets (E2)
    aql: dict = field(default_factory=dict)  # extra AQLConfig fields, e.g. n_proposals, decay_old
    lica: dict = field(default_factory=dict)  # LicaConfig fields (lica.md 9), set by alg yaml
    refil: dict = field(default_factory=dict)  # QMixConfig REFIL fields (alma.md 2.8)
    copa: dict = field(default_factory=dict)  # QMixConfig COPA fields (alma.md 5.4)
    # budget and schedule
    seed: int = 0
    num_seeds: int = 1
    num_envs: int = 8
    total_env_steps: int = 15_000_000
    updates_per_rollout: int = 8
    batch_size: int = 32
    max_traj_len: int = 64
    buffer_size: int = 5000
    target_update_interval: int = 200  # episodes
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_time: int = 2_000_000
    gamma: float = 0.99
    n_step: int = 1  # value learners: n-step returns (1 = the paper's 1-step targets)
    popart: bool = True  # value learners: Pop-Art on the low-level mixer (the paper's setting)
    softmax_mixing_weights: bool = True  # value learners: softmax (paper) or |.| mixer weights
    mixer: str = "qmix"  # value learners: 'qmix' (paper) | 'vdn' (sum; diagnostic baseline)
    optimizer: str = "rmsprop"  # value learners (QMIX, ALMA's allocator): 'rmsprop' | 'adam'
    lr: float = 5e-4
    grad_clip: float = 10.0
    # every network's contractions: 'fp32' | 'bf16' (bf16 inputs, fp32 accumulation; parameters,
    # optimiser state, targets and losses stay fp32: alma_jax/nn/precision.py)
    precision: str = "fp32"
    # the gradient step's network passes as this many independent pieces of the window batch,
    # so that XLA:CPU runs them on separate cores (alma_jax/batching.py); same mathematics
    update_splits: int = 1
    # network sizes
    embed_dim: int = 128
    n_heads: int = 4
    hidden_dim: int = 64
    mix_dim: int = 32
    hyper_dim: int = 128
    # evaluation, logging, checkpoints
    test_interval: int = 50_000
    test_episodes: int = 160
    log_interval: int = 10_000
    rollouts_per_chunk: int = 8
    out_dir: str = "runs/default"
    checkpoint_interval: int = 500_000
    resume: bool = False
    tensorboard: bool = False
    progress: bool = True
    max_wall_seconds: int = 0  # stop (with a checkpoint) after this long; 0 = no limit
    # start from another run's low level (alma_jax.transfer): a run dir or a params export
    low_from: str | None = None
    freeze_low: bool = False  # with low_from: train only the allocator, low level untouched
    low_seed: int | None = None  # with low_from: broadcast that seed of the source run
    # continue another run's learned allocator (its state and its env-step counter, so the
    # exploration schedules go on where they were): a run dir or a params export
    high_from: str | None = None


ALLOWED: dict[str, tuple] = {
    "env": ENVS,
    "alg": ALGS,
    "subtask_cond": (None, "mask", "full_obs"),
    "allocation": (None, "heuristic", "random", "aql"),
    "low_learner": ("qmix", "lica"),
    "mixer": ("qmix", "vdn"),
    "optimizer": ("rmsprop", "adam"),
    "precision": ("fp32", "bf16"),
}
POSITIVE = {
    "num_seeds", "num_envs", "total_env_steps", "updates_per_rollout", "batch_size",
    "update_splits",
    "max_traj_len", "buffer_size", "target_update_interval", "action_length", "test_interval",
    "test_episodes", "log_interval", "rollouts_per_chunk", "checkpoint_interval", "embed_dim",
    "alloc_target_update_interval", "n_step",
    "n_heads", "hidden_dim", "mix_dim", "hyper_dim",
}


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,),
}


def _check_types(cfg: Config) -> None:
    """Every plain-typed key holds a value of its type (bools are not numbers here)."""
    for f in fields(Config):
        want = _TYPES.get(f.type)
        v = getattr(cfg, f.name)
        if want is None:
            continue
        if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
            raise ConfigError(f"{f.name} must be of type {f.type}, got {v!r}")


def env_kwargs(cfg: Config) -> dict[str, Any]:
    """`env_args` plus what the method needs from the env: allocation='heuristic' on an env
    that computes its heuristic host-side switches that on (`heuristic_alloc`)."""
    kw = dict(cfg.env_args)
    if cfg.allocation == "heuristic" and cfg.env in HOST_HEURISTIC_ENVS:
        kw.setdefault("heuristic_alloc", True)
    return kw


def _check_env(cfg: Config) -> None:
    """env_args are the environment's options: build it once so bad ones fail here."""
    import envs_jax

    try:
        envs_jax.make(cfg.env, **env_kwargs(cfg))
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"env_args={cfg.env_args!r}: {e}") from None


def _check_learner_options(cfg: Config) -> None:
    """The dict-valued method options name fields of their learner's config dataclass."""
    from dataclasses import fields as dc_fields

    from alma_jax.learners.aql import AQLConfig
    from alma_jax.learners.qmix import QMixConfig

    groups = {"aql": AQLConfig, "refil": QMixConfig, "copa": QMixConfig}
    if cfg.low_learner == "lica":
        from alma_jax.learners.lica import LicaConfig

        groups["lica"] = LicaConfig
        if cfg.n_step != 1:
            raise ConfigError(f"n_step={cfg.n_step} applies to low_learner='qmix'; LICA uses "
                              "TD(lambda) (lica.td_lambda), so leave n_step at 1")
        for key in ("popart", "softmax_mixing_weights"):
            if not getattr(cfg, key):
                raise ConfigError(f"{key}=false applies to the QMIX mixer (low_learner='qmix'); "
                                  "LICA's critic has neither, so leave it true")
        if cfg.mixer != "qmix":
            raise ConfigError(f"mixer={cfg.mixer!r} applies to low_learner='qmix'; LICA has its "
                              "own critic (lica.*), so leave mixer at 'qmix'")
        if cfg.optimizer != "rmsprop":
            raise ConfigError(
                f"optimizer={cfg.optimizer!r} applies to the QMIX low level "
                "(low_learner='qmix'); LICA has its own optimisers (lica.*) and ALMA's "
                "allocator its own (alloc.optimizer), so leave optimizer at 'rmsprop' here")
        if cfg.update_splits != 1:
            raise ConfigError(f"update_splits={cfg.update_splits} applies to the QMIX low "
                              "level (low_learner='qmix'); leave it at 1 with LICA")
        if cfg.subtask_cond == "full_obs":
            raise ConfigError("low_learner='lica' supports subtask_cond None or 'mask', "
                              "not 'full_obs'")
    fixed = {"n_agents", "n_actions", "n_tasks", "entity_dim", "subtask_cond", "precision"}
    for name, klass in groups.items():
        allowed = sorted({f.name for f in dc_fields(klass)} - fixed)
        bad = sorted(set(getattr(cfg, name)) - set(allowed))
        if bad:
            raise ConfigError(f"{name}: unknown option(s) {bad}; allowed: {allowed}")


def _check_alloc(cfg: Config) -> None:
    """alloc.* names known keys with values of the right type and range."""
    bad = sorted(set(cfg.alloc) - set(ALLOC_DEFAULTS))
    if bad:
        raise ConfigError(f"alloc: unknown option(s) {bad}; allowed: {sorted(ALLOC_DEFAULTS)}")
    a = alloc_settings(cfg)
    for k, types in _ALLOC_TYPES.items():
        v = a[k]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ConfigError(f"alloc.{k} must be of type "
                              f"{' | '.join(t.__name__ for t in types)}, got {v!r}")
    if a["optimizer"] not in ("rmsprop", "adam"):
        raise ConfigError(f"alloc.optimizer={a['optimizer']!r} is not allowed; choose one of "
                          "['rmsprop', 'adam']")
    for k in ("embed_dim", "n_heads", "batch_size"):
        if a[k] < 1:
            raise ConfigError(f"alloc.{k} must be a positive integer, got {a[k]!r}")
    if a["updates_per_rollout"] is not None and a["updates_per_rollout"] < 1:
        raise ConfigError("alloc.updates_per_rollout must be a positive integer or null (= "
                          f"updates_per_rollout), got {a['updates_per_rollout']!r}")
    for k in ("lr", "grad_clip"):
        if not a[k] > 0:
            raise ConfigError(f"alloc.{k} must be > 0, got {a[k]!r}")
    if a["embed_dim"] % a["n_heads"]:
        raise ConfigError(f"alloc.embed_dim={a['embed_dim']} must be divisible by "
                          f"alloc.n_heads={a['n_heads']}")
    if cfg.allocation == "aql" and a["batch_size"] > cfg.buffer_size:
        raise ConfigError(f"alloc.batch_size={a['batch_size']} exceeds "
                          f"buffer_size={cfg.buffer_size}")


def _check_transfer(cfg: Config) -> None:
    """freeze_low / low_seed only mean something with low_from; high_from needs an allocator."""
    if cfg.low_from is None:
        for key, off in (("freeze_low", False), ("low_seed", None)):
            if getattr(cfg, key) != off:
                raise ConfigError(f"{key}={getattr(cfg, key)!r} needs low_from=<run dir or "
                                  "params export> (the low level to start from)")
    elif not isinstance(cfg.low_from, str) or not cfg.low_from:
        raise ConfigError(f"low_from must be a path, got {cfg.low_from!r}")
    if cfg.low_seed is not None and (not isinstance(cfg.low_seed, int)
                                     or isinstance(cfg.low_seed, bool)):
        raise ConfigError(f"low_seed must be an integer seed of the source run, got "
                          f"{cfg.low_seed!r}")
    if cfg.high_from is not None:
        if not isinstance(cfg.high_from, str) or not cfg.high_from:
            raise ConfigError(f"high_from must be a path, got {cfg.high_from!r}")
        if cfg.allocation != "aql":
            raise ConfigError(f"high_from continues a learned allocator, but alg={cfg.alg} has "
                              "none (use alg=alma, alma_nomask or alma_lica)")
    if cfg.freeze_low and cfg.allocation != "aql":
        raise ConfigError(f"freeze_low=true trains only the allocator, but alg={cfg.alg} has no "
                          "learned allocator (use alg=alma, alma_nomask or alma_lica)")


def validate(cfg: Config) -> Config:
    """Raise ConfigError naming the first bad key and its allowed values; return cfg."""
    for name, allowed in ALLOWED.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} is not allowed; choose one of "
                              f"{[a for a in allowed]}")
    _check_types(cfg)
    for name in POSITIVE:
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if cfg.max_wall_seconds < 0:
        raise ConfigError(
            f"max_wall_seconds must be >= 0 (0 = no limit), got {cfg.max_wall_seconds}")
    for name in ("epsilon_start", "epsilon_finish", "prop_alloc_eps_finish"):
        v = getattr(cfg, name)
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {v!r}")
    if not 0.0 < float(cfg.gamma) <= 1.0:
        raise ConfigError(f"gamma must lie in (0, 1], got {cfg.gamma!r}")
    for name in ("lr", "grad_clip"):
        if not float(getattr(cfg, name)) > 0.0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("epsilon_anneal_time", "alloc_eps_anneal_time", "prop_alloc_eps_anneal_time"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{name} must be an integer >= 0 (env steps), got {v!r}")
    _check_alloc(cfg)
    _check_transfer(cfg)
    if (cfg.subtask_cond is None) != (cfg.allocation is None):
        raise ConfigError("subtask_cond and allocation must be set together (both or neither); "
                          f"got subtask_cond={cfg.subtask_cond!r}, allocation={cfg.allocation!r}")
    if cfg.embed_dim % cfg.n_heads or cfg.hyper_dim % cfg.n_heads:
        raise ConfigError(f"embed_dim and hyper_dim must be divisible by n_heads={cfg.n_heads}")
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds buffer_size={cfg.buffer_size}")
    _check_learner_options(cfg)
    if cfg.allocation == "heuristic" and cfg.env not in HEURISTIC_ENVS:
        raise ConfigError(f"allocation='heuristic' (alg={cfg.alg}) needs an env with a heuristic "
                          f"allocator: env one of {list(HEURISTIC_ENVS)}, got env={cfg.env!r}")
    _check_env(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a Config from a plain dict; unknown keys are errors."""
    names = {f.name for f in fields(Config)}
    d = dict(d)
    if isinstance(d.get("alloc"), dict):  # keys not given keep their defaults
        d["alloc"] = {**ALLOC_DEFAULTS, **d["alloc"]}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; allowed keys: {sorted(names)}")
    cfg = Config(**d)
    for f in fields(Config):  # coerce YAML ints written as floats, e.g. 1e6
        v = getattr(cfg, f.name)
        if f.type == "int" and isinstance(v, float) and v.is_integer():
            object.__setattr__(cfg, f.name, int(v))
    return validate(cfg)


# Keys of configs saved by earlier versions -> how to read them today.
_RENAMED_FRACTIONS = {"alloc_eps_anneal_frac": "alloc_eps_anneal_time",
                      "prop_alloc_eps_anneal_frac": "prop_alloc_eps_anneal_time"}


def from_saved(d: dict[str, Any]) -> Config:
    """A run's saved config.json, also from before a key was renamed: the allocation
    schedules' old fractions of total_env_steps become the absolute horizons they meant."""
    d = dict(d)
    for old, new in _RENAMED_FRACTIONS.items():
        if old in d:
            frac = d.pop(old)
            d.setdefault(new, int(round(frac * d.get("total_env_steps", 15_000_000))))
    return from_dict(d)


def load_config(overrides: list[str] | None = None) -> Config:
    """Compose configs/config.yaml + env/<env>.yaml + alg/<alg>.yaml with Hydra overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    # `env.<key>=v` is shorthand for `env_args.<key>=v` (e.g. env=smac env.map_name=3m)
    overrides = [("env_args." + o[4:]) if o.startswith("env.") else
                 ("+env_args." + o[5:]) if o.startswith("+env.") else o
                 for o in (overrides or [])]
    for group, allowed in (("env", ENVS), ("alg", ALGS), ("recipe", RECIPES)):
        for o in overrides:
            if o.startswith(f"{group}=") and o.split("=", 1)[1] not in allowed:
                raise ConfigError(f"{o!r}: {group} must be one of {list(allowed)}")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            raw = compose(config_name="config", overrides=overrides)
    except HydraException as e:  # e.g. a key that does not exist
        names = sorted(f.name for f in fields(Config))
        raise ConfigError(f"{e}\nallowed keys: {names}") from None
    d = OmegaConf.to_container(raw, resolve=True)
    return from_dict(d)
