"""StarCraft II through the bridge: SMAC adapters (worker side) and env builders (parent side).

Worker side (numpy only; `smac` itself is imported in the worker, never in the trainer):

* `SmacFlatHost`: the flat-vector scheme LICA uses. Any env with SMAC's methods (`get_obs`,
  `get_state`, `get_avail_actions`, `get_env_info`, `step`, `reset`, `close`) is presented
  as N = n_agents + 1 entities of width max(obs, state): row i < n_agents holds agent i's
  observation (agent i attends to that row only), the last row holds the global state. One
  task. `BridgeEnv.split_flat`-style slicing (`split_flat` here) recovers obs and state.
* `SmacEntityHost`: an entity scheme for standard SMAC maps, built from SMAC's documented
  state layout (per-unit health, cooldown/energy, position, shield, type one-hot) and the
  per-agent visibility encoded in SMAC observations (spec B.3). One task (the enemy team).

Both export the array contract of spec B.6 in `info`: `battle_won`, `truncated`,
`dead_allies`, `dead_enemies`, the PyMARL `episode_limit` flag, and `env_error` for steps on
which SMAC restarted the game after a crash (it then returns `(0, True, {})`).

Parent side: `make_smac_env` / `make_sc2multiarmy_env` check the optional StarCraft install
and raise `MissingDependencyError` (also a ValueError, so config validation reports it as a
plain config error) saying exactly what to install and how. `make_sc2multiarmy_env` builds
ALMA's multi-army env (host_sc2multiarmy.py) over pysc2 or another game backend.

The adapters are written against oxwhirl SMAC's public methods and attributes; without
StarCraft II they are exercised only with the SMAC-like fakes of the test suite.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from envs_jax.bridge.host import standard_info_spec
from envs_jax.bridge.workers import load_target

DEFAULT_SMAC_CLASS = "smac.env:StarCraft2Env"
SCHEMES = ("entity", "flat")
ALMA_MAP = "empty_passive"

# Spec A.2: static sizes of ALMA's multi-army families (entity dims are derived there);
# `sc2multiarmy.make_family(name).sizes()` computes the same from the scenario lists.
SC2MULTIARMY_SIZES = {
    "6-8sz_maxsize4_maxarmies3_symmetric":
        {"n_agents": 8, "n_entities": 16, "n_actions": 14, "entity_dim": 42},
    "6-8sz_maxsize4_maxarmies3_unitdisadvantage":
        {"n_agents": 8, "n_entities": 17, "n_actions": 15, "entity_dim": 44},
    "6-8MMM_maxsize4_maxarmies3_symmetric":
        {"n_agents": 8, "n_entities": 16, "n_actions": 22, "entity_dim": 50},
    "6-8MMM_maxsize4_maxarmies3_unitdisadvantage":
        {"n_agents": 8, "n_entities": 17, "n_actions": 23, "entity_dim": 52},
}


class EnvUnavailableError(ValueError):
    """An environment cannot be built in this installation (the message says why)."""


class MissingDependencyError(EnvUnavailableError, ImportError):
    """An optional dependency (StarCraft II, SMAC, maps) is missing; says how to install it."""


def smac_info_spec() -> dict[str, tuple[tuple[int, ...], str]]:
    """Info arrays of both SMAC schemes (spec B.6; one task)."""
    return {
        **standard_info_spec(1),
        "battle_won": ((), "bool"),
        "truncated": ((), "bool"),
        "dead_allies": ((), "int32"),
        "dead_enemies": ((), "int32"),
    }


def _reset(env: Any, seed: int) -> None:
    # SMAC's reset takes no seed (the game is seeded at construction); test envs may.
    try:
        takes_seed = "seed" in inspect.signature(env.reset).parameters
    except (TypeError, ValueError):
        takes_seed = False
    if takes_seed:
        env.reset(seed=seed)
    else:
        env.reset()


class _SmacBase:
    """Step bookkeeping shared by both schemes."""

    def __init__(self, env: Any, timeout_as_episode_limit: bool = False,
                 seed_from_key: bool = True):
        self.env = env
        self.seed_from_key = seed_from_key
        info = dict(env.get_env_info())
        self.A = int(info["n_agents"])
        self.n_actions = int(info["n_actions"])
        self.O = int(info["obs_shape"])
        self.S = int(info["state_shape"])
        self.limit = int(info["episode_limit"])
        self.n_enemies = int(getattr(env, "n_enemies", 0))
        self.timeout_as_episode_limit = timeout_as_episode_limit
        self.t = 0

    def info_spec(self) -> dict:
        return smac_info_spec()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs = np.asarray(self.env.get_obs(), np.float32).reshape(self.A, self.O)
        state = np.asarray(self.env.get_state(), np.float32).reshape(self.S)
        avail = np.asarray(self.env.get_avail_actions(), np.int32).reshape(self.A,
                                                                            self.n_actions)
        return obs, state, avail

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        env = self.env
        if (self.seed_from_key and hasattr(env, "_seed")
                and getattr(env, "_episode_count", None) == 0):
            # SMAC seeds the game once, when its first reset launches it (StarCraft2Env's
            # private `_seed`): taking that seed from the bridge's key makes parallel games
            # differ and runs reproducible from the trainer's seed.
            env._seed = seed % (2**31 - 1)
        _reset(env, seed)
        self.t = 0
        return self._obs(False)

    def step(self, actions: np.ndarray) -> tuple[dict, float, bool, dict]:
        before = getattr(self.env, "force_restarts", None)
        reward, terminated, info = self.env.step([int(a) for a in actions])
        info = dict(info or {})
        terminated = bool(terminated)
        self.t += 1
        after = getattr(self.env, "force_restarts", None)
        # SMAC answers a game crash by restarting it and returning (0, True, {})
        restarted = (before is not None and after != before) or (terminated and not info)
        won = bool(info.get("battle_won", False))
        dead_allies = int(info.get("dead_allies", 0))
        dead_enemies = int(info.get("dead_enemies", 0))
        over = won or dead_allies >= self.A or (self.n_enemies > 0
                                                and dead_enemies >= self.n_enemies)
        truncated = terminated and not over and not restarted and self.t >= self.limit
        pymarl_limit = bool(info.get("episode_limit", False))
        out = {
            "task_rewards": np.array([reward], np.float32),
            "tasks_terminated": np.array([terminated]),
            "tasks_changed": terminated,
            "episode_limit": truncated if self.timeout_as_episode_limit else pymarl_limit,
            "battle_won": won,
            "truncated": truncated,
            "dead_allies": dead_allies,
            "dead_enemies": dead_enemies,
            "env_error": restarted,
        }
        return self._obs(terminated), float(reward), terminated, out

    def _obs(self, terminated: bool) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def get_stats(self) -> Any:
        get = getattr(self.env, "get_stats", None)
        return get() if callable(get) else None

    def close(self) -> None:
        self.env.close()


class SmacFlatHost(_SmacBase):
    """Flat SMAC observations/state as n_agents + 1 entity rows (see the module doc)."""

    def env_info(self) -> dict[str, int]:
        return {"n_agents": self.A, "n_entities": self.A + 1, "n_tasks": 1,
                "n_actions": self.n_actions, "entity_dim": max(self.O, self.S),
                "episode_limit": self.limit, "obs_dim": self.O, "state_dim": self.S}

    def _obs(self, terminated: bool) -> dict[str, np.ndarray]:
        obs, state, avail = self._arrays()
        A = self.A
        entities = np.zeros((A + 1, max(self.O, self.S)), np.float32)
        entities[:A, : self.O] = obs
        entities[A, : self.S] = state
        obs_mask = np.ones((A + 1, A + 1), bool)
        obs_mask[np.arange(A), np.arange(A)] = False  # decentralised: own observation only
        obs_mask[A] = False  # the state row (read by centralised critics/mixers) sees all
        return {
            "entities": entities,
            "avail_actions": avail,
            "obs_mask": obs_mask,
            "entity_mask": np.zeros(A + 1, bool),
            "entity2task_mask": np.zeros((A + 1, 1), bool),
            "task_mask": np.array([terminated]),
        }


class SmacEntityHost(_SmacBase):
    """Entities of a standard SMAC map: allies then enemies (see the module doc).

    Entity features: [ally, enemy, health, shield, cooldown/energy (allies), x, y,
    unit-type one-hot, ally's available actions (n_actions; zeros for enemies)].
    """

    def __init__(self, env: Any, timeout_as_episode_limit: bool = False,
                 seed_from_key: bool = True):
        super().__init__(env, timeout_as_episode_limit, seed_from_key)
        need = ("n_enemies", "unit_type_bits", "shield_bits_ally", "shield_bits_enemy",
                "get_obs_move_feats_size", "get_obs_enemy_feats_size",
                "get_obs_ally_feats_size")
        missing = [a for a in need if not hasattr(env, a)]
        if missing:
            raise TypeError(f"the SMAC entity scheme needs StarCraft2Env's {missing}; use "
                            "scheme='flat' for envs with only the basic SMAC methods")
        if getattr(env, "obs_instead_of_state", False):
            raise ValueError("the SMAC entity scheme reads the state layout: set "
                             "obs_instead_of_state=False")
        self.NE = int(env.n_enemies)
        self.type_bits = int(env.unit_type_bits)
        self.sh_al = int(env.shield_bits_ally)
        self.sh_en = int(env.shield_bits_enemy)
        self.nf_al = 4 + self.sh_al + self.type_bits
        self.nf_en = 3 + self.sh_en + self.type_bits
        self.move = int(env.get_obs_move_feats_size())
        n_en, self.en_feat = (int(v) for v in env.get_obs_enemy_feats_size())
        n_al, self.al_feat = (int(v) for v in env.get_obs_ally_feats_size())
        if n_en != self.NE or n_al != self.A - 1:
            raise ValueError(f"unexpected SMAC observation blocks: {n_en} enemies, {n_al} allies")
        self.dim = 7 + self.type_bits + self.n_actions

    def env_info(self) -> dict[str, int]:
        return {"n_agents": self.A, "n_entities": self.A + self.NE, "n_tasks": 1,
                "n_actions": self.n_actions, "entity_dim": self.dim,
                "episode_limit": self.limit, "n_enemies": self.NE}

    def _obs(self, terminated: bool) -> dict[str, np.ndarray]:
        obs, state, avail = self._arrays()
        A, NE, tb = self.A, self.NE, self.type_bits
        ally = state[: A * self.nf_al].reshape(A, self.nf_al)
        enemy = state[A * self.nf_al: A * self.nf_al + NE * self.nf_en].reshape(NE, self.nf_en)
        ent = np.zeros((A + NE, self.dim), np.float32)
        ent[:A, 0] = 1.0
        ent[A:, 1] = 1.0
        ent[:A, 2] = ally[:, 0]
        ent[A:, 2] = enemy[:, 0]
        if self.sh_al:
            ent[:A, 3] = ally[:, 4]
        if self.sh_en:
            ent[A:, 3] = enemy[:, 3]
        ent[:A, 4] = ally[:, 1]
        ent[:A, 5:7] = ally[:, 2:4]
        ent[A:, 5:7] = enemy[:, 1:3]
        if tb:
            ent[:A, 7:7 + tb] = ally[:, 4 + self.sh_al:]
            ent[A:, 7:7 + tb] = enemy[:, 3 + self.sh_en:]
        ent[:A, 7 + tb:] = avail
        dead = np.concatenate([ally[:, 0], enemy[:, 0]]) <= 0.0

        # visibility from each agent's observation blocks (SMAC zeroes unseen/dead units)
        start = self.move
        en_blocks = obs[:, start: start + NE * self.en_feat].reshape(A, NE, self.en_feat)
        start += NE * self.en_feat
        al_blocks = obs[:, start: start + (A - 1) * self.al_feat].reshape(A, A - 1,
                                                                          self.al_feat)
        sees = np.zeros((A + NE, A + NE), bool)
        sees[:A, A:] = np.any(en_blocks != 0.0, -1)
        for i in range(A):
            others = [j for j in range(A) if j != i]
            sees[i, others] = al_blocks[i, :, 0] > 0.0
        sees[A:, :] = True  # enemy rows: the (centralised) mixer's view of the battle
        sees[np.arange(A + NE), np.arange(A + NE)] = True
        sees &= ~dead[:, None] & ~dead[None, :]
        e2t = np.zeros((A + NE, 1), bool)
        e2t[:A] = True  # agents: unassigned; the learner writes its allocation here
        return {
            "entities": ent,
            "avail_actions": avail,
            "obs_mask": ~sees,
            "entity_mask": dead,
            "entity2task_mask": e2t,
            "task_mask": np.array([terminated]),
        }


def smac_host(env_class: str = DEFAULT_SMAC_CLASS, scheme: str = "entity",
              env_kwargs: dict | None = None, timeout_as_episode_limit: bool = False,
              seed_from_key: bool = True):
    """Worker factory: build a SMAC-API env (by default oxwhirl's StarCraft2Env) and adapt it."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    env = load_target(env_class)(**dict(env_kwargs or {}))
    host = SmacEntityHost if scheme == "entity" else SmacFlatHost
    try:
        return host(env, timeout_as_episode_limit, seed_from_key)
    except BaseException:
        env.close()
        raise


def split_flat(entities: Any, n_agents: int, obs_dim: int, state_dim: int):
    """Flat-scheme entities [..., A+1, D] -> (agent obs [..., A, O], state [..., S])."""
    return entities[..., :n_agents, :obs_dim], entities[..., n_agents, :state_dim]


# ------------------------------------------------------------------------ parent side
def sc2_path() -> Path:
    """Where SMAC looks for StarCraft II: $SC2PATH, else ~/StarCraftII."""
    return Path(os.environ.get("SC2PATH", "~/StarCraftII")).expanduser()


def smac_install_problems(map_name: str | None = None, need_smac: bool = True) -> list[str]:
    """What is missing for SMAC on map `map_name` (empty when everything is in place).

    `need_smac=False`: only what talking to the game through pysc2 needs (sc2multiarmy)."""
    problems = []
    spec = importlib.util.find_spec("smac") if need_smac else None
    if need_smac and spec is None:
        problems.append("the Python package `smac` (oxwhirl's SMAC) is not installed")
    elif need_smac and not any((Path(p) / "env" / "starcraft2").is_dir()
                               for p in (spec.submodule_search_locations or [])):
        problems.append("the installed `smac` is not oxwhirl's SMAC (the package index's "
                        "`smac` is SMAC3, an unrelated project): `pip uninstall smac` first")
    if importlib.util.find_spec("pysc2") is None:
        problems.append("the Python package `pysc2` is not installed")
    if not need_smac and importlib.util.find_spec("s2clientprotocol") is None:
        problems.append("the Python package `s2clientprotocol` is not installed")
    root = sc2_path()
    if not root.is_dir():
        problems.append(f"StarCraft II is not installed at {root} (set SC2PATH to its folder)")
    elif map_name is not None:
        path = root / "Maps" / "SMAC_Maps" / f"{map_name}.SC2Map"
        if not path.is_file():
            problems.append(f"the map {path} is missing")
    return problems


def install_help(problems: list[str], what: str, alma_maps: bool = False) -> str:
    """The error text for a missing StarCraft setup: what is missing and how to install it."""
    lines = [f"{what} needs StarCraft II and oxwhirl's SMAC, which are not available here:"]
    lines += [f"  - {p}" for p in problems]
    lines += [
        "To install them:",
        '  1. pip install -e ".[smac]"   (from the alma-jax checkout), or',
        '     pip install "smac @ git+https://github.com/oxwhirl/smac.git"',
        "     Never `pip install smac`: the package index's `smac` is SMAC3, an unrelated "
        "hyperparameter-optimisation library.",
        "  2. StarCraft II for Linux 4.6.2.69232 (the version of SMAC's and ALMA's results): "
        "SC2.4.6.2.69232.zip from https://github.com/Blizzard/s2client-proto#downloads, "
        "unzipped (password: iagreetotheeula) to ~/StarCraftII, or set SC2PATH to its folder.",
        "  3. The SMAC maps: SMAC_Maps.zip from https://github.com/oxwhirl/smac/releases, "
        "unzipped into $SC2PATH/Maps/ (giving $SC2PATH/Maps/SMAC_Maps/<map>.SC2Map).",
    ]
    if alma_maps:
        lines.append(
            f"  4. ALMA's custom map {ALMA_MAP}.SC2Map (in the maps folder of ALMA's repository, "
            "https://github.com/shariqiqbal2810/ALMA), copied INTO $SC2PATH/Maps/SMAC_Maps/ "
            "(not Maps/, where ALMA's own install script puts it).")
    return "\n".join(lines)


def make_smac_env(map_name: str = "5m_vs_6m", scheme: str = "entity", *, n_workers: int = 1,
                  timeout: float = 120.0, reset_timeout: float = 600.0,
                  on_error: str = "restart", timeout_as_episode_limit: bool = False,
                  env_class: str = DEFAULT_SMAC_CLASS, describe: str = "worker",
                  **smac_kwargs: Any):
    """A `BridgeEnv` over SMAC maps (e.g. 5m_vs_6m, MMM2, 2s3z, 3s5z_vs_3s6z).

    `smac_kwargs` go to StarCraft2Env (e.g. `difficulty`; a `seed` there replaces the game
    seed otherwise derived from each env's first reset key). `env_class` swaps in
    another SMAC-API class ("module:Class" or "file.py:Class"); the install check only
    applies to the default. `on_error='restart'` turns a failing env into an `env_error`
    episode end (spec B.7) instead of stopping the run.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"smac scheme must be one of {SCHEMES}, got {scheme!r}")
    if env_class == DEFAULT_SMAC_CLASS:
        problems = smac_install_problems(map_name)
        if problems:
            raise MissingDependencyError(install_help(problems, f"env=smac (map {map_name})"))
    from envs_jax.bridge.callback import BridgeEnv

    kwargs = {"env_class": env_class, "scheme": scheme,
              "env_kwargs": {"map_name": map_name, **smac_kwargs},
              "timeout_as_episode_limit": bool(timeout_as_episode_limit),
              "seed_from_key": "seed" not in smac_kwargs}
    return BridgeEnv("envs_jax.bridge.smac:smac_host", kwargs, n_workers=n_workers,
                     timeout=timeout, reset_timeout=reset_timeout, on_error=on_error,
                     describe=describe, label=f"smac-{map_name}-{scheme}")


SC2MULTIARMY_TARGET = "envs_jax.bridge.host_sc2multiarmy:HostSC2MultiArmy"


def stored_heuristic(n_agents: int):
    """The allocation policy of an env that writes its own heuristic allocation into the
    agent rows of entity2task_mask (sc2multiarmy with heuristic_alloc=True, spec A.13):
    `fn(obs) -> [NA, NT]` reads it back (JAX arrays; no JAX import needed here)."""

    def heuristic_allocation(obs):
        return ~obs.entity2task_mask[..., :n_agents, :]

    return heuristic_allocation


def make_sc2multiarmy_env(scenario: str = "6-8sz_maxsize4_maxarmies3_symmetric", *,
                          backend: str = "pysc2", n_workers: int = 1, timeout: float = 120.0,
                          reset_timeout: float = 600.0, on_error: str = "restart",
                          **options: Any):
    """ALMA's multi-army StarCraft setting (spec part A) as a `BridgeEnv`.

    The env (`host_sc2multiarmy.HostSC2MultiArmy`; options: its keyword arguments, e.g.
    `team_sizes`, `episode_limit`, `heuristic_alloc`, `heuristic_style`,
    `faithful_task_reward`, `backend_kwargs`) runs in worker processes over a game backend:
    `backend='pysc2'` (default) is StarCraft II through pysc2 and needs the game, pysc2 and
    ALMA's map (a clear `MissingDependencyError` otherwise); another backend
    ("module:Class" or "file.py:Class" with the `Backend` protocol, e.g. the test suite's
    simulator) skips that check. With `heuristic_alloc=True` the env computes the A.13
    heuristic and the returned env offers it to `allocation='heuristic'`.
    """
    if scenario not in SC2MULTIARMY_SIZES:
        raise ValueError(f"unknown sc2multiarmy scenario {scenario!r}; allowed: "
                         f"{sorted(SC2MULTIARMY_SIZES)}")
    from envs_jax.bridge.host_sc2multiarmy import BACKEND_ALIASES, HostSC2MultiArmy

    allowed = set(inspect.signature(HostSC2MultiArmy).parameters) - {"scenario", "backend"}
    bad = sorted(set(options) - allowed)
    if bad:
        every = allowed | {"scenario", "backend", "n_workers", "timeout", "reset_timeout",
                           "on_error"}
        raise ValueError(f"unknown sc2multiarmy option(s) {bad}; allowed: {sorted(every)}")
    if not isinstance(backend, str):
        raise ValueError(f"sc2multiarmy backend must be 'pysc2' or 'module:Class' / "
                         f"'file.py:Class', got {backend!r}")
    target = BACKEND_ALIASES.get(backend, backend)
    if target == BACKEND_ALIASES["pysc2"]:
        problems = smac_install_problems(ALMA_MAP, need_smac=False)
        if problems:
            raise MissingDependencyError(
                install_help(problems, f"env=sc2multiarmy (scenario {scenario}); it requires "
                             "the ALMA StarCraft maps and", alma_maps=True))
    # a bad backend or backend option fails here, not in the workers (pysc2 itself is
    # imported only when the backend is built)
    backend_cls = load_target(target)
    try:
        inspect.signature(backend_cls).bind(**dict(options.get("backend_kwargs") or {}))
    except TypeError as err:
        raise ValueError(f"sc2multiarmy backend_kwargs do not fit {target}: {err}") from None
    from envs_jax.bridge.callback import BridgeEnv

    kwargs = {"env_class": SC2MULTIARMY_TARGET, "scenario": scenario, "backend": backend,
              **options}
    env = BridgeEnv("envs_jax.bridge.host:entity_host", kwargs, n_workers=n_workers,
                    timeout=timeout, reset_timeout=reset_timeout, on_error=on_error,
                    describe="parent", label=f"sc2multiarmy-{scenario}")
    if options.get("heuristic_alloc"):
        # the trainer looks for it here for allocation='heuristic'
        env.heuristic_allocation = stored_heuristic(env.n_agents)
    return env


__all__ = [
    "DEFAULT_SMAC_CLASS",
    "SC2MULTIARMY_SIZES",
    "EnvUnavailableError",
    "MissingDependencyError",
    "SmacEntityHost",
    "SmacFlatHost",
    "install_help",
    "make_sc2multiarmy_env",
    "make_smac_env",
    "sc2_path",
    "smac_host",
    "smac_install_problems",
    "smac_info_spec",
    "split_flat",
    "stored_heuristic",
]
