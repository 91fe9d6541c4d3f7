"""Pillow frames of `starcraft_jax` battles (for `python -m alma_jax.evaluate ... gif=...`).

The map is drawn to scale, y up: each unit a circle of its radius, agents blue and enemies
red, labelled with its type's letter and slot; a bar under it shows health (green) and, for
Protoss, shields (cyan). Dead units are grey crosses. With the agents' actions of the frame,
attacks are red lines to their target, heals green lines, moves short arrows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from envs_jax.starcraft import units as ut
from envs_jax.starcraft.smac_env import DIRS, N_NO_ATTACK, NORTH, WEST, StarCraftJax

AGENT_RGB, ENEMY_RGB, DEAD_RGB = (40, 90, 200), (200, 50, 40), (150, 150, 150)
BG_RGB, GRID_RGB, TEXT_RGB = (238, 236, 228), (222, 219, 210), (30, 30, 30)
LETTER = {"marine": "m", "marauder": "M", "medivac": "V", "zealot": "z", "stalker": "s",
          "colossus": "C", "zergling": "g", "hydralisk": "h", "baneling": "b"}


def render_state(state: Any, env: StarCraftJax | Any, actions: Any = None,
                 reward: float | None = None, title: str = "", scale: int = 16, **_: Any
                 ) -> np.ndarray:
    """One frame [H, W, 3] uint8 of a `BattleState` or multi-army `ArmyState` (numpy or JAX
    leaves)."""
    u = state.units
    pos, alive = np.asarray(u.pos), np.asarray(u.alive)
    health, shield = np.asarray(u.health), np.asarray(u.shield)
    utype = np.asarray(u.utype)
    valid = np.asarray(u.valid)
    W, H = (float(v) for v in env.size)
    head = 22
    img = Image.new("RGB", (int(W * scale), int(H * scale) + head), BG_RGB)
    d = ImageDraw.Draw(img)

    def px(p):
        return (float(p[0]) * scale, head + (H - float(p[1])) * scale)

    for g in range(0, int(W) + 1, 4):
        d.line([px((g, 0)), px((g, H))], fill=GRID_RGB)
        d.line([px((0, g)), px((W, g))], fill=GRID_RGB)
    text = f"{title}  t={int(np.asarray(state.t))}"
    if reward is not None:
        text += f"  r={reward:+.2f}"
    d.text((4, 4), text, fill=TEXT_RGB)

    if hasattr(state, "spawn"):  # multi-army: the base (radius 2) and the armies' spawn points
        bx, by = px((W / 2, H / 2))
        d.ellipse([bx - 2 * scale, by - 2 * scale, bx + 2 * scale, by + 2 * scale],
                  outline=(120, 120, 120), width=2)
        for k, p in enumerate(np.asarray(state.spawn)):
            if abs(p[0]) < 1e5:
                sx, sy = px(p)
                d.text((sx - 3, sy - 20), f"army {k}", fill=(160, 80, 70))
    A = env.n_agents
    if actions is not None:
        acts = np.asarray(actions)
        for i in range(A):
            if not alive[i]:
                continue
            a = int(acts[i])
            if a >= N_NO_ATTACK:
                j = a - N_NO_ATTACK
                healer = bool(ut.IS_HEALER[utype[i]])
                tags = getattr(state, "tags", None)
                if tags is not None:  # multi-army: actions name units by their tag
                    t = int(np.argmax(np.asarray(tags) == j))
                else:
                    t = j if healer else A + j
                d.line([px(pos[i]), px(pos[t])], fill=(60, 170, 60) if healer else (230, 60, 40),
                       width=2)
            elif NORTH <= a <= WEST:
                end = pos[i] + 1.2 * DIRS[a - NORTH]
                d.line([px(pos[i]), px(end)], fill=TEXT_RGB, width=1)

    for i in range(len(utype)):
        if not valid[i]:  # padding slot
            continue
        name = ut.UNIT_NAMES[utype[i]]
        cx, cy = px(pos[i])
        r = max(3.0, float(ut.RADIUS[utype[i]]) * scale)
        if not alive[i]:
            d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=DEAD_RGB, width=2)
            d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=DEAD_RGB, width=2)
            continue
        colour = AGENT_RGB if i < A else ENEMY_RGB
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=TEXT_RGB)
        d.text((cx - 3, cy - 6), LETTER.get(name, "?"), fill=(255, 255, 255))
        frac = health[i] / ut.HEALTH[utype[i]]
        d.rectangle([cx - r, cy + r + 1, cx - r + 2 * r * frac, cy + r + 3], fill=(60, 170, 60))
        if ut.SHIELD[utype[i]] > 0:
            sfrac = shield[i] / ut.SHIELD[utype[i]]
            d.rectangle([cx - r, cy + r + 4, cx - r + 2 * r * sfrac, cy + r + 6],
                        fill=(40, 180, 200))
        d.text((cx + r + 1, cy - r - 2), str(i if i < A else i - A), fill=colour)
    return np.asarray(img)
