"""Evaluate a trained run: `python -m alma_jax.evaluate out_dir=<run dir> [key=value ...]`.

Loads `<out_dir>/config.json` and the learner part of `<out_dir>/checkpoint`, runs greedy test
episodes (epsilon 0, not stored; spec 4.6) for every seed of the run, prints the metrics as
JSON, and writes a GIF of a few greedy episodes of the run's first seed.

keys:
  out_dir       the run directory or a parameters export *.npz (required)
  high_from     another run directory or export: evaluate out_dir's low level under ITS
                learned allocator (ALMA's zero-shot experiment, paper Fig. 6b)
  high          heuristic | random: evaluate out_dir's low level under the env's heuristic
                or uniformly random allocation instead of its own
  prop_eps      with a learned allocator: probability of acting on its first sampled proposal
                instead of the critic's best (default 0; 1 = the proposal network alone, a
                diagnostic of what the critic's choice adds)
  keep_open     with a learned allocator, a diagnostic: true keeps each agent on its previous
                subtask while that subtask is open, so the allocator only places agents that
                have none (default false, ALMA's policy)
  out           also write the printed JSON to this file
  episodes      test episodes per seed (default: the run's test_episodes; rounded up to a
                multiple of num_envs)
  gif           GIF path (default <out_dir>/eval.gif, beside an export <name>.gif;
                gif=none skips it)
  gif_episodes  episodes in the GIF (default 2)
  seed          key of the test episodes (default 0)
  cell          pixels per map cell in the GIF (default 24)
  fps           GIF frames per second (default 4)
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

from alma_jax import transfer
from alma_jax.config import ConfigError
from alma_jax.rollout import is_decision_row
from alma_jax.trainer import TrainFns, make_train

DEFAULTS: dict[str, Any] = {
    "out_dir": None, "episodes": None, "gif": None, "gif_episodes": 2, "seed": 0, "cell": 24,
    "fps": 4.0, "high_from": None, "high": None, "out": None, "prop_eps": 0.0,
    "keep_open": False,
}
HIGH_CHOICES = {"heuristic": "heuristic", "random": "random_alloc"}  # high= -> its alg


def parse_args(argv: list[str]) -> dict[str, Any]:
    """`key=value` arguments -> options (ConfigError on unknown keys or bad values)."""
    opts = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"bad argument {a!r}; use key=value with key one of {list(DEFAULTS)}")
        opts[key] = value
    if opts["out_dir"] is None:
        raise ConfigError("out_dir=<run dir> is required")
    if opts["high"] is not None and opts["high"] not in HIGH_CHOICES:
        raise ConfigError(f"high={opts['high']!r} is not allowed; choose one of "
                          f"{list(HIGH_CHOICES)} (or high_from=<run dir> for a learned one)")
    if opts["high"] is not None and opts["high_from"] is not None:
        raise ConfigError("give high=... or high_from=..., not both")
    for key, typ in (("episodes", int), ("gif_episodes", int), ("seed", int), ("cell", int),
                     ("fps", float), ("prop_eps", float)):
        if opts[key] is not None:
            try:
                opts[key] = typ(opts[key])
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {opts[key]!r}") from None
    if isinstance(opts["keep_open"], str):
        if opts["keep_open"].lower() not in ("true", "false"):
            raise ConfigError(f"keep_open must be true or false, got {opts['keep_open']!r}")
        opts["keep_open"] = opts["keep_open"].lower() == "true"
    return opts


def play_episodes(fns: TrainFns, cfg, policy: Any, key: jax.Array, n_episodes: int,
                  eps: float = 0.0) -> list[dict[str, Any]]:
    """Host loop over ONE environment recording every state (for rendering).

    Returns one dict per episode: `states` (T+1 env states, numpy leaves), `allocations`
    ([NA, NT] per state, None for flat methods), `actions` (per state, None for the last),
    `rewards` (reward of the step into each state, None for the first), `return`.
    Decision rows follow the rollout: the first row, every `action_length` rows, and the row
    after a subtask finished (spec 3.7).
    """
    env = fns.env
    reset, step = jax.jit(env.reset), jax.jit(env.step_env)
    act_one = jax.jit(fns.act_one)
    allocates = cfg.allocation is not None
    episodes = []
    for _ in range(n_episodes):
        key, k_reset = jax.random.split(key)
        obs, state = reset(k_reset)
        held = jnp.zeros((env.n_agents, env.n_tasks), bool)
        last_action = jnp.full((env.n_agents,), -1, jnp.int32)
        timer, changed = 0, False
        carry = fns.init_carry_one()
        rec: dict[str, list] = {"states": [], "allocations": [], "actions": [], "rewards": [None]}
        for t in range(env.episode_limit):
            key, k_act, k_env = jax.random.split(key, 3)
            decide = bool(is_decision_row(t, timer, changed, cfg.action_length))
            held, actions, carry = act_one(policy, k_act, obs, held, decide, last_action, eps,
                                           carry)
            rec["states"].append(jax.device_get(state))
            rec["allocations"].append(np.asarray(held) if allocates else None)
            rec["actions"].append(np.asarray(actions))
            obs, state, reward, done, info = step(k_env, state, actions)
            rec["rewards"].append(float(reward))
            timer = 1 if decide else timer + 1
            changed = bool(info["tasks_changed"])
            last_action = actions
            if bool(done):
                break
        rec["states"].append(jax.device_get(state))
        rec["allocations"].append(np.asarray(held) if allocates else None)
        rec["actions"].append(None)
        rec["return"] = float(np.sum(rec["rewards"][1:]))
        episodes.append(rec)
    return episodes


RENDERED_ENVS = ("savethecity", "starcraft_jax", "multiarmy_jax")


def _renderer(env_name: str, env):
    """The env's frame renderer `(state, allocation, actions, reward, title, cell) -> RGB`."""
    if env_name == "savethecity":
        from envs_jax.savethecity.render import render_state

        return lambda st, cell, **kw: render_state(st, cell=cell, **kw)
    if env_name in ("starcraft_jax", "multiarmy_jax"):
        from envs_jax.starcraft.render import render_state

        return lambda st, cell, allocation=None, **kw: render_state(st, env, scale=cell * 3 // 4,
                                                                    **kw)
    return None


def save_episodes_gif(episodes: list[dict[str, Any]], path: Path, title: str, cell: int = 24,
                      fps: float = 4.0, env_name: str = "savethecity", env=None) -> int:
    """Render the episodes one after the other into one GIF; returns the number of frames."""
    from envs_jax.savethecity.render import save_gif

    render = _renderer(env_name, env)
    if render is None:
        raise ConfigError(f"no episode renderer for env={env_name!r} (renderers: "
                          f"{list(RENDERED_ENVS)}); pass gif=none")
    frames = []
    for e, ep in enumerate(episodes):
        ret = np.cumsum([0.0] + ep["rewards"][1:])
        for k, st in enumerate(ep["states"]):
            frames.append(render(
                st, cell, allocation=ep["allocations"][k], actions=ep["actions"][k],
                reward=ep["rewards"][k], title=f"{title} | episode {e} | return {ret[k]:+.2f}"))
    save_gif(frames, path, fps=fps)
    return len(frames)


def _pair_rows(n_low: int, n_high: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seed i with seed i, or one side's single seed with every seed of the other."""
    if n_low == n_high:
        return np.arange(n_low), np.arange(n_high)
    if n_high == 1:
        return np.arange(n_low), np.zeros(n_low, int)
    if n_low == 1:
        return np.zeros(n_high, int), np.arange(n_high)
    raise ConfigError(f"{what}: {n_low} low-level seeds and {n_high} allocator seeds cannot "
                      "be paired (equal counts, or one side with a single seed)")


def load_run(out_dir: str | Path, episodes: int | None = None, high_from: str | None = None,
             high: str | None = None):
    """(config, TrainFns, saved {low, high, t_env}, seed-batched greedy policy) of a run
    directory's checkpoint or a parameters export (the replay buffer is not read).

    `episodes` overrides `test_episodes`. `high_from` (a run dir or export with a learned
    allocator) replaces the allocation policy by that source's, `high` by the env's heuristic
    or random allocation; the low level is always `out_dir`'s."""
    src = transfer.load_source(out_dir)
    cfg, low, high_state = src.cfg, src.low, src.high
    if high_from is not None or high is not None:
        if cfg.subtask_cond is None:
            raise ConfigError(f"{out_dir}: alg={cfg.alg} is a flat method (no subtask "
                              "allocation), so it cannot run under another allocator")
    if high is not None:
        cfg = dataclasses.replace(cfg, alg=HIGH_CHOICES[high], allocation=high)
        high_state = None
    elif high_from is not None:
        hsrc = transfer.load_source(high_from)
        if hsrc.cfg.allocation != "aql":
            raise ConfigError(f"high_from={high_from}: alg={hsrc.cfg.alg} has no learned "
                              "allocator (use a run of alma, alma_nomask or alma_lica)")
        for key in ("env", "env_args"):
            if getattr(hsrc.cfg, key) != getattr(cfg, key):
                raise ConfigError(f"high_from={high_from}: {key} differs ("
                                  f"{getattr(hsrc.cfg, key)!r} vs {getattr(cfg, key)!r})")
        rows_low, rows_high = _pair_rows(cfg.num_seeds, hsrc.cfg.num_seeds,
                                         f"high_from={high_from}")
        low = jax.tree.map(lambda x: np.asarray(x)[rows_low], low)
        high_state = jax.tree.map(lambda x: np.asarray(x)[rows_high], hsrc.high)
        cfg = dataclasses.replace(
            cfg, alg=hsrc.cfg.alg, allocation="aql", alloc=hsrc.cfg.alloc, aql=hsrc.cfg.aql,
            action_length=hsrc.cfg.action_length, num_seeds=len(rows_low),
            seed=hsrc.cfg.seed if cfg.num_seeds == 1 else cfg.seed)
    if episodes is not None:
        cfg = dataclasses.replace(cfg, test_episodes=episodes)
    fns = make_train(cfg)
    if fns.high_learner is None:
        high_state = None
    saved = {"low": low, "high": high_state, "t_env": src.t_env}
    return cfg, fns, saved, jax.vmap(fns.eval_policy)(low, high_state)


def wilson_ci(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (well-behaved at 0 and 1 successes)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def evaluate(out_dir: str | Path, episodes: int | None = None, gif: str | None = None,
             gif_episodes: int = 2, seed: int = 0, cell: int = 24, fps: float = 4.0,
             high_from: str | None = None, high: str | None = None, out: str | None = None,
             prop_eps: float = 0.0, keep_open: bool = False) -> dict[str, Any]:
    """Evaluate the learners of a run directory or export; returns the printed summary."""
    out_dir = Path(out_dir)
    cfg, fns, saved, policy = load_run(out_dir, episodes, high_from, high)
    if prop_eps:
        if fns.high_learner is None:
            raise ConfigError(f"prop_eps={prop_eps} needs a learned allocator (alg={cfg.alg})")
        low_params, a = policy
        policy = (low_params, a.replace(eps_prop=jnp.full_like(a.eps_prop, prop_eps)))
    if keep_open:
        if fns.high_learner is None:
            raise ConfigError(f"keep_open=true needs a learned allocator (alg={cfg.alg})")
        low_params, a = policy
        policy = (low_params, a.replace(keep_open=jnp.ones_like(a.keep_open)))
    keys = jax.random.split(jax.random.PRNGKey(seed), cfg.num_seeds)
    metrics = jax.device_get(jax.jit(jax.vmap(fns.evaluate_policy))(policy, keys))
    per_seed = {k: np.atleast_1d(v).astype(float).tolist() for k, v in sorted(metrics.items())}
    n_per_seed = -(-cfg.test_episodes // cfg.num_envs) * cfg.num_envs
    summary: dict[str, Any] = {
        "out_dir": str(out_dir), "alg": cfg.alg, "t_env": np.asarray(saved["t_env"]).tolist(),
        "allocation": (f"learned, from {high_from}" if high_from is not None else
                       high if high is not None else str(cfg.allocation))
        + (f" (first proposal with probability {prop_eps})" if prop_eps else "")
        + (" (agents kept on their open subtasks)" if keep_open else ""),
        "episodes_per_seed": n_per_seed,
        "mean": {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                 for k, v in per_seed.items()},
        "per_seed": per_seed,
    }
    if "eval/solved_mean" in per_seed:  # binary per episode: a binomial interval over all
        solved = per_seed["eval/solved_mean"]
        k, n = round(sum(solved) * n_per_seed), n_per_seed * len(solved)
        summary["solved"] = {"episodes": n, "solved_episodes": k, "rate": k / n,
                             "ci95": list(wilson_ci(k, n)),
                             "ci95_per_seed": [list(wilson_ci(round(s * n_per_seed),
                                                              n_per_seed)) for s in solved]}
    gif_path = (out_dir.with_suffix(".gif") if transfer.is_export(out_dir) else
                out_dir / "eval.gif") if gif is None else Path(gif)
    if gif is None and cfg.env not in RENDERED_ENVS:
        gif = "none"  # nothing to draw this env with; asking for a gif explicitly is an error
    if gif is None or gif.lower() != "none":
        first = jax.tree.map(lambda x: x[0], policy)
        played = play_episodes(fns, cfg, first, jax.random.PRNGKey(seed), gif_episodes)
        title = f"{cfg.alg} | seed {cfg.seed} | t_env {int(summary['t_env'][0])}"
        summary["gif"] = str(gif_path)
        summary["gif_frames"] = save_episodes_gif(played, gif_path, title, cell=cell, fps=fps,
                                                  env_name=cfg.env, env=fns.env)
        summary["gif_returns"] = [ep["return"] for ep in played]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return {}
    try:
        opts = parse_args(argv)
        summary = evaluate(**opts)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"config error: {e}") from None
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
