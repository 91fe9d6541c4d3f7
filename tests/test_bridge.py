"""The host-callback bridge: contract, jit/scan/vmap, robustness, host SaveTheCity, flat scheme."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from alma_jax.allocation import env_heuristic_allocation
from alma_jax.rollout import make_rollout
from envs_jax.bridge import (
    BridgeEnv,
    EnvUnavailableError,
    MissingDependencyError,
    WorkerCrashed,
    WorkerError,
    WorkerTimeout,
    split_flat,
)
from envs_jax.bridge.callback import _seeds
from envs_jax.bridge.host_savethecity import HostSaveTheCity
from envs_jax.bridge.host_traffic_junction import HostTrafficJunction
from envs_jax.bridge.smac import smac_install_problems
from envs_jax.savethecity import heuristic_allocation
from envs_jax.savethecity.evaluation import compare, format_failures
from envs_jax.savethecity.policies import uniform_valid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPTED = f"{HERE / 'bridge_envs.py'}:ScriptedEnv"


def scripted(n_workers: int = 2, **kw) -> BridgeEnv:
    opts = {k: kw.pop(k) for k in ("timeout", "reset_timeout", "on_error") if k in kw}
    return BridgeEnv(SCRIPTED, kw, n_workers=n_workers, label="scripted", **opts)


def host_seeds(keys: jax.Array) -> list[int]:
    """The seeds the bridge hands to the host envs for these keys (Python ints)."""
    return _seeds(np.asarray(jax.random.key_data(keys)))


def episode_lengths(keys: jax.Array) -> np.ndarray:
    """ScriptedEnv's episode length for each key."""
    return np.array([1 + s % 5 for s in host_seeds(keys)])


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(gone(p) for p in pids)


# ----------------------------------------------------------------- scripted host env
def test_slots_seeds_and_idle_steps():
    keys = jax.random.split(jax.random.key(1), 5)
    seeds = np.array([s % 65536 for s in host_seeds(keys)])
    lengths = episode_lengths(keys)
    with scripted() as env:
        obs, state = env.reset_batch(keys)
        pids = env.pids
        assert len(pids) == 2 and obs.entities.shape == (5, 3, 4)
        np.testing.assert_array_equal(obs.entities[:, 0, 0], seeds.astype(np.float32))
        # env slot i lives in worker i % 2
        np.testing.assert_array_equal(obs.entities[:, 0, 3],
                                      [pids[i % 2] % 65536 for i in range(5)])
        np.testing.assert_array_equal(state.t, 0)
        prev = obs
        for t in range(1, 8):
            actions = jnp.full((5, 2), 1, jnp.int32)
            obs, state, reward, done, info = env.step_batch(keys, state, actions)
            for i in range(5):
                if t <= lengths[i]:
                    assert reward[i] == 1.0 and done[i] == (t == lengths[i])
                    assert state.t[i] == t and obs.entities[i, 0, 2] == 2 * t
                else:  # finished envs idle: last obs, reward 0, done, no new task reward
                    assert reward[i] == 0.0 and done[i] and state.t[i] == lengths[i]
                    np.testing.assert_array_equal(obs.entities[i], prev.entities[i])
                    assert info["task_rewards"][i, 0] == 0.0 and not info["tasks_changed"][i]
            prev = obs
        assert obs.avail_actions.dtype == jnp.int32 and obs.obs_mask.dtype == jnp.bool_
        assert info["episode_length"].dtype == jnp.int32 and info["env_error"].dtype == bool
    assert wait_gone(pids)


def test_jit_scan_vmap_and_no_jax_in_workers():
    with scripted() as env:

        def episode(key):
            obs, state = env.reset_batch(jax.random.split(key, 3))

            def body(carry, _):
                obs, state = carry
                obs, state, reward, done, _ = env.step_batch(
                    jax.random.split(key, 3), state, jnp.ones((3, 2), jnp.int32))
                return (obs, state), (reward, done, obs.entities[:, 0, :3])

            _, rows = jax.lax.scan(body, (obs, state), None, length=6)
            return obs.entities[:, 0, 0], rows

        key = jax.random.key(3)
        seeds, (reward, done, ent) = jax.jit(episode)(key)
        lengths = episode_lengths(jax.random.split(key, 3))
        np.testing.assert_array_equal(np.asarray(reward).sum(0), lengths)
        np.testing.assert_array_equal(np.asarray(done).argmax(0) + 1, lengths)
        eager_seeds, _ = episode(key)
        np.testing.assert_array_equal(seeds, eager_seeds)

        # vmap over 2 "seeds" folds into one callback over 2*3 host envs
        keys = jax.random.split(jax.random.key(4), 2)
        vseeds, (vreward, vdone, _) = jax.jit(jax.vmap(episode))(keys)
        assert vseeds.shape == (2, 3) and vreward.shape == (2, 6, 3)
        for s in range(2):
            one_seeds, (one_reward, _, _) = episode(keys[s])
            np.testing.assert_array_equal(vseeds[s], one_seeds)
            np.testing.assert_array_equal(vreward[s], one_reward)
        stats = env.stats()
        assert len(stats) == 2 and all(not st["jax_imported"] for w in stats
                                       for st in w["env_stats"])
        assert sum(len(w["env_stats"]) for w in stats) == 6  # the pool grew to 6 slots


def test_single_env_reset_under_vmap():
    with scripted(n_workers=1) as env:
        obs, state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 2))
        assert obs.entities.shape == (2, 3, 4) and state.t.shape == (2,)
        obs, state = env.reset(jax.random.key(2))
        assert obs.entities.shape == (3, 4) and state.t.shape == ()
        obs, state, reward, done, info = env.step_env(jax.random.key(1), state,
                                                      jnp.zeros(2, jnp.int32))
        assert reward.shape == () and info["task_rewards"].shape == (1,) and state.t == 1


# ---------------------------------------------------------------------- robustness
def test_worker_exception_stops_run_with_traceback():
    env = scripted(fail_at=2)
    keys = jax.random.split(jax.random.key(0), 4)
    obs, state = env.reset_batch(keys)
    pids = env.pids
    obs, state, *_ = env.step_batch(keys, state, jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(Exception) as exc:
        jax.jit(env.step_batch)(keys, state, jnp.zeros((4, 2), jnp.int32))
    text = str(exc.value)
    assert "scripted failure at step 2" in text and "Traceback" in text
    assert "bridge_envs.py" in text and "in step" in text
    assert isinstance(env.last_error, WorkerError)
    assert wait_gone(pids)
    with pytest.raises(Exception, match="stopped after an earlier error"):
        env.reset_batch(keys)
    env.close()


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_worker_crash_is_reported(how):
    env = scripted(**{"exit_at" if how == "exit" else "segv_at": 1})
    keys = jax.random.split(jax.random.key(0), 2)
    obs, state = env.reset_batch(keys)
    pids = env.pids
    with pytest.raises(Exception, match=r"died during 'step'") as exc:
        env.step_batch(keys, state, jnp.zeros((2, 2), jnp.int32))
    text = str(exc.value)
    if how == "exit":
        assert "(exit code 7)" in text
    else:  # faulthandler's dump names the signal and where it struck
        assert "killed by SIGSEGV" in text and "Segmentation fault" in text
        assert "bridge_envs.py" in text and "in step" in text
    assert isinstance(env.last_error, WorkerCrashed)
    assert wait_gone(pids)


def test_worker_hang_times_out_with_its_stack():
    env = scripted(hang_at=1, timeout=1.0)
    keys = jax.random.split(jax.random.key(0), 2)
    obs, state = env.reset_batch(keys)
    pids = env.pids
    start = time.monotonic()
    with pytest.raises(Exception, match=r"did not answer 'step' within 1 s") as exc:
        env.step_batch(keys, state, jnp.zeros((2, 2), jnp.int32))
    assert time.monotonic() - start < 10.0
    text = str(exc.value)
    assert "bridge_envs.py" in text and "in step" in text  # where the worker was stuck
    assert isinstance(env.last_error, WorkerTimeout)
    assert wait_gone(pids)


def test_on_error_restart_flags_env_error():
    with scripted(fail_at=2, on_error="restart") as env:
        keys = jax.random.split(jax.random.key(5), 6)
        lengths = episode_lengths(keys)
        obs, state = env.reset_batch(keys)
        a = jnp.zeros((6, 2), jnp.int32)
        _, state, _, done1, info1 = env.step_batch(keys, state, a)
        _, state, reward, done2, info2 = env.step_batch(keys, state, a)
        failed = lengths >= 2
        np.testing.assert_array_equal(info2["env_error"], failed)
        assert np.all(np.asarray(done2)) and np.all(np.asarray(reward)[failed] == 0.0)
        assert not np.any(info1["env_error"])
        stats = env.stats()
        assert sum(w["env_errors"] for w in stats) == failed.sum()
        assert "scripted failure" in "".join(t for w in stats for t in w["error_log"])
        obs, state = env.reset_batch(keys)  # the replaced envs run the next episodes
        np.testing.assert_array_equal(state.t, 0)


def test_contract_violation_is_clear():
    env = scripted(bad_shape=True)
    with pytest.raises(Exception, match=r"'entities' with shape \(3, 5\).*declared \(3, 4\)"):
        env.reset_batch(jax.random.split(jax.random.key(0), 2))
    env.close()


CLEANUP_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from envs_jax.bridge import BridgeEnv
    env = BridgeEnv(sys.argv[1], n_workers=2)
    keys = jax.random.split(jax.random.key(0), 4)
    obs, state = env.reset_batch(keys)
    print(" ".join(map(str, env.pids)), flush=True)
    if sys.argv[2] == "raise":
        raise RuntimeError("the training script failed")
    step = jax.jit(env.step_batch)
    while True:
        obs, state, *_ = step(keys, state, jnp.zeros((4, 2), jnp.int32))
        jax.block_until_ready(obs)
        time.sleep(0.01)
""")


# ctrl_c is `slow`: in one clean-clone CI run under load the interrupted parent did not exit
# within 30 s (not reproduced locally); kept out of CI until the cause is found.
@pytest.mark.parametrize("how", ["raise", pytest.param("ctrl_c", marks=pytest.mark.slow),
                                 "sigkill"])
def test_no_orphan_workers(how):
    proc = subprocess.Popen(
        [sys.executable, "-c", CLEANUP_SCRIPT, SCRIPTED, "raise" if how == "raise" else "loop"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, proc.stderr.read() if not line else line
        assert not any(gone(p) for p in pids)
        if how == "ctrl_c":
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C
        elif how == "sigkill":
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup at all: workers must notice
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    if how == "raise":
        assert "the training script failed" in err
    if how == "ctrl_c":
        assert "KeyboardInterrupt" in err
    assert wait_gone(pids, 15.0), f"orphan workers {pids}"


# ------------------------------------------------------------ host SaveTheCity
def test_host_savethecity_agrees_with_reference_oracle():
    sys.path.insert(0, str(HERE))
    import reference_savethecity as ref

    env = HostSaveTheCity()
    rng = np.random.default_rng(0)
    for ep in range(6):
        env.reset(seed=ep)
        done = False
        while not done:
            st = env.state_dict()
            avail = env.get_avail_actions()
            np.testing.assert_array_equal(avail, ref.ref_avail(st))
            expected = ref.ref_obs(st)
            np.testing.assert_allclose(env.get_entities(), expected["entities"], atol=1e-6)
            names = ("obs_mask", "entity_mask", "entity2task_mask", "task_mask")
            for got, name in zip(env.get_masks(), names):
                np.testing.assert_array_equal(got, expected[name])
            acts = np.array([rng.choice(np.flatnonzero(r >= 1)) if rng.random() < 0.9
                             else rng.integers(12) for r in avail])
            coins = rng.random(env.A * (env.A - 1) // 2) < 0.5
            new, reward, task_r, task_t, changed, done, info = ref.ref_step(st, acts, coins)
            reward2, done2, info2 = env.transition(acts, coins)
            got = env.state_dict()
            assert reward2 == pytest.approx(reward, abs=1e-12) and done2 == done
            np.testing.assert_allclose(info2["task_rewards"], task_r, atol=1e-12)
            np.testing.assert_array_equal(info2["tasks_terminated"], task_t)
            assert info2["tasks_changed"] == changed
            np.testing.assert_array_equal(got["agent_pos"], new["agent_pos"])
            real = new["bld_valid"]
            for k in ("health", "fire", "ttnf", "tslf"):
                np.testing.assert_allclose(got[k][real], new[k][real], err_msg=k)
            if done:
                for k in ("solved", "prop_buildings_completed", "buildings_burned",
                          "fires_extinguished", "episode_length", "n_agents"):
                    assert info2[k] == pytest.approx(info[k]), k


@pytest.fixture(scope="module")
def host_city():
    env = envs_jax.make("host_savethecity", n_workers=2)
    yield env
    env.close()


def test_host_savethecity_arrays_match_pure_jax(host_city):
    pure = envs_jax.make("savethecity")
    for name in ("n_agents", "n_entities", "n_tasks", "n_actions", "entity_dim",
                 "episode_limit"):
        assert getattr(host_city, name) == getattr(pure, name), name
    keys = jax.random.split(jax.random.key(0), 3)
    actions = jnp.zeros((3, pure.n_agents), jnp.int32)

    def shapes(env):
        obs, state = jax.eval_shape(env.reset_batch, keys)
        step = jax.eval_shape(env.step_batch, keys, state, actions)
        return obs, step

    (obs_b, step_b), (obs_j, step_j) = shapes(host_city), shapes(pure)
    same = lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype)  # noqa: E731
    assert jax.tree.all(jax.tree.map(same, obs_b, obs_j))
    for k in (0, 2, 3):  # obs, reward, done
        assert jax.tree.all(jax.tree.map(same, step_b[k], step_j[k]))
    info_b, info_j = step_b[4], step_j[4]
    assert set(info_b) == set(info_j) | {"env_error"}
    for k in info_j:
        assert same(info_b[k], info_j[k]), (k, info_b[k], info_j[k])
    # the arrays that really come back have the declared shapes and dtypes
    obs, state = host_city.reset_batch(keys)
    out = host_city.step_batch(keys, state, actions)
    assert jax.tree.all(jax.tree.map(same, obs, obs_j))
    assert jax.tree.all(jax.tree.map(same, out[4], dict(info_j, env_error=info_b["env_error"])))


END_KEYS = ("solved", "prop_buildings_completed", "buildings_completed", "buildings_burned",
            "fires_extinguished", "buildings_health_delta", "episode_limit")


def run_episodes(env, n_envs: int, key: jax.Array) -> dict[str, np.ndarray]:
    """One episode per env under policy U through reset_batch / step_batch only."""

    def run(key):
        k0, k1 = jax.random.split(key)
        obs, state = env.reset_batch(jax.random.split(k0, n_envs))
        zeros = jnp.zeros((n_envs,), jnp.float32)
        carry = (obs, state, jnp.zeros((n_envs,), bool), zeros, zeros, zeros,
                 {k: zeros for k in END_KEYS})

        def body(carry, k):
            obs, state, finished, length, ret, task_ret, end = carry
            ka, ks = jax.random.split(k)
            alive = ~finished
            actions = jnp.where(alive[:, None], uniform_valid(ka, obs), 0)
            obs2, state2, reward, done, info = env.step_batch(
                jax.random.split(ks, n_envs), state, actions)

            def keep(new, old):
                m = alive.reshape((-1,) + (1,) * (new.ndim - 1))
                return jnp.where(m, new, old)

            ending = alive & done
            end = {k: jnp.where(ending, info[k].astype(jnp.float32), end[k]) for k in end}
            return (jax.tree.map(keep, obs2, obs), jax.tree.map(keep, state2, state),
                    finished | done, length + alive, ret + jnp.where(alive, reward, 0.0),
                    task_ret + jnp.where(alive, info["task_rewards"].sum(-1), 0.0), end), None

        carry, _ = jax.lax.scan(body, carry, jax.random.split(k1, env.episode_limit))
        _, _, finished, length, ret, task_ret, end = carry
        return {"done": finished, "length": length, "return": ret, "task_return": task_ret,
                **end}

    out = jax.device_get(jax.jit(run)(key))
    out["timeout"] = out["episode_limit"]
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def two_sample_z(a: np.ndarray, b: np.ndarray) -> float:
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = a.mean() - b.mean()
    return 0.0 if se == 0 and diff == 0 else diff / se


def test_host_savethecity_statistics_match_pure_jax(host_city):
    n = 128
    bridge = run_episodes(host_city, n, jax.random.key(11))
    pure = run_episodes(envs_jax.make("savethecity"), n, jax.random.key(12))
    assert bridge["done"].all() and pure["done"].all()
    for name in ("return", "length", "task_return", "buildings_burned", "fires_extinguished",
                 "buildings_health_delta", "prop_buildings_completed"):
        z = two_sample_z(bridge[name], pure[name])
        assert abs(z) <= 4.0, f"{name}: bridge {bridge[name].mean():.4g} vs pure JAX " \
                              f"{pure[name].mean():.4g}, z={z:+.2f}"
    assert bridge["solved"].mean() == pure["solved"].mean() == 0.0  # policy U never solves
    # and the bridge's episodes agree with the original's numbers (spec section 12)
    # Rates of rare events (a timeout is ~1 in 3000 episodes) are not testable with 128.
    result = {k: r for k, r in compare(bridge, "uniform").items() if k not in ("timeout",)}
    assert all(r["ok"] for r in result.values()), format_failures(result)


def test_rollout_runs_unchanged_on_bridge_env(host_city):
    def act(params, key, obs, last_action, alloc, eps):
        return uniform_valid(key, obs)

    rollout = make_rollout(host_city, 3, act, env_heuristic_allocation(heuristic_allocation),
                           5)
    # as in the trainer: jit of a vmap over seeds (2 seeds x 3 envs = one batch of 6 host envs)
    keys = jax.random.split(jax.random.key(4), 2)
    eps, stats, steps = jax.jit(jax.vmap(rollout, in_axes=(None, None, 0, None)))(
        None, None, keys, 1.0)
    eps, stats, steps = jax.tree.map(np.asarray, (eps, stats, steps))
    assert eps.entities.shape[:2] == (2, 3) and steps.shape == (2,)
    for s in range(2):
        ep, st = jax.tree.map(lambda x, s=s: x[s], (eps, stats))
        assert int(steps[s]) == st.episode_length.sum()
        for e, n in enumerate(st.episode_length):
            np.testing.assert_array_equal(ep.filled[e], np.arange(ep.filled.shape[1]) <= n)
            assert ep.reset[e].sum() == 1 and ep.reset[e, n - 1]
            codes = np.take_along_axis(ep.avail_actions[e, :n], ep.actions[e, :n, :, None], -1)
            assert np.all(codes >= 1)
            assert ep.terminated[e, n - 1] == (not st.info["episode_limit"][e])
        np.testing.assert_allclose(ep.reward.sum(1), st.episode_return, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(eps.entities[0, :, 0], eps.entities[1, :, 0])  # own episodes


# ------------------------------------------------------------------- flat scheme
def test_traffic_junction_flat_scheme_matches_direct_env():
    env = envs_jax.make("host_traffic_junction", n_workers=2, episode_limit=12)
    direct = HostTrafficJunction(episode_limit=12)
    A, O, S = direct.n_agents, direct.get_obs_size(), direct.get_state_size()
    assert (env.n_agents, env.n_entities, env.n_tasks, env.n_actions, env.entity_dim) == \
        (A, A + 1, 1, 2, max(O, S))
    keys = jax.random.split(jax.random.key(7), 3)
    seeds = host_seeds(keys)
    actions = np.random.default_rng(0).integers(0, 2, (12, 3, A))
    try:
        obs, state = env.reset_batch(keys)
        rows = [(obs, None, None, None)]
        for t in range(12):
            obs, state, reward, done, info = env.step_batch(keys, state,
                                                            jnp.asarray(actions[t]))
            rows.append((obs, reward, done, info))
    finally:
        env.close()
    for i in range(3):
        direct.reset(seed=seeds[i])
        for t, (obs, reward, done, info) in enumerate(rows):
            if t > 0:
                r, d, direct_info = direct.step(actions[t - 1, i])
                assert reward[i] == pytest.approx(r, abs=1e-5) and done[i] == d
                assert info["task_rewards"][i, 0] == pytest.approx(r, abs=1e-5)
                won = bool(direct_info.get("battle_won", False))
                assert bool(info["battle_won"][i]) == won
            o, s = env.split_flat(obs.entities[i])
            np.testing.assert_array_equal(o, np.stack(direct.get_obs()))
            np.testing.assert_array_equal(s, direct.get_state())
            np.testing.assert_array_equal(obs.avail_actions[i], direct.get_avail_actions())
        assert done[i] and info["truncated"][i] and info["tasks_terminated"][i, 0]
        assert not info["episode_limit"][i]  # PyMARL's flag: SMAC sets it only when asked to
    mask = np.asarray(obs.obs_mask)
    assert not mask[:, np.arange(A), np.arange(A)].any()  # agents see their own row ...
    assert mask[:, 0, 1:].all() and not mask[:, A].any()  # ... only; the state row sees all


# --------------------------------------------------------------- StarCraft guards
@pytest.mark.skipif(not smac_install_problems("5m_vs_6m"), reason="StarCraft II is installed")
def test_smac_missing_is_a_clear_install_message():
    with pytest.raises(MissingDependencyError) as exc:
        envs_jax.make("smac", map_name="5m_vs_6m")
    text = str(exc.value)
    for needle in ("oxwhirl/smac", 'pip install -e ".[smac]"', "SMAC3", "SC2PATH",
                   "4.6.2.69232", "SMAC_Maps"):
        assert needle in text, needle
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, ValueError)
    with pytest.raises(MissingDependencyError, match="empty_passive") as exc:
        envs_jax.make("sc2multiarmy", scenario="6-8sz_maxsize4_maxarmies3_symmetric")
    assert "ALMA" in str(exc.value)
    with pytest.raises(ValueError, match="unknown sc2multiarmy scenario"):
        envs_jax.make("sc2multiarmy", scenario="nope")
    with pytest.raises(ValueError, match="scheme"):
        envs_jax.make("smac", map_name="5m_vs_6m", scheme="pixels")
    assert issubclass(MissingDependencyError, EnvUnavailableError)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="unknown host_savethecity option"):
        envs_jax.make("host_savethecity", scenarios="2-5a_2-5b")
    with pytest.raises(ValueError, match="unknown host_traffic_junction option"):
        envs_jax.make("host_traffic_junction", lanes=3)


# ------------------------------------------------- SMAC adapters on a SMAC look-alike
FAKE_SMAC = f"{HERE / 'fake_smac.py'}:FakeStarCraft2Env"


def smac_replicas(scheme: str, seeds: list[int], **env_kwargs):
    """In-process adapters over the SMAC look-alike, reset like the bridge's env slots."""
    from envs_jax.bridge.smac import smac_host

    hosts = [smac_host(FAKE_SMAC, scheme, {"map_name": "5m_vs_6m", **env_kwargs})
             for _ in seeds]
    return hosts, [h.reset(s) for h, s in zip(hosts, seeds)]


def check_entity_scheme(host, obs: dict) -> None:
    """The entity adapter's arrays against the look-alike's ground truth."""
    env = host.env
    A, E = env.n_agents, env.n_enemies
    alive = env.health > 0
    np.testing.assert_array_equal(obs["entity_mask"], ~alive)
    np.testing.assert_allclose(obs["entities"][:, 2], env.health / 45.0, atol=1e-6)
    np.testing.assert_array_equal(obs["entities"][:A, 0], 1.0)
    np.testing.assert_array_equal(obs["entities"][A:, 1], 1.0)
    np.testing.assert_array_equal(obs["entities"][:A, 7:], env.get_avail_actions())
    dist = np.hypot(*(env.pos[:, None] - env.pos[None]).transpose(2, 0, 1))
    sees = (dist < 9.0) & alive[:, None] & alive[None, :]
    np.testing.assert_array_equal(~obs["obs_mask"][:A], sees[:A])  # SMAC's sight range 9
    np.testing.assert_array_equal(obs["obs_mask"][A:], ~(alive[A:, None] & alive[None, :]))
    np.testing.assert_array_equal(obs["entity2task_mask"][:, 0], np.arange(A + E) < A)


@pytest.mark.parametrize("scheme", ["entity", "flat"])
def test_smac_adapters_through_bridge(scheme):
    env = envs_jax.make("smac", map_name="5m_vs_6m", scheme=scheme, env_class=FAKE_SMAC,
                        n_workers=2)
    sizes = (env.n_agents, env.n_entities, env.n_tasks, env.n_actions, env.episode_limit)
    assert sizes == ((5, 11, 1, 12, 70) if scheme == "entity" else (5, 6, 1, 12, 70))
    assert env.entity_dim == (19 if scheme == "entity" else 98)  # flat: max(obs 55, state 98)
    keys = jax.random.split(jax.random.key(9), 3)
    hosts, expected = smac_replicas(scheme, host_seeds(keys))
    rng = np.random.default_rng(0)
    try:
        obs, state = env.reset_batch(keys)
        first = np.asarray(obs.entities)
        finished = np.zeros(3, bool)
        for _ in range(70):
            for i in range(3):
                for name in ("entities", "avail_actions", "obs_mask", "entity_mask"):
                    np.testing.assert_array_equal(getattr(obs, name)[i], expected[i][name])
                if scheme == "entity" and not finished[i]:
                    check_entity_scheme(hosts[i], expected[i])
            if finished.all():
                break
            avail = np.asarray(obs.avail_actions)
            actions = np.array([[rng.choice(np.flatnonzero(r)) for r in a] for a in avail])
            obs, state, reward, done, info = env.step_batch(keys, state, jnp.asarray(actions))
            for i in np.flatnonzero(~finished):
                expected[i], r, d, host_info = hosts[i].step(actions[i])
                assert reward[i] == pytest.approx(r, abs=1e-5) and bool(done[i]) == d
                for k in ("battle_won", "truncated", "dead_allies", "dead_enemies",
                          "env_error"):
                    assert info[k][i] == host_info[k], k
                if scheme == "flat":
                    o, s = split_flat(obs.entities[i], 5, 55, 98)
                    np.testing.assert_array_equal(o, np.stack(hosts[i].env.get_obs()))
                    np.testing.assert_array_equal(s, hosts[i].env.get_state())
            finished |= np.asarray(done)
        assert finished.all()
        # each game is seeded from its env's key: the start positions differ
        assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    finally:
        env.close()


def test_smac_crash_restart_is_an_env_error_episode_end():
    env = envs_jax.make("smac", map_name="5m_vs_6m", scheme="flat", env_class=FAKE_SMAC,
                        crash_at=3)
    keys = jax.random.split(jax.random.key(1), 2)
    with env:
        obs, state = env.reset_batch(keys)
        for _ in range(3):  # the look-alike crashes on step 3
            obs, state, reward, done, info = env.step_batch(
                keys, state, jnp.ones((2, 5), jnp.int32))  # "stop" is always available
        assert np.all(np.asarray(done)) and np.all(np.asarray(info["env_error"]))
        assert not np.any(info["truncated"]) and not np.any(info["battle_won"])
        assert np.all(np.asarray(reward) == 0.0)
        stats = env.stats()
        assert [s["restarts"] for w in stats for s in w["env_stats"]] == [1, 1]


@pytest.mark.slow
def test_trainer_runs_on_bridge_env(tmp_path):
    """The whole trainer, seed-vmapped over 2 seeds, on the host SaveTheCity (about 1 min)."""
    import dataclasses

    from test_trainer import tiny_config

    import alma_jax.train as train_mod

    cfg = tiny_config(tmp_path / "run", alg="heuristic", num_seeds=2)
    cfg = dataclasses.replace(cfg, env="host_savethecity", total_env_steps=600,
                              env_args={**cfg.env_args, "n_workers": 2})
    res = train_mod.run(cfg)
    assert np.all(np.asarray(res["t_env"]) >= 600)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines and all(len(v) == 2 for v in json.loads(lines[-1])["per_seed"].values())


def test_training_stops_cleanly_with_last_checkpoint_intact(tmp_path, monkeypatch):
    """A worker failing mid-training stops the run with its error and where the intact
    checkpoint is; the checkpoint loads; no worker survives."""
    import dataclasses

    from test_trainer import tiny_config

    import alma_jax.train as train_mod
    from alma_jax.checkpoint import load_checkpoint
    from alma_jax.trainer import make_train

    cfg = tiny_config(tmp_path / "run", alg="heuristic")
    cfg = dataclasses.replace(cfg, env="host_savethecity", total_env_steps=2000,
                              checkpoint_interval=150)
    pids, real_make = [], envs_jax.make

    def make(name, **kw):
        if name != "host_savethecity":
            return real_make(name, **kw)
        env = BridgeEnv("envs_jax.bridge.host:entity_host",
                        {"env_class": f"{HERE / 'bridge_envs.py'}:crashing_city",
                         "crash_after": 250, **kw}, n_workers=2, label="crashing")
        env.heuristic_allocation = heuristic_allocation
        start = env.pool.start

        def start_and_record():
            out = start()
            pids.extend(env.pool.pids)
            return out

        env.pool.start = start_and_record
        return env

    monkeypatch.setattr(envs_jax, "make", make)
    with pytest.raises(train_mod.RunStopped) as err:
        train_mod.run(cfg)
    msg = str(err.value)
    assert "scripted crash after 250 steps" in msg and "Traceback" in msg
    assert "is intact" in msg and "resume=true" in msg
    saved_t = int(msg.split("t_env=")[2].split(")")[0])
    assert 150 <= saved_t < 2000
    fns = make_train(cfg)
    abstract = jax.eval_shape(jax.vmap(fns.init), jax.random.PRNGKey(0)[None])
    state, host = load_checkpoint(tmp_path / "run" / "checkpoint", abstract)
    assert int(np.asarray(state.t_env)[0]) == saved_t and set(host) >= {"next_test", "next_log"}
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.low.params))
    assert pids and wait_gone(pids, 15.0), f"orphan workers {pids}"
