"""PyTorch-style dense layers: the one Dense every alma-jax network is built from."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alma_jax.nn import precision

# Inputs this narrow (the allocator's [members, non-members] counts) skip the matmul path.
SMALL_FAN_IN = 2


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear default for kernel and bias."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """Affine map `[..., Din] -> [..., features]` with PyTorch's default initialisation.

    flax's `nn.Dense` cannot express this because its bias initialiser never sees `fan_in`;
    parameter names (`kernel [Din, features]`, `bias [features]`) match `nn.Dense`.
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., Din] -> [..., features]."""
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        if fan_in <= SMALL_FAN_IN:
            # A sum of broadcast products: XLA:CPU runs the weight gradient of a dot this
            # skinny (a [fan_in, N] · [N, features] contraction over every row) as a slow
            # unfused dot; as products its gradient is a reduction fused with its neighbours.
            y = sum(x[..., i, None] * kernel[i] for i in range(fan_in))
        else:
            y = precision.dot(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


def dense(features: int, use_bias: bool = True, name: str | None = None) -> TorchDense:
    """The Dense factory used everywhere: PyTorch-initialised `TorchDense(features)`."""
    return TorchDense(features=features, use_bias=use_bias, name=name)
