"""Network building blocks, each written for one example (vmap over batch and time)."""

from alma_jax.nn.agent import (
    EntityAttentionAgent,
    TaskEmbed,
    agent_key_mask,
    entity_inputs,
)
from alma_jax.nn.attention import MaskedMHA, both_active_block, group_block, membership
from alma_jax.nn.init import TorchDense, dense, torch_uniform
from alma_jax.nn.mixers import AttentionHyperNet, FlexQMixer, mix, nonneg_map

__all__ = [
    "AttentionHyperNet",
    "EntityAttentionAgent",
    "FlexQMixer",
    "MaskedMHA",
    "TaskEmbed",
    "TorchDense",
    "agent_key_mask",
    "both_active_block",
    "dense",
    "entity_inputs",
    "group_block",
    "membership",
    "mix",
    "nonneg_map",
    "torch_uniform",
]
