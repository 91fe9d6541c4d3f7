"""Pillow rendering of SaveTheCity states, GIF export, and a small demo CLI.

    python -m envs_jax.savethecity.render --scenario 2-5a_2-5b --seed 0 \
        --policy heuristic --out episode.gif

Map convention (spec section 1.1): x grows to the right (east), y grows upwards (north), so
cell (0, 0) is the bottom-left one. Frame layout: a header (step, reward, title, building
counts), the 16x16 map with axis labels, and a side panel with one row per building slot
(health, fire, status, allocated agents) above a legend.

On the map, buildings are squares coloured by type (fast-burn slate blue, slow-burn tan) with
their slot label `b<k>`, a health bar (green, bottom) and, when burning, an orange-red glow,
a fire bar (top) and a body tinted towards red in proportion to the fire strength. Complete
buildings get a gold frame and a check mark, burned ones are charcoal with a cross. Agents
are circles coloured by type (firefighter blue, builder teal, generalist purple) labelled
with type letter and slot (`F0`, `B3`, ...). With an allocation each agent carries a badge
with its subtask index and a line to its building, coloured per subtask. With actions (the
actions chosen *in* the drawn state) interacting agents get a ring and a spoke towards their
building (extinguish cyan, build yellow, freeze white) and movers a small arrow.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from envs_jax.savethecity import scenarios as sc
from envs_jax.savethecity.env import BUILD, EXTINGUISH, FREEZE, MOVE_DELTA, MOVE_DIST

MAP = sc.MAP_SIZE

# ----------------------------------------------------------------------------- colours
BG_RGB = (246, 244, 238)
MAP_RGB = (226, 230, 222)
GRID_RGB = (200, 205, 196)
TEXT_RGB = (30, 30, 30)
MUTED_RGB = (110, 110, 110)
BLD_RGB = {sc.FAST_BURN: (96, 125, 168), sc.SLOW_BURN: (196, 170, 120)}
BLD_NAME = {sc.FAST_BURN: "fast-burn", sc.SLOW_BURN: "slow-burn"}
AGENT_RGB = {
    sc.FIREFIGHTER: (33, 90, 222),
    sc.BUILDER: (0, 140, 125),
    sc.GENERALIST: (128, 64, 176),
}
AGENT_LETTER = {sc.FIREFIGHTER: "F", sc.BUILDER: "B", sc.GENERALIST: "G"}
AGENT_NAME = {sc.FIREFIGHTER: "firefighter", sc.BUILDER: "builder", sc.GENERALIST: "generalist"}
FIRE_RGB = (255, 64, 0)  # glow and fire bar: the "fire colour"
FIRE_BODY_RGB = (228, 48, 16)  # building body tint at full fire
HEALTH_RGB = (46, 184, 72)
BAR_BG_RGB = (52, 52, 52)
COMPLETE_RGB = (255, 200, 30)
BURNED_RGB = (48, 44, 44)
BURNED_MARK_RGB = (150, 146, 146)
ACTION_RGB = {EXTINGUISH: (0, 225, 255), BUILD: (255, 236, 0), FREEZE: (250, 250, 255)}
ACTION_NAME = {EXTINGUISH: "extinguish", BUILD: "build", FREEZE: "freeze"}
MOVE_MARK_RGB = (60, 60, 60)
UNALLOC_RGB = (150, 150, 150)
# One colour per subtask (cycled for large families); no reds or oranges (reserved for fire).
SUBTASK_RGB = (
    (230, 30, 200),  # magenta
    (120, 200, 0),  # lime
    (20, 170, 255),  # azure
    (150, 90, 30),  # brown
    (255, 120, 190),  # pink
    (90, 90, 255),  # periwinkle
    (0, 120, 70),  # dark green
    (170, 170, 0),  # olive
    (70, 70, 70),  # graphite
    (0, 190, 190),  # teal
)


def subtask_color(k: int) -> tuple[int, int, int]:
    """Colour of subtask (building slot) `k` for allocation lines and badges."""
    return SUBTASK_RGB[int(k) % len(SUBTASK_RGB)]


# ------------------------------------------------------------------------------- fonts
@functools.lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(7, int(size))
    names = ("DejaVuSans-Bold.ttf",) if bold else ("DejaVuSans.ttf",)
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _text(draw, xy, s, font, fill=TEXT_RGB, anchor="lt", stroke=0, stroke_fill=None):
    """Draw `s` aligned at `xy`; anchor = horizontal (l, m, r) + vertical (t, m, b)."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), s, font=font, stroke_width=stroke)
    w, h = x1 - x0, y1 - y0
    x, y = xy
    x -= {"l": 0, "m": w / 2, "r": w}[anchor[0]] + x0
    y -= {"t": 0, "m": h / 2, "b": h}[anchor[1]] + y0
    draw.text(
        (round(x), round(y)), s, font=font, fill=fill, stroke_width=stroke,
        stroke_fill=stroke_fill,
    )


def _lerp(a, b, w: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * w)) for x, y in zip(a, b))


# ----------------------------------------------------------------------- state access
def _state_arrays(state: Any) -> dict[str, np.ndarray]:
    """Numpy views of the fields the renderer reads; checks that `state` is ONE env."""
    names = ("agent_pos", "agent_type", "agent_valid", "bld_pos", "bld_type", "bld_valid",
             "health", "fire", "t")
    out = {n: np.asarray(jax.device_get(getattr(state, n))) for n in names}
    if out["agent_pos"].ndim != 2 or out["bld_pos"].ndim != 2:
        raise ValueError(
            "render_state draws ONE environment; got agent_pos of shape "
            f"{out['agent_pos'].shape} (index a batched state first, e.g. tree_map(x[0]))"
        )
    out["agent_valid"] = out["agent_valid"].astype(bool) & (out["agent_type"] >= 0)
    out["bld_valid"] = out["bld_valid"].astype(bool)
    return out


def allocation_to_index(allocation: Any, n_agents: int) -> np.ndarray:
    """[A, T] one-hot (any dtype) or [A] int -> [A] int subtask index, -1 = none."""
    alloc = np.asarray(jax.device_get(allocation))
    if alloc.ndim == 2:
        idx = np.where(np.any(alloc > 0, -1), np.argmax(alloc, -1), -1)
    elif alloc.ndim == 1:
        idx = alloc.astype(np.int64)
    else:
        raise ValueError(f"allocation must be [A, T] or [A], got shape {alloc.shape}")
    if idx.shape[0] != n_agents:
        raise ValueError(f"allocation has {idx.shape[0]} agent rows, state has {n_agents}")
    return idx.astype(np.int64)


def _adjacent_building(a_pos: np.ndarray, b_pos: np.ndarray, b_valid: np.ndarray) -> int:
    """Slot of the building 4-adjacent to a_pos, or -1."""
    d = np.abs(b_pos - a_pos[None]).sum(-1)
    hit = np.flatnonzero((d == 1) & b_valid)
    return int(hit[0]) if hit.size else -1


# ----------------------------------------------------------------------------- layout
class _Layout:
    def __init__(self, cell: int, n_bld_slots: int):
        c = self.c = int(cell)
        if c < 12:  # 32 (default) or more reads best; below ~20 the panel text gets cramped
            raise ValueError(f"cell must be >= 12 pixels, got {cell}")
        self.pad = max(4, c // 4)
        self.header = int(1.55 * c)
        self.ml = int(0.75 * c)  # room for y labels
        self.mb = int(0.7 * c)  # room for x labels
        self.ox, self.oy = self.ml, self.header
        self.map_px = MAP * c
        self.px = self.ox + self.map_px + int(0.5 * c)  # panel left edge
        self.pw = int(9.6 * c)
        self.row_h = int(0.8 * c)
        self.legend_row = int(0.62 * c)
        self.legend_rows = 7
        panel_h = (
            int(0.8 * c) + n_bld_slots * self.row_h + int(0.5 * c)
            + self.legend_rows * self.legend_row + self.pad
        )
        self.W = self.px + self.pw + self.pad
        self.H = self.header + max(self.map_px + self.mb, panel_h) + self.pad
        self.f_big = _font(0.56 * c, bold=True)
        self.f_mid = _font(0.40 * c, bold=True)
        self.f_lab = _font(0.36 * c, bold=True)
        self.f_small = _font(0.33 * c)
        self.f_tiny = _font(0.29 * c, bold=True)

    def cell_box(self, x: int, y: int) -> tuple[int, int, int, int]:
        c = self.c
        x0 = self.ox + int(x) * c
        y0 = self.oy + (MAP - 1 - int(y)) * c
        return x0, y0, x0 + c - 1, y0 + c - 1

    def center(self, x: int, y: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.cell_box(x, y)
        return (x0 + x1) / 2, (y0 + y1) / 2


def cell_bbox(x: int, y: int, cell: int = 32) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), inclusive, of map cell (x, y) in a `render_state` image."""
    return _Layout(cell, 0).cell_box(x, y)


def _on_map(p: np.ndarray) -> bool:
    return bool(0 <= p[0] < MAP and 0 <= p[1] < MAP)


# ------------------------------------------------------------------------ primitives
def _draw_building(draw, L: _Layout, pos, btype, health, fire, k):
    c = L.c
    x0, y0, x1, y1 = L.cell_box(*pos)
    burning = fire > 0.0
    complete = health >= 1.0
    burned = health <= 0.0
    if burning:  # glow filling the cell margin
        draw.rectangle((x0, y0, x1, y1), fill=FIRE_RGB)
    inset = max(2, c // 8)
    bx0, by0, bx1, by1 = x0 + inset, y0 + inset, x1 - inset, y1 - inset
    base = BLD_RGB.get(int(btype), (160, 160, 160))
    if burned:
        body = BURNED_RGB
    elif burning:
        body = _lerp(base, FIRE_BODY_RGB, 0.25 + 0.45 * min(float(fire), 1.0))
    else:
        body = base
    draw.rectangle((bx0, by0, bx1, by1), fill=body, outline=(20, 20, 20))
    bar_h = max(3, c // 8)
    inner_w = bx1 - bx0 - 2
    if burned:
        w = max(1, c // 14)
        draw.line((bx0 + 2, by0 + 2, bx1 - 2, by1 - 2), fill=BURNED_MARK_RGB, width=w)
        draw.line((bx0 + 2, by1 - 2, bx1 - 2, by0 + 2), fill=BURNED_MARK_RGB, width=w)
    else:
        # health bar along the bottom edge
        hy0 = by1 - bar_h
        draw.rectangle((bx0 + 1, hy0, bx1 - 1, by1 - 1), fill=BAR_BG_RGB)
        hw = int(round(inner_w * min(max(float(health), 0.0), 1.0)))
        if hw > 0:
            draw.rectangle((bx0 + 1, hy0, bx0 + hw, by1 - 1), fill=HEALTH_RGB)
    if burning:
        # fire bar along the top edge
        draw.rectangle((bx0 + 1, by0 + 1, bx1 - 1, by0 + bar_h), fill=BAR_BG_RGB)
        fw = max(1, int(round(inner_w * min(float(fire), 1.0))))
        draw.rectangle((bx0 + 1, by0 + 1, bx0 + fw, by0 + bar_h), fill=FIRE_RGB)
    if complete:
        w = max(2, c // 10)
        draw.rectangle((bx0, by0, bx1, by1), outline=COMPLETE_RGB, width=w)
    label_rgb = BURNED_MARK_RGB if burned else (255, 255, 255)
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2 - (0.04 * c if not burned else 0)
    _text(draw, (cx, cy), f"b{k}", L.f_lab, fill=label_rgb, anchor="mm", stroke=max(1, c // 20),
          stroke_fill=(0, 0, 0))


def _draw_agent(draw, L: _Layout, pos, atype, i, sub=None, action=None, adj_center=None):
    c = L.c
    cx, cy = L.center(*pos)
    r = 0.4 * c
    if action in ACTION_RGB and adj_center is not None:
        col = ACTION_RGB[action]
        ax, ay = adj_center
        d = np.hypot(ax - cx, ay - cy)
        ux, uy = (ax - cx) / d, (ay - cy) / d
        tip = 0.5 * c + max(2, c // 8) + 1  # up to the building body
        draw.line((cx + ux * r, cy + uy * r, cx + ux * tip, cy + uy * tip),
                  fill=col, width=max(3, c // 7))
        rr = r + max(2, c // 14)
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=col, outline=(40, 40, 40))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=AGENT_RGB.get(int(atype), (128,) * 3),
                 outline=(15, 15, 15), width=max(1, c // 24))
    label = f"{AGENT_LETTER.get(int(atype), '?')}{i}"
    _text(draw, (cx, cy), label, L.f_lab, fill=(255, 255, 255), anchor="mm")
    if action is not None and 1 <= action < EXTINGUISH:  # a move: arrow head(s)
        dx, dy = MOVE_DELTA[action]
        ux, uy = float(np.sign(dx)), -float(np.sign(dy))  # screen y points down
        for s in range(int(MOVE_DIST[action])):
            tip = r + 0.16 * c + s * 0.14 * c
            bx, by = cx + ux * (tip - 0.14 * c), cy + uy * (tip - 0.14 * c)
            px, py = -uy * 0.11 * c, ux * 0.11 * c
            draw.polygon(
                [(cx + ux * tip, cy + uy * tip), (bx + px, by + py), (bx - px, by - py)],
                fill=MOVE_MARK_RGB,
            )
    if sub is not None:  # subtask badge, top right
        br = 0.2 * c
        bx, by = cx + 0.34 * c, cy - 0.34 * c
        col = subtask_color(sub) if sub >= 0 else UNALLOC_RGB
        draw.ellipse((bx - br, by - br, bx + br, by + br), fill=col, outline=(255, 255, 255))
        _text(draw, (bx, by), str(sub) if sub >= 0 else "-", L.f_tiny, fill=(255, 255, 255),
              anchor="mm")


def _bar(draw, box, frac, color, text, font):
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=BAR_BG_RGB)
    w = int(round((x1 - x0) * min(max(frac, 0.0), 1.0)))
    if w > 0:
        draw.rectangle((x0, y0, x0 + w, y1), fill=color)
    _text(draw, ((x0 + x1) / 2, (y0 + y1) / 2), text, font, fill=(255, 255, 255),
          anchor="mm", stroke=1, stroke_fill=(0, 0, 0))


# ------------------------------------------------------------------------ render_state
def render_state(
    state: Any,
    allocation: Any = None,
    actions: Any = None,
    reward: Any = None,
    title: str | None = None,
    cell: int = 32,
) -> np.ndarray:
    """Draw one SaveTheCity state as an RGB image [H, W, 3] uint8.

    state: an `EnvState` of ONE env (JAX or numpy leaves). allocation: [A, B] one-hot or
    [A] int subtask index (-1 = none). actions: [A] ints chosen in this state. reward: a
    scalar shown in the header (e.g. the reward of the step that led here). The image size
    depends only on `cell` and the number of building slots, so frames of one env stack.
    """
    s = _state_arrays(state)
    A = s["agent_pos"].shape[0]
    B = s["bld_pos"].shape[0]
    L = _Layout(cell, B)
    c = L.c
    img = Image.new("RGB", (L.W, L.H), BG_RGB)
    draw = ImageDraw.Draw(img)

    a_valid = s["agent_valid"] & np.array([_on_map(p) for p in s["agent_pos"]], bool)
    b_valid = s["bld_valid"] & np.array([_on_map(p) for p in s["bld_pos"]], bool)
    health, fire = s["health"].astype(float), s["fire"].astype(float)
    sub = None if allocation is None else allocation_to_index(allocation, A)
    acts = None
    if actions is not None:
        acts = np.asarray(jax.device_get(actions)).reshape(-1).astype(np.int64)
        if acts.shape[0] != A:
            raise ValueError(f"actions has {acts.shape[0]} entries, state has {A} agents")

    # ---- header
    t = int(s["t"])
    head = f"t = {t}"
    if reward is not None:
        head += f"    reward {float(np.asarray(jax.device_get(reward))):+.3f}"
    _text(draw, (L.pad, int(0.12 * c)), head, L.f_big)
    if title:
        x1 = draw.textbbox((0, 0), head, font=L.f_big)[2]
        _text(draw, (L.pad + x1 + c, int(0.2 * c)), str(title), L.f_mid, fill=MUTED_RGB)
    n_fire = int(np.sum(b_valid & (fire > 0)))
    n_done = int(np.sum(b_valid & (health >= 1.0)))
    n_burn = int(np.sum(b_valid & (health <= 0.0)))
    n_act = int(np.sum(b_valid)) - n_done - n_burn
    summary = (
        f"{int(np.sum(a_valid))} agents, {int(np.sum(b_valid))} buildings:  "
        f"{n_fire} on fire,  {n_done} complete,  {n_burn} burned,  {n_act} active"
    )
    _text(draw, (L.pad, int(0.86 * c)), summary, L.f_small, fill=MUTED_RGB)

    # ---- map background, grid, axes
    draw.rectangle((L.ox, L.oy, L.ox + L.map_px - 1, L.oy + L.map_px - 1), fill=MAP_RGB)
    for k in range(MAP + 1):
        x = L.ox + k * c - (1 if k == MAP else 0)
        y = L.oy + k * c - (1 if k == MAP else 0)
        draw.line((x, L.oy, x, L.oy + L.map_px - 1), fill=GRID_RGB)
        draw.line((L.ox, y, L.ox + L.map_px - 1, y), fill=GRID_RGB)
    for k in range(MAP):
        if k % 3 and k != MAP - 1:
            continue
        cx, _ = L.center(k, 0)
        _text(draw, (cx, L.oy + L.map_px + 3), str(k), L.f_small, fill=MUTED_RGB, anchor="mt")
        _, cy = L.center(0, k)
        _text(draw, (L.ox - 4, cy), str(k), L.f_small, fill=MUTED_RGB, anchor="rm")

    # ---- allocation lines (under everything else)
    if sub is not None:
        w = max(2, c // 14)
        for i in np.flatnonzero(a_valid):
            b = int(sub[i])
            if 0 <= b < B and b_valid[b]:
                draw.line((*L.center(*s["agent_pos"][i]), *L.center(*s["bld_pos"][b])),
                          fill=subtask_color(b), width=w)

    # ---- buildings
    for b in np.flatnonzero(b_valid):
        _draw_building(draw, L, s["bld_pos"][b], s["bld_type"][b], health[b], fire[b], int(b))

    # ---- agents
    for i in np.flatnonzero(a_valid):
        act = None if acts is None else int(acts[i])
        adj = None
        if act in ACTION_RGB:
            nb = _adjacent_building(s["agent_pos"][i], s["bld_pos"], b_valid)
            adj = L.center(*s["bld_pos"][nb]) if nb >= 0 else None
        _draw_agent(draw, L, s["agent_pos"][i], s["agent_type"][i], int(i),
                    None if sub is None else int(sub[i]), act, adj)

    _draw_panel(draw, L, s, a_valid, b_valid, health, fire, sub, allocation is not None)
    return np.asarray(img, dtype=np.uint8)


def _draw_panel(draw, L: _Layout, s, a_valid, b_valid, health, fire, sub, show_alloc):
    c = L.c
    x, y = L.px, L.oy
    _text(draw, (x, y), "buildings", L.f_mid)
    _text(draw, (x + int(2.3 * c), y + 2), "health", L.f_small, fill=MUTED_RGB)
    _text(draw, (x + int(4.6 * c), y + 2), "fire", L.f_small, fill=MUTED_RGB)
    if show_alloc:
        _text(draw, (x + int(6.7 * c), y + 2), "agents", L.f_small, fill=MUTED_RGB)
    y += int(0.8 * c)
    bh = int(0.5 * c)
    for b in range(s["bld_pos"].shape[0]):
        if not b_valid[b]:
            continue
        yc = y + L.row_h / 2
        chip = subtask_color(b) if show_alloc else (90, 90, 90)
        draw.rounded_rectangle((x, yc - bh / 2, x + int(0.9 * c), yc + bh / 2), radius=c // 6,
                               fill=chip)
        _text(draw, (x + 0.45 * c, yc), f"b{b}", L.f_tiny, fill=(255, 255, 255), anchor="mm")
        bt = int(s["bld_type"][b])
        tx = x + int(1.05 * c)
        draw.rectangle((tx, yc - 0.18 * c, tx + 0.36 * c, yc + 0.18 * c),
                       fill=BLD_RGB.get(bt, (160,) * 3), outline=(20, 20, 20))
        _text(draw, (tx + 0.5 * c, yc), "fast" if bt == sc.FAST_BURN else "slow", L.f_tiny,
              fill=TEXT_RGB, anchor="lm")
        h, f = float(health[b]), float(fire[b])
        _bar(draw, (x + int(2.3 * c), yc - bh / 2, x + int(4.4 * c), yc + bh / 2), h,
             HEALTH_RGB, f"{h:.2f}", L.f_tiny)
        if h >= 1.0:
            _text(draw, (x + int(4.6 * c), yc), "COMPLETE", L.f_tiny, fill=(190, 140, 0),
                  anchor="lm")
        elif h <= 0.0:
            _text(draw, (x + int(4.6 * c), yc), "BURNED", L.f_tiny, fill=BURNED_RGB,
                  anchor="lm")
        else:
            _bar(draw, (x + int(4.6 * c), yc - bh / 2, x + int(6.5 * c), yc + bh / 2), f,
                 FIRE_RGB, f"{f:.2f}" if f > 0 else "-", L.f_tiny)
        if show_alloc:
            who = [f"{AGENT_LETTER.get(int(s['agent_type'][i]), '?')}{i}"
                   for i in np.flatnonzero(a_valid) if sub[i] == b]
            txt = " ".join(who) if who else "-"
            room = L.W - L.pad - (x + int(6.7 * c))
            if draw.textbbox((0, 0), txt, font=L.f_tiny)[2] > room:
                txt = f"{len(who)} agents"
            _text(draw, (x + int(6.7 * c), yc), txt, L.f_tiny,
                  fill=subtask_color(b) if who else MUTED_RGB, anchor="lm")
        y += L.row_h

    # ---- legend
    y += int(0.5 * c)
    _text(draw, (x, y), "legend", L.f_mid)
    y += int(0.7 * c)
    lr = L.legend_row
    col2 = x + int(4.8 * c)
    r = 0.22 * c

    def dot(px, py, rgb, letter):
        draw.ellipse((px - r, py - r, px + r, py + r), fill=rgb, outline=(15, 15, 15))
        _text(draw, (px, py), letter, L.f_tiny, fill=(255, 255, 255), anchor="mm")

    def square(px, py, rgb, outline=(20, 20, 20), width=1):
        draw.rectangle((px - r, py - r, px + r, py + r), fill=rgb, outline=outline, width=width)

    items_left = [(AGENT_RGB[t], AGENT_LETTER[t], AGENT_NAME[t] + " agent")
                  for t in (sc.FIREFIGHTER, sc.BUILDER, sc.GENERALIST)]
    for k, (rgb, letter, name) in enumerate(items_left):
        yc = y + k * lr
        dot(x + r, yc, rgb, letter)
        _text(draw, (x + 3 * r, yc), name, L.f_small, anchor="lm")
    yc = y + 3 * lr
    square(x + r, yc, BLD_RGB[sc.FAST_BURN])
    _text(draw, (x + 3 * r, yc), "fast-burn building", L.f_small, anchor="lm")
    yc = y + 4 * lr
    square(x + r, yc, BLD_RGB[sc.SLOW_BURN])
    _text(draw, (x + 3 * r, yc), "slow-burn building", L.f_small, anchor="lm")
    yc = y + 5 * lr
    draw.rectangle((x, yc - 0.1 * c, x + 2 * r, yc + 0.1 * c), fill=HEALTH_RGB)
    _text(draw, (x + 3 * r, yc), "health bar (bottom)", L.f_small, anchor="lm")
    yc = y + 6 * lr
    if show_alloc:
        draw.line((x, yc, x + 2 * r, yc), fill=MUTED_RGB, width=max(2, c // 14))
        _text(draw, (x + 3 * r, yc), "allocation to subtask", L.f_small, anchor="lm")

    yc = y
    square(col2 + r, yc, FIRE_BODY_RGB, outline=FIRE_RGB, width=max(2, c // 12))
    _text(draw, (col2 + 3 * r, yc), "on fire (bar = strength)", L.f_small, anchor="lm")
    yc = y + lr
    square(col2 + r, yc, BLD_RGB[sc.FAST_BURN], outline=COMPLETE_RGB, width=max(2, c // 12))
    _text(draw, (col2 + 3 * r, yc), "complete", L.f_small, anchor="lm")
    yc = y + 2 * lr
    square(col2 + r, yc, BURNED_RGB)
    draw.line((col2, yc - r, col2 + 2 * r, yc + r), fill=BURNED_MARK_RGB, width=2)
    _text(draw, (col2 + 3 * r, yc), "burned down", L.f_small, anchor="lm")
    for k, a in enumerate((EXTINGUISH, BUILD, FREEZE)):
        yc = y + (3 + k) * lr
        draw.ellipse((col2, yc - r, col2 + 2 * r, yc + r), fill=ACTION_RGB[a],
                     outline=(120, 120, 120))
        _text(draw, (col2 + 3 * r, yc), ACTION_NAME[a], L.f_small, anchor="lm")
    yc = y + 6 * lr
    draw.polygon([(col2 + 2 * r, yc), (col2 + 0.6 * r, yc - 0.7 * r),
                  (col2 + 0.6 * r, yc + 0.7 * r)], fill=MOVE_MARK_RGB)
    _text(draw, (col2 + 3 * r, yc), "move (2 heads = 2 cells)", L.f_small, anchor="lm")


# ----------------------------------------------------------------------------- GIF
def _per_frame(values, n: int, name: str) -> list:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} frames")
    return values


def save_gif(
    frames_or_states: Sequence[Any],
    path: str | Path,
    fps: float = 4,
    allocations: Sequence[Any] | None = None,
    actions: Sequence[Any] | None = None,
    rewards: Sequence[Any] | None = None,
    titles: Sequence[str | None] | None = None,
    **render_kw: Any,
) -> Path:
    """Write an animated GIF (looping) of RGB frames [H, W, 3] uint8 and/or states.

    States are drawn with `render_state(state, allocation, actions, reward, title,
    **render_kw)` using the k-th entry of the optional per-frame lists. Note that the GIF
    encoder merges consecutive identical frames (adding up their durations).
    """
    items = list(frames_or_states)
    if not items:
        raise ValueError("save_gif needs at least one frame")
    n = len(items)
    allocs = _per_frame(allocations, n, "allocations")
    acts = _per_frame(actions, n, "actions")
    rews = _per_frame(rewards, n, "rewards")
    tits = _per_frame(titles, n, "titles")
    images = []
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray | Image.Image):
            arr = np.asarray(item)
            if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
                raise ValueError(f"frame {k} has shape {arr.shape}, expected [H, W, 3]")
            arr = arr[..., :3].astype(np.uint8)
        else:
            kw = dict(render_kw)
            if tits[k] is not None:
                kw["title"] = tits[k]
            arr = render_state(item, allocation=allocs[k], actions=acts[k], reward=rews[k],
                               **kw)
        images.append(Image.fromarray(arr, "RGB"))
    if len({im.size for im in images}) != 1:
        raise ValueError(f"frames differ in size: {sorted({im.size for im in images})}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = max(20, int(round(1000.0 / fps)))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration, loop=0)
    return path


# --------------------------------------------------------------------------- rollouts
@functools.lru_cache(maxsize=8)
def _jitted(env):
    return jax.jit(env.reset), jax.jit(env.step_env)


def rollout_frames(
    env,
    key: jax.Array,
    policy_fn: Callable[[jax.Array, Any], Any],
    n_steps: int | None = None,
    allocation_fn: Callable[[Any], Any] | None = None,
    return_rewards: bool = False,
    index: int | None = None,
):
    """Run ONE episode (at most `n_steps`, default the episode limit) for rendering.

    `policy_fn(key, obs) -> [A] actions` (pass a jitted function for speed);
    `allocation_fn(obs) -> [A, T] / [A]` is recorded per frame. Uses `env.step_env` and
    stops at `done`, so the last state is the one the episode ended in (no auto-reset).
    `index` forces the scenario of the reset.

    Returns `(states, actions, allocations)`, three lists of equal length T+1 (numpy
    leaves): `actions[k]`/`allocations[k]` were chosen in `states[k]`; `actions[-1]` is
    None (no action in the final state). With `return_rewards=True` a fourth list
    `rewards` follows, `rewards[k]` being the reward of the step into `states[k]`
    (`rewards[0]` is None).
    """
    reset, step = _jitted(env)
    n_steps = env.episode_limit if n_steps is None else int(n_steps)
    key, k0 = jax.random.split(key)
    obs, state = reset(k0) if index is None else reset(k0, index)

    def alloc_of(o):
        return None if allocation_fn is None else np.asarray(jax.device_get(allocation_fn(o)))

    states, actions, allocs, rewards = [], [], [], [None]
    for _ in range(n_steps):
        key, kp, ks = jax.random.split(key, 3)
        act = policy_fn(kp, obs)
        states.append(jax.device_get(state))
        actions.append(np.asarray(jax.device_get(act)))
        allocs.append(alloc_of(obs))
        obs, state, reward, done, _ = step(ks, state, act)
        rewards.append(float(reward))
        if bool(done):
            break
    states.append(jax.device_get(state))
    actions.append(None)
    allocs.append(alloc_of(obs))
    if return_rewards:
        return states, actions, allocs, rewards
    return states, actions, allocs


# -------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> Path:
    import envs_jax
    from envs_jax.savethecity import heuristic_allocation, scripted
    from envs_jax.savethecity.policies import uniform_valid

    p = argparse.ArgumentParser(
        prog="python -m envs_jax.savethecity.render",
        description="Roll out one SaveTheCity episode and save it as an animated GIF.",
    )
    p.add_argument("--scenario", default="2-5a_2-5b")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", choices=("random", "heuristic"), default="heuristic")
    p.add_argument("--out", default="episode.gif")
    p.add_argument("--steps", type=int, default=None, help="max steps (default: episode limit)")
    p.add_argument("--index", type=int, default=None, help="force this scenario index")
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--cell", type=int, default=32, help="pixels per map cell")
    p.add_argument("--frames-dir", default=None, help="also write every frame as PNG here")
    args = p.parse_args(argv)

    env = envs_jax.make("savethecity", scenario=args.scenario)
    if args.policy == "random":
        policy = jax.jit(uniform_valid)
    else:
        policy = jax.jit(scripted.heuristic_policy)
    alloc_fn = jax.jit(heuristic_allocation) if args.policy == "heuristic" else None
    states, actions, allocs, rewards = rollout_frames(
        env, jax.random.key(args.seed), policy, args.steps, alloc_fn, return_rewards=True,
        index=args.index,
    )
    team = env.table.teams[int(states[0].scenario)]
    ret = np.cumsum([0.0] + [r for r in rewards[1:]])
    titles = [f"{args.policy} | team {team} | seed {args.seed} | return {g:+.2f}" for g in ret]
    frames = [
        render_state(st, allocation=al, actions=ac, reward=rw, title=ti, cell=args.cell)
        for st, al, ac, rw, ti in zip(states, allocs, actions, rewards, titles)
    ]
    out = save_gif(frames, args.out, fps=args.fps)
    if args.frames_dir:
        d = Path(args.frames_dir)
        d.mkdir(parents=True, exist_ok=True)
        for k, fr in enumerate(frames):
            Image.fromarray(fr).save(d / f"frame_{k:03d}.png")
    last = states[-1]
    h = np.asarray(last.health)[np.asarray(last.bld_valid)]
    print(
        f"wrote {out}: {len(frames)} frames ({len(frames) - 1} steps), team {team}, "
        f"return {ret[-1]:+.3f}, complete {int(np.sum(h >= 1.0))}/{h.size}, "
        f"burned {int(np.sum(h <= 0.0))}"
    )
    return out


if __name__ == "__main__":
    main()
