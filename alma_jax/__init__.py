"""alma-jax: JAX-vectorised trainer for hierarchical cooperative multi-agent RL."""

__version__ = "0.1.0"
