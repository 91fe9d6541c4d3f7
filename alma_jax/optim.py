"""The low-level optimiser (spec 2.10): global-norm clipping, then PyTorch-convention RMSProp."""

from __future__ import annotations

import optax

OPTIMIZERS = ("rmsprop", "adam")


def make_optimizer(
    lr: float = 5e-4, decay: float = 0.99, eps: float = 1e-5, clip: float = 10.0,
    kind: str = "rmsprop",
) -> optax.GradientTransformation:
    """clip_by_global_norm(clip) then RMSProp with eps outside the square root, no momentum
    (the paper's), or with kind='adam' Adam with betas 0.9/0.999 and the same eps: where the
    original offers Adam it passes its `optim_eps` of 1e-5, not PyTorch's 1e-8 (alma.md E8)."""
    if kind == "rmsprop":
        step = optax.rmsprop(lr, decay=decay, eps=eps, eps_in_sqrt=False)
    elif kind == "adam":
        step = optax.adam(lr, eps=eps)
    else:
        raise ValueError(f"optimizer kind {kind!r}; choose one of {list(OPTIMIZERS)}")
    return optax.chain(optax.clip_by_global_norm(clip), step)
