"""The low-level optimiser (spec 2.10): global-norm clipping, then PyTorch-convention RMSProp."""

from __future__ import annotations

import optax


def make_optimizer(
    lr: float = 5e-4, decay: float = 0.99, eps: float = 1e-5, clip: float = 10.0
) -> optax.GradientTransformation:
    """clip_by_global_norm(clip) then RMSProp with eps outside the square root, no momentum."""
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.rmsprop(lr, decay=decay, eps=eps, eps_in_sqrt=False),
    )
