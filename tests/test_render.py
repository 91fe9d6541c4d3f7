"""Tests of the SaveTheCity renderer (envs_jax/savethecity/render.py).

The default run only renders hand-built states (no jit); rollouts and the CLI are `slow`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import envs_jax
from envs_jax.savethecity import render
from envs_jax.savethecity.render import (
    AGENT_RGB,
    FIRE_RGB,
    cell_bbox,
    render_state,
    save_gif,
    subtask_color,
)
from envs_jax.savethecity.scenarios import BUILDER, FAST_BURN, FIREFIGHTER, GENERALIST, SLOW_BURN

CELL = 24  # small frames keep the tests quick


@pytest.fixture(scope="module")
def env():
    return envs_jax.make("savethecity")


def _crop(img, x, y, cell=CELL):
    x0, y0, x1, y1 = cell_bbox(x, y, cell)
    return img[y0 : y1 + 1, x0 : x1 + 1]


def _count(img, rgb):
    return int(np.sum(np.all(img == np.asarray(rgb, np.uint8), -1)))


def _fire_like(img):
    """Red/orange pixels (the fire colours)."""
    r, g, b = (img[..., k].astype(int) for k in range(3))
    return int(np.sum((r >= 200) & (g <= 120) & (b <= 60)))


def _state(env, fire=0.0, health=0.5, t=0):
    return env.make_state(
        agents=[(FIREFIGHTER, 2, 2), (BUILDER, 9, 4), (GENERALIST, 12, 12)],
        buildings=[(FAST_BURN, 7, 7, health, fire, 60), (SLOW_BURN, 4, 10, 0.7, 0.0, 20)],
        t=t,
    )


def test_shape_dtype_and_constant_size(env):
    img = render_state(_state(env), cell=CELL)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[-1] == 3 and img.shape[0] > 16 * CELL
    # the frame size depends on the env's slot counts only, so episodes stack into GIFs
    other = render_state(_state(env, fire=0.8, health=1.0, t=7), allocation=np.zeros(5, int),
                         actions=np.zeros(5, int), reward=1.0, title="x", cell=CELL)
    assert other.shape == img.shape
    assert render_state(_state(env)).shape[1] > img.shape[1]  # default cell=32 is larger


def test_deterministic_and_accepts_numpy_state(env):
    st = _state(env, fire=0.5)
    kw = dict(allocation=np.array([0, 1, -1, -1, -1]), actions=np.array([2, 0, 5, 0, 0]),
              reward=0.25, title="det", cell=CELL)
    a = render_state(st, **kw)
    b = render_state(st, **kw)
    c = render_state(jax.device_get(st), **kw)  # numpy leaves
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_fire_pixels_follow_fire(env):
    burning = render_state(_state(env, fire=0.6), cell=CELL)
    calm = render_state(_state(env, fire=0.0), cell=CELL)
    assert _count(_crop(burning, 7, 7), FIRE_RGB) > 0
    assert _fire_like(_crop(burning, 7, 7)) > CELL  # prominent, not a few stray pixels
    assert _fire_like(_crop(calm, 7, 7)) == 0
    # the non-burning building is unaffected either way
    assert _fire_like(_crop(burning, 4, 10)) == 0
    # stronger fire draws a longer fire bar
    weak = render_state(_state(env, fire=0.1), cell=CELL)
    assert _count(_crop(weak, 7, 7), FIRE_RGB) < _count(_crop(burning, 7, 7), FIRE_RGB)


def test_padded_agents_not_drawn(env):
    st = _state(env)
    rgb = AGENT_RGB[GENERALIST]
    assert _count(_crop(render_state(st, cell=CELL), 12, 12), rgb) > 0
    # invalid slot left at an on-map position: must not be drawn
    masked = st.replace(agent_valid=st.agent_valid.at[2].set(False))
    img = render_state(masked, cell=CELL)
    assert _count(_crop(img, 12, 12), rgb) == 0
    # a state built without that agent (padded slot off-map) renders identically
    without = env.make_state(
        agents=[(FIREFIGHTER, 2, 2), (BUILDER, 9, 4)],
        buildings=[(FAST_BURN, 7, 7, 0.5, 0.0, 60), (SLOW_BURN, 4, 10, 0.7, 0.0, 20)],
    )
    np.testing.assert_array_equal(img, render_state(without, cell=CELL))


def test_padded_buildings_not_drawn(env):
    st = _state(env, fire=0.9)
    masked = st.replace(bld_valid=st.bld_valid.at[0].set(False))
    img = render_state(masked, cell=CELL)
    assert _fire_like(_crop(img, 7, 7)) == 0
    assert _count(_crop(img, 7, 7), render.BLD_RGB[FAST_BURN]) == 0


def test_allocation_line_only_with_allocation(env):
    st = env.make_state(agents=[(FIREFIGHTER, 3, 3)], buildings=[(FAST_BURN, 10, 10, 0.5, 0, 60)])
    col = subtask_color(0)
    between = [(6, 6), (7, 7)]  # cells the agent-to-building line crosses
    plain = render_state(st, cell=CELL)
    assert all(_count(_crop(plain, *xy), col) == 0 for xy in between)
    alloc = render_state(st, allocation=np.array([0, -1, -1, -1, -1]), cell=CELL)
    assert all(_count(_crop(alloc, *xy), col) > 0 for xy in between)
    # one-hot [A, B] (bool or JAX) gives the same picture as the index form
    onehot = jnp.zeros((env.n_agents, env.n_buildings), bool).at[0, 0].set(True)
    np.testing.assert_array_equal(alloc, render_state(st, allocation=onehot, cell=CELL))
    # unallocated agents (-1 everywhere) get no line
    none = render_state(st, allocation=-np.ones(5, int), cell=CELL)
    assert all(_count(_crop(none, *xy), col) == 0 for xy in between)


def test_interaction_marks(env):
    st = env.make_state(agents=[(FIREFIGHTER, 7, 6)], buildings=[(FAST_BURN, 7, 7, 0.5, 0.5, 60)])
    acts = np.zeros(5, int)
    assert _count(_crop(render_state(st, cell=CELL), 7, 6), render.ACTION_RGB[9]) == 0
    acts[0] = 9
    marked = render_state(st, actions=acts, cell=CELL)
    assert _count(_crop(marked, 7, 6), render.ACTION_RGB[9]) > 0


def test_rejects_batched_state(env):
    st = _state(env)
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), st)
    with pytest.raises(ValueError, match="ONE environment"):
        render_state(batched)


def test_save_gif_states_and_arrays(env, tmp_path):
    states = [_state(env, fire=0.2 * k, t=k) for k in range(3)]
    path = save_gif(states, tmp_path / "ep.gif", fps=5, cell=CELL,
                    allocations=[np.array([0, 1, 0, -1, -1])] * 3, rewards=[None, 0.1, -0.2])
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.size == render_state(states[0], cell=CELL).shape[1::-1]
        im.seek(2)
        assert np.asarray(im.convert("RGB")).shape[-1] == 3
    frames = [render_state(s, cell=CELL) for s in states]
    frames.append(np.zeros_like(frames[0]))
    path2 = save_gif(frames, tmp_path / "arr.gif")
    with Image.open(path2) as im:
        assert im.n_frames == 4
    with pytest.raises(ValueError):
        save_gif(states, tmp_path / "bad.gif", actions=[None])


@pytest.mark.slow
def test_rollout_frames_and_cli(env, tmp_path):
    from envs_jax.savethecity import heuristic_allocation, scripted

    policy = jax.jit(scripted.heuristic_policy)
    states, actions, allocs, rewards = render.rollout_frames(
        env, jax.random.key(0), policy, None, jax.jit(heuristic_allocation), return_rewards=True
    )
    assert len(states) == len(actions) == len(allocs) == len(rewards)
    assert actions[-1] is None and rewards[0] is None
    assert states[-1].t == len(states) - 1
    # the greedy policy only takes available actions
    assert int(states[-1].stats.invalid_actions) == 0
    # the final state is the one the episode ended in: finished or timed out
    last = states[-1]
    finished = np.all(~np.asarray(last.bld_valid) | np.isin(np.asarray(last.health), [0, 1]))
    assert finished or int(last.t) == env.episode_limit
    out = render.main(["--steps", "3", "--policy", "random", "--out", str(tmp_path / "c.gif")])
    with Image.open(out) as im:
        assert im.n_frames == 4
