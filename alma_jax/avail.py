"""Coded available actions -> boolean availability (spec 1.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

ALLY_CODE = 1000  # codes 1000 + j: available only if ally j shares the acting agent's subtask
TASK_CODE = 2  # codes 2 + k: available only to an agent allocated to subtask k


def parse_avail(codes: jax.Array, alloc: jax.Array | None, mask_subtask_actions: bool) -> jax.Array:
    """codes [NA, NACT] int, alloc [NA, NT] or None -> available [NA, NACT] bool.

    Codes: 0 unavailable, 1 always, 2+k only in subtask k, 1000+j only if ally j shares the
    subtask. Without subtask masking (or without an allocation) every code >= 1 is available.
    """
    if alloc is None or not mask_subtask_actions:
        return codes >= 1
    # argmax of an all-zero (inactive) row is subtask 0, as in the original.
    task = jnp.argmax(alloc, axis=-1)  # [NA]
    mine = task[:, None]
    general = codes == 1
    task_code = (codes >= TASK_CODE) & (codes < ALLY_CODE) & (codes - TASK_CODE == mine)
    ally = jnp.clip(codes - ALLY_CODE, 0, alloc.shape[0] - 1)
    ally_code = (codes >= ALLY_CODE) & (task[ally] == mine)
    return general | task_code | ally_code
