"""StarCraft II unit data for the pure-JAX simulator (Legacy of the Void, no upgrades).

Sources: the game's data as extracted in BurnySc2/sc2-techtree (`data/data_readable.json`,
about patch 5.0; times in *Normal*-speed seconds, 16 game loops each), cross-checked with
Liquipedia's LotV unit pages (which quote *Faster* speed: 22.4 loops per real second, so
Faster = Normal / 1.4 for durations and x 1.4 for speeds), and SMAC's own tables
(oxwhirl/smac `starcraft2.py`: `unit_max_cooldown`, the cooldown feature's normaliser in
loops). A SMAC step is `STEP_LOOPS` = 8 game loops. Not confirmed by a stored source, taken
from Liquipedia as remembered: the Medivac's heal rate (9 hp per Normal second) and energy
regeneration (0.5625 per Normal second), and the Baneling's 16 (+19 vs light).

Columns (one row per type, in `UNIT_NAMES` order): health, shield, armour; damage per
attack, attacks per volley, bonus damage and the attribute it applies to; weapon cooldown
(Normal s), weapon range, sight range, speed (per Normal s), radius; whether the unit flies,
whether its weapon hits ground / air. Shields regenerate 2 per Normal second after 10 Normal
seconds (160 loops) without damage.

Simplifications (listed in the README too): splash as a disc around the target (`SPLASH`;
a Baneling does not die when it attacks), no spells
beyond the Medivac's heal, no upgrades, no Zealot charge or Stalker blink, no collisions
between units, no terrain or pathing, and the agents' units never fire unless ordered to
(SMAC's ally units are `Passive`, like ALMA's "RL" units).
"""

from __future__ import annotations

import numpy as np

LOOPS_PER_SECOND = 16.0  # per Normal-speed game second (22.4 per real second at Faster)
STEP_LOOPS = 8  # SMAC's step_mul

UNIT_NAMES = ("marine", "marauder", "medivac", "zealot", "stalker", "colossus", "zergling",
              "hydralisk", "baneling")
LIGHT, ARMOURED, BIOLOGICAL, MECHANICAL = 1, 2, 4, 8  # attribute bits

#            hp   sh  arm  dmg n  bonus attr      cd     rng  sight spd    rad   fly gnd air
_ROWS = {
    "marine": (45, 0, 0, 6, 1, 0, 0, 0.861, 5.0, 9.0, 2.25, 0.375, 0, 1, 1),
    "marauder": (125, 0, 1, 10, 1, 10, ARMOURED, 1.5, 6.0, 10.0, 2.25, 0.5625, 0, 1, 0),
    "medivac": (150, 0, 1, 0, 0, 0, 0, 1.0, 4.0, 11.0, 2.5, 0.75, 1, 0, 0),
    "zealot": (100, 50, 1, 8, 2, 0, 0, 1.2, 0.1, 9.0, 2.25, 0.5, 0, 1, 0),
    "stalker": (80, 80, 1, 13, 1, 5, ARMOURED, 1.87, 6.0, 10.0, 2.9531, 0.625, 0, 1, 1),
    "colossus": (200, 150, 1, 10, 2, 5, LIGHT, 1.5, 7.0, 10.0, 2.25, 1.0, 0, 1, 0),
    "zergling": (35, 0, 0, 5, 1, 0, 0, 0.696, 0.1, 8.0, 2.9531, 0.375, 0, 1, 0),
    "hydralisk": (90, 0, 0, 12, 1, 0, 0, 0.825, 5.0, 9.0, 2.25, 0.625, 0, 1, 1),
    "baneling": (30, 0, 0, 16, 1, 19, LIGHT, 1.0, 0.25, 8.0, 2.5, 0.375, 0, 1, 0),
}
_ATTRS = {
    "marine": LIGHT | BIOLOGICAL, "marauder": ARMOURED | BIOLOGICAL,
    "medivac": ARMOURED | MECHANICAL, "zealot": LIGHT | BIOLOGICAL,
    "stalker": ARMOURED | MECHANICAL, "colossus": ARMOURED | MECHANICAL,
    "zergling": LIGHT | BIOLOGICAL, "hydralisk": LIGHT | BIOLOGICAL,
    "baneling": BIOLOGICAL,
}
SMAC_MAX_COOLDOWN = {"marine": 15, "marauder": 25, "medivac": 200, "zealot": 22,
                     "stalker": 35, "colossus": 24, "zergling": 11, "hydralisk": 10,
                     "baneling": 1}
HEAL_RATE = {"medivac": 9.0}  # hp per Normal second; one energy per 3 hp
HEAL_HP_PER_ENERGY = 3.0
ENERGY = {"medivac": (200.0, 50.0)}  # (max, start)
ENERGY_REGEN = 0.5625  # per Normal second
SHIELD_REGEN = 2.0  # per Normal second, after SHIELD_DELAY Normal seconds without damage
SHIELD_DELAY = 10.0
MIN_DAMAGE = 0.5  # armour never reduces an attack below this
# Area damage: every opponent the weapon can hit within this distance of the target's centre
# takes the full attack. The Colossus's lances sweep a line about 2.8 long across the target
# (approximated by a disc); the Baneling's explosion has radius 2.2 (it does not die here).
SPLASH = {"colossus": 1.0, "baneling": 2.2}


def _column(i: int) -> np.ndarray:
    return np.array([_ROWS[n][i] for n in UNIT_NAMES], np.float32)


HEALTH, SHIELD, ARMOUR, DAMAGE, ATTACKS, BONUS = (_column(i) for i in range(6))
BONUS_ATTR = np.array([_ROWS[n][6] for n in UNIT_NAMES], np.int32)
COOLDOWN_LOOPS = _column(7) * LOOPS_PER_SECOND
RANGE, SIGHT = _column(8), _column(9)
SPEED_PER_LOOP = _column(10) / LOOPS_PER_SECOND
RADIUS = _column(11)
FLYING = _column(12).astype(bool)
HITS_GROUND, HITS_AIR = _column(13).astype(bool), _column(14).astype(bool)
ATTRS = np.array([_ATTRS[n] for n in UNIT_NAMES], np.int32)
HEAL_PER_LOOP = np.array([HEAL_RATE.get(n, 0.0) for n in UNIT_NAMES], np.float32) / \
    LOOPS_PER_SECOND
IS_HEALER = HEAL_PER_LOOP > 0
ENERGY_MAX = np.array([ENERGY.get(n, (0.0, 0.0))[0] for n in UNIT_NAMES], np.float32)
ENERGY_START = np.array([ENERGY.get(n, (0.0, 0.0))[1] for n in UNIT_NAMES], np.float32)
SPLASH_RADIUS = np.array([SPLASH.get(n, 0.0) for n in UNIT_NAMES], np.float32)
MAX_COOLDOWN_FEATURE = np.array([SMAC_MAX_COOLDOWN[n] for n in UNIT_NAMES], np.float32)

TYPE_ID = {n: i for i, n in enumerate(UNIT_NAMES)}


def unit_table() -> list[dict]:
    """The table as rows of plain values (for the README and for people)."""
    out = []
    for i, n in enumerate(UNIT_NAMES):
        out.append({
            "unit": n, "health": float(HEALTH[i]), "shield": float(SHIELD[i]),
            "armour": float(ARMOUR[i]), "damage": float(DAMAGE[i]),
            "attacks": int(ATTACKS[i]), "bonus": float(BONUS[i]),
            "bonus_vs": {0: "-", LIGHT: "light", ARMOURED: "armoured"}[int(BONUS_ATTR[i])],
            "cooldown_loops": float(COOLDOWN_LOOPS[i]), "range": float(RANGE[i]),
            "sight": float(SIGHT[i]), "speed_faster": float(_column(10)[i] * 1.4),
            "radius": float(RADIUS[i]), "flying": bool(FLYING[i]),
        })
    return out
