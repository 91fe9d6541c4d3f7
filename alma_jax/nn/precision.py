"""Matmul precision of the networks: fp32, or bf16 inputs with fp32 accumulation.

`precision=bf16` puts the networks' contractions (every dense layer, the attention's q/k/v
projection and both attention contractions, the GRU's gates) on bf16 inputs with fp32 results.
Everything else stays fp32: parameters, optimiser state, Pop-Art statistics, targets, losses,
softmaxes, the mixers' monotonic mixing arithmetic and the allocator's pointer scores.

The choice is made per network object (`at_precision`), not per call: a learner wraps the
modules it builds, and every `init` / `apply` of the wrapped module traces its contractions
at that precision. Under fp32 the module is returned unwrapped, so fp32 runs trace exactly
the code they always did.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": None, "bf16": jnp.bfloat16}
# The input dtype of contractions being traced now (None = leave the inputs as they are).
_INPUT_DTYPE: contextvars.ContextVar[Any] = contextvars.ContextVar("matmul_input_dtype",
                                                                   default=None)


# CPU features with bf16 dot-product instructions (x86 AVX512-BF16 / AMX, Arm's BF16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def bf16_speed_note(backend: str, flags: set[str] | None) -> str | None:
    """A warning for `precision=bf16` on a CPU whose instructions have no bf16 products
    (`flags` from `alma_jax.cpuinfo.read_cpuinfo`): there XLA converts to fp32 and back around
    every product, so bf16 runs slower than fp32 (measured: an AVX2-only EPYC's fp32 matmul
    peak is 1.3-1.5x its bf16 peak)."""
    if backend != "cpu" or flags is None or any(f in flags for f in BF16_CPU_FLAGS):
        return None
    return ("precision=bf16: this CPU has no bf16 instructions (none of "
            f"{', '.join(BF16_CPU_FLAGS)}), so bf16 products are emulated and are likely "
            "slower than fp32 here; precision=fp32 is the faster choice on this machine")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Contractions traced inside this block use `precision`'s input dtype."""
    token = _INPUT_DTYPE.set(_DTYPES[check_precision(precision)])
    try:
        yield
    finally:
        _INPUT_DTYPE.reset(token)


def _cast(*xs: jax.Array) -> tuple[jax.Array, ...]:
    dt = _INPUT_DTYPE.get()
    return xs if dt is None else tuple(x.astype(dt) for x in xs)


def dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., K] · w [K, N] -> [..., N] in fp32, with inputs at the current precision."""
    if _INPUT_DTYPE.get() is None:
        return jnp.dot(x, w)
    return jnp.dot(*_cast(x, w), preferred_element_type=jnp.float32)


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Two-operand einsum in fp32, with inputs at the current precision."""
    if _INPUT_DTYPE.get() is None:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, *_cast(a, b), preferred_element_type=jnp.float32)


class AtPrecision:
    """A flax module whose `init` and `apply` trace its contractions at one precision.

    Everything else (attributes, methods passed to `apply(method=...)`) is the module's.
    """

    def __init__(self, module: Any, precision: str):
        self.module = module
        self.precision = check_precision(precision)

    def init(self, *args: Any, **kwargs: Any) -> Any:
        with matmul_precision(self.precision):
            return self.module.init(*args, **kwargs)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        with matmul_precision(self.precision):
            return self.module.apply(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def at_precision(module: Any, precision: str) -> Any:
    """`module` itself under fp32, else wrapped so that it runs at `precision`."""
    return module if check_precision(precision) == "fp32" else AtPrecision(module, precision)
