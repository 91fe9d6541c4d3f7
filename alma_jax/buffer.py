"""On-device episode replay buffer, window sampler, low-level loss masks (spec 1.1, 2.7, 4.2-4.3).

One `EpisodeBatch` definition serves the rollout output (`[E, L, ...]`, any integer width), the
buffer storage (`[C, L, ...]`, compact dtypes) and the sampled windows (`Window`, `[B, T, ...]`,
decoded to bool / int32 / float32). Masks keep the original polarity (True = blocked / absent /
not a member). Everything here is pure and jittable; sizes come from array shapes (static).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "ROW_FIELDS",
    "Buffer",
    "BufferTooLargeError",
    "EpisodeBatch",
    "Window",
    "alloc_to_index",
    "buffer_add",
    "buffer_init",
    "buffer_nbytes",
    "buffer_spec",
    "can_sample",
    "check_buffer_fits",
    "decode_rows",
    "default_memory_budget",
    "describe_memory",
    "draw_episodes",
    "draw_start_uniforms",
    "empty_episodes",
    "episode_nbytes",
    "index_to_onehot",
    "last_action_onehot",
    "loss_mask",
    "pad_value",
    "prev_alloc_onehot",
    "recent_episodes",
    "row_shapes",
    "sample_windows",
    "storage_dtypes",
    "episodes_as_window",
    "stored_alloc",
    "strata_bounds",
    "stratified_starts",
    "subtask_loss_mask",
    "windows_from_draws",
]


class EpisodeBatch(struct.PyTreeNode):
    """Per-row fields of episodes, leading dims [..., L] (spec 1.1); masks: True = blocked/absent.

    entities f32 [L,NE,ED], obs_mask [L,NE,NE], entity_mask [L,NE], entity2task_mask [L,NE,NT],
    task_mask [L,NT], avail_actions codes [L,NA,NACT], actions [L,NA], reward f32 [L],
    task_rewards f32 [L,NT], terminated/reset/filled/hier_decision [L], tasks_terminated [L,NT],
    last_action [L,NA] (action index of the previous row, -1 = none), prev_alloc [L,NA] (subtask
    index held before this row's decision, -1 = none).
    """

    entities: jax.Array
    obs_mask: jax.Array
    entity_mask: jax.Array
    entity2task_mask: jax.Array
    task_mask: jax.Array
    avail_actions: jax.Array
    actions: jax.Array
    reward: jax.Array
    task_rewards: jax.Array
    terminated: jax.Array
    reset: jax.Array
    filled: jax.Array
    hier_decision: jax.Array
    tasks_terminated: jax.Array
    last_action: jax.Array
    prev_alloc: jax.Array


class Window(EpisodeBatch):
    """Sampled windows [B, T, ...] (decoded dtypes) plus per-row provenance.

    t_added [B,T] int32: t_added of the episode each row came from (windows straddle episodes);
    slot [B,T] int32: buffer slot of that episode; row [B,T] int32: row inside that episode.
    Rows with filled=False beyond an episode's end are padding (zeros, -1 for index fields);
    a window opening on an episode's final-observation row has filled[:, 0] = False.
    """

    t_added: jax.Array
    slot: jax.Array
    row: jax.Array


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EpisodeBatch))
# Index fields use -1 for "none"; every other field pads with zeros (the original pads zeros).
_MINUS_ONE_FIELDS = ("last_action", "prev_alloc")


def row_shapes(
    n_agents: int, n_entities: int, n_tasks: int, n_actions: int, entity_dim: int
) -> dict[str, tuple[int, ...]]:
    """Per-row trailing shape (dims after L) of every EpisodeBatch field."""
    NA, NE, NT, NACT, ED = n_agents, n_entities, n_tasks, n_actions, entity_dim
    return {
        "entities": (NE, ED), "obs_mask": (NE, NE), "entity_mask": (NE,),
        "entity2task_mask": (NE, NT), "task_mask": (NT,), "avail_actions": (NA, NACT),
        "actions": (NA,), "reward": (), "task_rewards": (NT,), "terminated": (), "reset": (),
        "filled": (), "hier_decision": (), "tasks_terminated": (NT,), "last_action": (NA,),
        "prev_alloc": (NA,),
    }


_TRAILING_RANK = {k: len(v) for k, v in row_shapes(1, 1, 1, 1, 1).items()}


def pad_value(name: str) -> int:
    """Fill value of empty rows: -1 ("none") for index fields, 0 for all others."""
    return -1 if name in _MINUS_ONE_FIELDS else 0


class Buffer(struct.PyTreeNode):
    """Ring buffer state: data [C, L, ...] compact, lengths [C], t_added [C], ptr, size (int32)."""

    data: EpisodeBatch
    lengths: jax.Array
    t_added: jax.Array
    ptr: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        """C, the static number of episode slots."""
        return self.lengths.shape[0]


class BufferTooLargeError(MemoryError):
    """The requested `buffer_size` does not fit the memory budget."""


# ------------------------------------------------------------------------------- dtypes, layout
def _sizes(ep: EpisodeBatch) -> dict[str, int]:
    """Static sizes L, NA, NE, NT, NACT, ED read from the trailing dims of `ep`."""
    return {
        "L": ep.reward.shape[-1],
        "NA": ep.actions.shape[-1],
        "NE": ep.entity_mask.shape[-1],
        "NT": ep.task_mask.shape[-1],
        "NACT": ep.avail_actions.shape[-1],
        "ED": ep.entities.shape[-1],
    }


def _small_int(max_value: int, min_value: int = -1) -> np.dtype:
    """Narrowest signed integer dtype holding [min_value, max_value]."""
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= min_value and max_value <= info.max:
            return np.dtype(dt)
    raise ValueError(f"value range [{min_value}, {max_value}] does not fit int32")


def storage_dtypes(n_agents: int, n_tasks: int, n_actions: int) -> dict[str, np.dtype]:
    """Compact storage dtype per field: bool masks, int16 codes, int8 indices where they fit."""
    flt, boolean = np.dtype(np.float32), np.dtype(np.bool_)
    # Codes are 0, 1, 2+k (k < NT) and 1000+j (j < NA); int16 covers any realistic size.
    code_dt = _small_int(max(1000 + n_agents - 1, 1 + n_tasks), 0)
    act_dt = _small_int(n_actions - 1)
    task_dt = _small_int(n_tasks - 1)
    out = dict.fromkeys(ROW_FIELDS, boolean)
    out.update(
        entities=flt, reward=flt, task_rewards=flt, avail_actions=code_dt, actions=act_dt,
        last_action=act_dt, prev_alloc=task_dt,
    )
    return out


_WIDE = {np.dtype(np.bool_): np.dtype(np.bool_), np.dtype(np.float32): np.dtype(np.float32)}


def episodes_as_window(episodes: EpisodeBatch, t_added: jax.Array | int) -> Window:
    """Fresh rollout episodes [E, L] as a Window of whole episodes (on-policy learners)."""
    E, L = episodes.filled.shape
    rows = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None], (E, L))
    return Window(
        **{k: getattr(decode_rows(episodes), k) for k in ROW_FIELDS},
        t_added=jnp.full((E, L), t_added, jnp.int32),
        slot=jnp.broadcast_to(jnp.arange(E, dtype=jnp.int32)[:, None], (E, L)),
        row=rows,
    )


def decode_rows(ep: EpisodeBatch) -> EpisodeBatch:
    """Widen compact storage dtypes: integers -> int32, bool and float32 unchanged."""
    return jax.tree.map(lambda x: x if x.dtype in _WIDE else x.astype(jnp.int32), ep)


def empty_episodes(
    batch_shape: tuple[int, ...],
    episode_limit: int,
    n_agents: int,
    n_entities: int,
    n_tasks: int,
    n_actions: int,
    entity_dim: int,
) -> EpisodeBatch:
    """All-empty episodes [*batch_shape, L=episode_limit+1, ...] (filled False, indices -1)."""
    shapes = row_shapes(n_agents, n_entities, n_tasks, n_actions, entity_dim)
    wide = {k: (jnp.int32 if np.issubdtype(d, np.integer) else d)
            for k, d in storage_dtypes(n_agents, n_tasks, n_actions).items()}
    return EpisodeBatch(**{
        k: jnp.full((*batch_shape, episode_limit + 1, *s), pad_value(k), wide[k])
        for k, s in shapes.items()
    })


# ------------------------------------------------------------------------- index <-> one-hot
def index_to_onehot(idx: jax.Array, n: int) -> jax.Array:
    """[...] int (-1 = none) -> [..., n] float32 one-hot, all-zero for -1."""
    return (idx[..., None] == jnp.arange(n, dtype=idx.dtype)).astype(jnp.float32)


def alloc_to_index(alloc: jax.Array) -> jax.Array:
    """Allocation [..., NA, NT] (one-hot or all-zero rows) -> subtask index [..., NA], -1 = none."""
    alloc = alloc.astype(bool)
    return jnp.where(alloc.any(-1), jnp.argmax(alloc, -1), -1).astype(jnp.int32)


def last_action_onehot(ep: EpisodeBatch) -> jax.Array:
    """Last-action input [..., NA, NACT] float32 (zeros where there is no previous action)."""
    return index_to_onehot(ep.last_action.astype(jnp.int32), ep.avail_actions.shape[-1])


def prev_alloc_onehot(ep: EpisodeBatch) -> jax.Array:
    """Allocation held before each row's decision [..., NA, NT] float32 (zeros = none)."""
    return index_to_onehot(ep.prev_alloc.astype(jnp.int32), ep.task_mask.shape[-1])


def stored_alloc(ep: EpisodeBatch) -> jax.Array:
    """Executed allocation [..., NA, NT] bool from the agent rows of entity2task_mask (spec 1.3)."""
    return ~ep.entity2task_mask[..., : ep.actions.shape[-1], :]


# ------------------------------------------------------------------------------- init and add
def _single_episode(example: EpisodeBatch) -> EpisodeBatch:
    """Accept one episode [L, ...] or a batch [E, L, ...] and return one episode."""
    extra = example.reward.ndim - 1
    return jax.tree.map(lambda x: x[(0,) * extra], example) if extra else example


def buffer_init(example_episode: EpisodeBatch, capacity: int) -> Buffer:
    """Empty buffer of `capacity` episodes shaped like `example_episode` [L, ...] or [E, L, ...]."""
    ex = _single_episode(example_episode)
    sz = _sizes(ex)
    dts = storage_dtypes(sz["NA"], sz["NT"], sz["NACT"])
    data = EpisodeBatch(**{
        k: jnp.full((capacity, *getattr(ex, k).shape), pad_value(k), dts[k])
        for k in ROW_FIELDS
    })
    zeros = jnp.zeros((capacity,), jnp.int32)
    return Buffer(data, zeros, zeros, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def buffer_add(buf: Buffer, episodes: EpisodeBatch, t_added: jax.Array | int) -> Buffer:
    """Insert episodes [E, L, ...] at ptr (ring, oldest overwritten); t_added scalar or [E].

    Jit it with the buffer donated (donate_argnums=0) or inside the training jit, so the
    scatter updates storage in place instead of copying it.
    """
    E, C = episodes.reward.shape[0], buf.capacity
    if E > C:
        raise ValueError(f"cannot add {E} episodes at once to a buffer of {C} slots")
    slots = (buf.ptr + jnp.arange(E, dtype=jnp.int32)) % C
    data = jax.tree.map(
        lambda store, new: store.at[slots].set(new.astype(store.dtype)), buf.data, episodes
    )
    lengths = episodes.filled.astype(jnp.int32).sum(-1)
    t_new = jnp.broadcast_to(jnp.asarray(t_added, jnp.int32), (E,))
    return Buffer(
        data=data,
        lengths=buf.lengths.at[slots].set(lengths),
        t_added=buf.t_added.at[slots].set(t_new),
        ptr=(buf.ptr + E) % C,
        size=jnp.minimum(buf.size + E, C),
    )


def can_sample(buf: Buffer, batch_size: int) -> jax.Array:
    """Whether at least `batch_size` episodes are stored (training starts then, spec 4.2)."""
    return buf.size >= batch_size


def recent_episodes(buf: Buffer, t_env: jax.Array | int, decay_old: int) -> jax.Array:
    """[C] bool: stored episodes with t_env - t_added <= decay_old (high-level filter, 3.11)."""
    stored = jnp.arange(buf.capacity) < buf.size
    return stored & (jnp.asarray(t_env, jnp.int32) - buf.t_added <= decay_old)


# ------------------------------------------------------------------------------------ memory
def buffer_spec(example_episode: EpisodeBatch, capacity: int) -> Buffer:
    """Shapes and dtypes of `buffer_init(example_episode, capacity)` without allocating it."""
    return jax.eval_shape(lambda ex: buffer_init(ex, capacity), example_episode)


def _nbytes(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def buffer_nbytes(buf: Buffer) -> int:
    """Total bytes of a buffer (arrays or `buffer_spec` shapes): sum of its leaves' nbytes."""
    return sum(_nbytes(x) for x in jax.tree.leaves(buf))


def episode_nbytes(buf: Buffer) -> int:
    """Bytes of one stored episode slot (row data + lengths + t_added)."""
    per_slot = sum(_nbytes(x) for x in jax.tree.leaves(buf.data)) + _nbytes(
        buf.lengths) + _nbytes(buf.t_added)
    return per_slot // buf.capacity


def default_memory_budget(device: jax.Device | None = None) -> tuple[int, str]:
    """(bytes, source): free accelerator memory from memory_stats, else free/physical host RAM."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"{device.platform} device memory_stats (bytes_limit - bytes_in_use)"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "host RAM available (psutil)"
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages), "host physical RAM (os.sysconf)"


def _fmt(n: int) -> str:
    return f"{n:,} B ({n / 2**30:.3f} GiB)"


def check_buffer_fits(
    example_episode: EpisodeBatch,
    capacity: int,
    budget_bytes: int | None = None,
    n_copies: int = 1,
) -> int:
    """Bytes needed by `n_copies` buffers (e.g. num_seeds); BufferTooLargeError over budget."""
    spec = buffer_spec(example_episode, capacity)
    needed = buffer_nbytes(spec) * n_copies
    source = "given budget"
    if budget_bytes is None:
        budget_bytes, source = default_memory_budget()
    if needed > budget_bytes:
        per_episode = episode_nbytes(spec) * n_copies
        copies = f" x {n_copies} copies" if n_copies > 1 else ""
        fit = max(0, (budget_bytes - (needed - per_episode * capacity)) // max(per_episode, 1))
        raise BufferTooLargeError(
            f"replay buffer does not fit: buffer_size={capacity} episodes{copies} needs "
            f"{_fmt(needed)} but the memory budget is {_fmt(budget_bytes)} [{source}]; "
            f"lower buffer_size to at most {fit} (or num_seeds / episode_limit)"
        )
    return needed


def describe_memory(buf: Buffer, budget_bytes: int | None = None) -> str:
    """Multi-line start-up report: bytes per field, per episode, and the exact total."""
    total = buffer_nbytes(buf)
    C = buf.capacity
    lines = [f"replay buffer: buffer_size={C} episodes x {buf.data.reward.shape[1]} rows, "
             f"{episode_nbytes(buf):,} B/episode"]
    entries = [(k, getattr(buf.data, k)) for k in ROW_FIELDS]
    entries += [("lengths", buf.lengths), ("t_added", buf.t_added), ("ptr", buf.ptr),
                ("size", buf.size)]
    for name, x in entries:
        shape = "[" + ",".join(str(s) for s in x.shape) + "]"
        lines.append(f"  {name:<17}{np.dtype(x.dtype).name:<8}{shape:<22}{_nbytes(x):>16,} B")
    tail = f"  total {_fmt(total)}"
    if budget_bytes is not None:
        tail += f" = {100 * total / max(budget_bytes, 1):.1f}% of budget {_fmt(budget_bytes)}"
    lines.append(tail)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- sampling
def draw_episodes(
    key: jax.Array, eligible: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """B distinct slots uniformly among eligible [C] bool, in random order -> (slots [B], ok [B]).

    ok is False only when fewer than B slots are eligible; such picks count as empty episodes.
    """
    if batch_size > eligible.shape[0]:
        raise ValueError(f"batch_size={batch_size} exceeds buffer capacity {eligible.shape[0]}")
    # Top-k of iid uniform scores is a uniform ordered subset; ineligible slots score below all.
    score = jnp.where(eligible, jax.random.uniform(key, eligible.shape), -1.0)
    _, slots = jax.lax.top_k(score, batch_size)
    return slots.astype(jnp.int32), eligible[slots]


def draw_start_uniforms(key: jax.Array, batch_size: int) -> jax.Array:
    """One uniform [0, 1) draw per stratum [B] float32 (the only randomness of window starts)."""
    return jax.random.uniform(key, (batch_size,), jnp.float32)


def strata_bounds(n_starts: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Strata [lo, hi) [B] int32 = round(linspace(0, n_starts, B+1)) with exact half-to-even."""
    # Integer arithmetic reproduces numpy's float64 linspace+round exactly when B is a power of
    # two (the default 32); otherwise it can differ only at exact .5 ties, where numpy's
    # rounding error decides. Exactness keeps results identical on every backend.
    i = jnp.arange(batch_size + 1, dtype=jnp.int32)
    num = i * n_starts.astype(jnp.int32)
    q, r = num // batch_size, num % batch_size
    bounds = q + ((2 * r > batch_size) | ((2 * r == batch_size) & (q % 2 == 1))).astype(jnp.int32)
    return bounds[:-1], bounds[1:]


def stratified_starts(u: jax.Array, total: jax.Array, max_traj_len: int) -> jax.Array:
    """Window starts [B] in the stream of length `total` > T: one per stratum of [0, total-T]."""
    B = u.shape[0]
    last = total - max_traj_len
    lo, hi = strata_bounds(last + 1, B)
    width = hi - lo
    # min() guards f32 rounding of u*width up to width; empty strata (hi == lo) are clamped.
    off = jnp.minimum(jnp.floor(u * width.astype(jnp.float32)).astype(jnp.int32),
                      jnp.maximum(width - 1, 0))
    return jnp.minimum(lo + off, last)


def _window_indices(
    lengths: jax.Array, u: jax.Array, max_traj_len: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(episode index j [B,T] into the B picks, row [B,T], valid [B,T]) per spec 4.3."""
    B, T = lengths.shape[0], max_traj_len
    t = jnp.arange(T, dtype=jnp.int32)
    cum = jnp.cumsum(lengths)
    offsets = cum - lengths
    total = cum[-1]
    # Long path: windows of T consecutive rows of the concatenated stream.
    starts = stratified_starts(u, jnp.maximum(total, T + 1), T)
    pos = starts[:, None] + t[None, :]
    j_long = jnp.minimum(jnp.searchsorted(cum, pos, side="right"), B - 1).astype(jnp.int32)
    row_long = pos - offsets[j_long]
    valid_long = pos < total
    # Short path: each episode from its first row, padded to T.
    j_short = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, T))
    row_short = jnp.broadcast_to(t[None, :], (B, T))
    valid_short = t[None, :] < lengths[:, None]
    long_path = (lengths > T).any()
    return (
        jnp.where(long_path, j_long, j_short),
        jnp.where(long_path, row_long, row_short),
        jnp.where(long_path, valid_long, valid_short),
    )


def windows_from_draws(
    buf: Buffer, slots: jax.Array, slot_ok: jax.Array, u: jax.Array, max_traj_len: int
) -> Window:
    """Deterministic part of spec 4.3 given the draws: slots [B], ok [B], u [B] -> Window [B,T]."""
    L = buf.data.reward.shape[1]
    lengths = jnp.where(slot_ok, buf.lengths[slots], 0)
    j, row, valid = _window_indices(lengths, u, max_traj_len)
    slot = slots[j]
    rows = jnp.minimum(row, L - 1)
    picked = jax.tree.map(lambda x: x[slot, rows], buf.data)

    def pad(name: str, x: jax.Array) -> jax.Array:
        m = valid.reshape(valid.shape + (1,) * _TRAILING_RANK[name])
        return jnp.where(m, x, jnp.asarray(pad_value(name), x.dtype))

    rows_out = {k: pad(k, getattr(picked, k)) for k in ROW_FIELDS}
    # A window that opens on an episode's final-observation row (last filled row, no reset)
    # would make m(0) = filled(0) keep a transition into the next episode of the stream; that
    # row carries no transition of its own, so it is marked unfilled instead.
    opens_on_final = (row[:, 0] == lengths[j[:, 0]] - 1) & ~rows_out["reset"][:, 0]
    rows_out["filled"] = rows_out["filled"].at[:, 0].set(rows_out["filled"][:, 0] & ~opens_on_final)
    decoded = decode_rows(EpisodeBatch(**rows_out))
    return Window(
        **{k: getattr(decoded, k) for k in ROW_FIELDS},
        t_added=buf.t_added[slot], slot=slot, row=row,
    )


def sample_windows(
    buf: Buffer,
    key: jax.Array,
    batch_size: int = 32,
    max_traj_len: int = 64,
    eligible: jax.Array | None = None,
) -> Window:
    """Spec 4.3 window batch [B, T, ...] from B distinct stored (and eligible [C]) episodes.

    Needs at least B eligible episodes (see `can_sample`); missing picks become empty rows.
    Jit with batch_size and max_traj_len static.
    """
    stored = jnp.arange(buf.capacity) < buf.size
    eligible = stored if eligible is None else stored & eligible
    k_ep, k_start = jax.random.split(key)
    slots, ok = draw_episodes(k_ep, eligible, batch_size)
    u = draw_start_uniforms(k_start, batch_size)
    return windows_from_draws(buf, slots, ok, u, max_traj_len)


# ------------------------------------------------------------------------------- loss masks
def loss_mask(window: EpisodeBatch) -> jax.Array:
    """Flat loss mask [..., T] bool: m(0)=filled(0), m(t)=filled(t) & ~reset(t-1) (spec 2.7)."""
    prev_reset = jnp.concatenate(
        [jnp.zeros_like(window.reset[..., :1]), window.reset[..., :-1]], axis=-1
    )
    return window.filled & ~prev_reset


def subtask_loss_mask(window: EpisodeBatch, alloc: jax.Array | None = None) -> jax.Array:
    """Per-subtask mask [..., T, NT]: m(t) & ~tasks_terminated_k(t-1) & has_agents_k(t).

    alloc [..., T, NA, NT] (bool or 0/1); default: the executed allocation in entity2task_mask.
    """
    alloc = stored_alloc(window) if alloc is None else alloc
    tt = window.tasks_terminated
    prev_done = jnp.concatenate([jnp.zeros_like(tt[..., :1, :]), tt[..., :-1, :]], axis=-2)
    has_agents = (alloc.astype(jnp.float32).sum(-2) > 0)
    return loss_mask(window)[..., None] & ~prev_done & has_agents
