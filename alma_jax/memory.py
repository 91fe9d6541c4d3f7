"""Device memory of a run: replay buffers, train state and activations, per seed.

The replay buffer's bytes are exact (`alma_jax.buffer.buffer_nbytes` of its shapes); the rest
of the train state (parameters, optimiser moments, target copies, counters) comes from
`jax.eval_shape` of `init`; activations (XLA's temporary buffers of the jitted chunk) from
`jax.jit(...).lower(...).compile().memory_analysis()` where the backend reports it.
`MemoryModel` turns these into the largest `num_seeds x buffer_size` that fits a budget and
raises `BufferTooLargeError` with the numbers when a run does not fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from alma_jax import buffer as bf


def tree_nbytes(tree: Any) -> int:
    """Total bytes of the array leaves (or shape/dtype structs) of `tree`."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def compiled_memory(fn: Callable, *args: Any, **jit_kw: Any) -> dict[str, int] | None:
    """XLA's memory analysis of `jax.jit(fn, **jit_kw)` for `args` (arrays or shape structs).

    Keys: argument, output, alias (outputs sharing donated inputs), temp (activations and
    other scratch) and generated code bytes; None where the backend does not report them.
    """
    compiled = jax.jit(fn, **jit_kw).lower(*args).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, AttributeError, RuntimeError):
        stats = None
    if stats is None:
        return None
    names = ("argument", "output", "alias", "temp", "generated_code")
    return {n: int(getattr(stats, f"{n}_size_in_bytes", 0) or 0) for n in names}


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Bytes of a run as a function of `num_seeds` and `buffer_size` (one device).

    total(S, C) = S * (C * episode + buffer_fixed + state + activation) + activation_fixed,
    where `activation` is the per-seed slope of the chunk's temporary bytes and
    `activation_fixed` its seed-independent part.
    """

    episode: int  # bytes of one stored episode slot (row data, length, t_added)
    buffer_fixed: int  # per-buffer bytes that do not grow with buffer_size (ptr, size)
    state: int  # per seed: train state without the replay buffer
    activation: int = 0  # per seed: temporary bytes of the jitted chunk
    activation_fixed: int = 0

    @classmethod
    def from_example(cls, example_episode: bf.EpisodeBatch, state_bytes_per_seed: int,
                     activation_bytes_per_seed: int = 0,
                     activation_bytes_fixed: int = 0) -> MemoryModel:
        """Model from the trainer's example episode and the measured per-seed bytes."""
        one, two = (bf.buffer_nbytes(bf.buffer_spec(example_episode, c)) for c in (1, 2))
        return cls(episode=two - one, buffer_fixed=2 * one - two, state=state_bytes_per_seed,
                   activation=activation_bytes_per_seed,
                   activation_fixed=activation_bytes_fixed)

    def per_seed(self, buffer_size: int) -> int:
        return buffer_size * self.episode + self.buffer_fixed + self.state + self.activation

    def total(self, num_seeds: int, buffer_size: int) -> int:
        return num_seeds * self.per_seed(buffer_size) + self.activation_fixed

    def max_buffer_size(self, num_seeds: int, budget: int) -> int:
        """Largest buffer_size with `num_seeds` seeds within `budget` bytes (0: none fits)."""
        room = budget - self.activation_fixed - num_seeds * self.per_seed(0)
        return max(0, room // max(num_seeds * self.episode, 1))

    def max_num_seeds(self, buffer_size: int, budget: int) -> int:
        """Most seeds with `buffer_size` episodes each within `budget` bytes (0: none)."""
        return max(0, (budget - self.activation_fixed) // max(self.per_seed(buffer_size), 1))

    def check(self, num_seeds: int, buffer_size: int, budget: int,
              source: str = "given budget") -> int:
        """Bytes of (num_seeds, buffer_size); BufferTooLargeError naming what fits instead."""
        needed = self.total(num_seeds, buffer_size)
        if needed > budget:
            max_c = self.max_buffer_size(num_seeds, budget)
            max_s = self.max_num_seeds(buffer_size, budget)
            by_c = (f"with num_seeds={num_seeds} use buffer_size <= {max_c}" if max_c else
                    f"num_seeds={num_seeds} does not fit even with an empty buffer")
            by_s = (f"with buffer_size={buffer_size} use num_seeds <= {max_s}" if max_s else
                    f"buffer_size={buffer_size} does not fit even one seed")
            raise bf.BufferTooLargeError(
                f"num_seeds={num_seeds} x buffer_size={buffer_size} does not fit: it needs "
                f"{_gib(needed)} (replay {_gib(num_seeds * buffer_size * self.episode)}, "
                f"train state {_gib(num_seeds * self.state)}, activations "
                f"{_gib(num_seeds * self.activation + self.activation_fixed)}) but the "
                f"budget is {_gib(budget)} [{source}]; {by_c}; {by_s}")
        return needed


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB"
