"""ALMA's multi-army base defence (starcraft.md part A) on the pure-JAX simulator:
`multiarmy_jax`.

The agents hold the map centre while two or three scripted enemy armies take turns to
attack-move to it and retreat to their spawn points; each army is a subtask. The episode
generation, the army script, the features, masks, availability codes, rewards (global and
per army), the health boost, termination and both heuristic allocators follow the bridge's
`sc2multiarmy` env (the numpy reference), here as pure functions of fixed-shape arrays:
agents in slots [0, MA), enemies in [MA, MA + ME), padding marked invalid.

Where the game is replaced by the simulator (`envs_jax.starcraft.sim`): units of a group
spawn in a small ring around the group's point (SC2 places them itself); a retreating army
holds at its spawn point once there (SC2 units would then fire at what comes in range), an
army waiting for its first attack holds too; `empty_passive` is taken as an open 32 x 32 map.
The first episode of a run does not use the largest composition (the env has no memory of
runs); the reward normaliser is still the largest composition's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.bridge import sc2multiarmy as sc
from envs_jax.core import Environment, Observation
from envs_jax.starcraft import multiarmy_rules as J
from envs_jax.starcraft import sim
from envs_jax.starcraft import units as ut

MAP_SIZE = 32.0
CENTRE = (MAP_SIZE / 2, MAP_SIZE / 2)
N_TASKS = sc.MAX_N_ARMIES
RING = 0.6  # radius of the ring a spawned group forms around its point
SIGHT = 2 * sc.SEPARATION  # the multi-army env's sight range (A.8)
FAR_POINT = 1e6


@struct.dataclass
class ArmyState:
    units: sim.Units
    kind: jax.Array  # [E] the family's type one-hot index
    tags: jax.Array  # [E]
    army: jax.Array  # [ME]
    n_armies: jax.Array  # ()
    spawn: jax.Array  # [T, 2], absent armies far away
    order: jax.Array  # [MA] the heuristic's agent order (padding last)
    countdown: jax.Array  # [T]
    since: jax.Array  # [T]
    attacking: jax.Array  # [T]
    tasks_complete: jax.Array  # [T]
    prev_x: jax.Array  # [E]
    prev_y: jax.Array  # [E]
    t: jax.Array
    over: jax.Array


class MultiArmyJax(Environment):
    """One scenario family of ALMA's multi-army setting as a pure JAX env."""

    def __init__(self, scenario: str = "6-8sz_maxsize4_maxarmies3_symmetric", *,
                 team_sizes: tuple[int, int] | list[int] = sc.RELEASED_TEAM_SIZES,
                 episode_limit: int = sc.EPISODE_LIMIT, heuristic_alloc: bool = False,
                 heuristic_style: str = "attacking-type-unassigned-diff",
                 faithful_task_reward: bool = True, n_substeps: int = 4,
                 move_amount: float = 2.0, cooldown_jitter: bool = True):
        f = sc.make_family(scenario, tuple(team_sizes))
        self.family, self.scenario = f, scenario
        self.MA, self.ME = f.max_agents, f.max_enemies
        self.n_agents, self.n_entities = f.max_agents, f.n_entities
        self.n_tasks, self.n_actions, self.entity_dim = N_TASKS, f.n_actions, f.entity_dim
        self.episode_limit = int(episode_limit)
        self.heuristic_alloc = bool(heuristic_alloc)
        self.style = J.parse_style(heuristic_style)
        self.faithful = bool(faithful_task_reward)
        self.n_substeps, self.move_amount = int(n_substeps), float(move_amount)
        self.cooldown_jitter = bool(cooldown_jitter)
        self.bounds = (MAP_SIZE, MAP_SIZE)
        self.sim_chunk = sim.default_chunk(f.n_entities)  # battles per simulated chunk
        self.size = np.array([MAP_SIZE, MAP_SIZE], np.float32)  # for the renderer
        self.pathing = np.ones((int(MAP_SIZE), int(MAP_SIZE)), bool)

        # compositions as static tables: agents grouped in "RL" type-id order, enemies as
        # listed (they are shuffled per episode)
        names = f.type_names
        C = len(f.compositions)
        self.ally_type = np.zeros((C, self.MA), np.int32)
        self.ally_group = np.zeros((C, self.MA), np.int32)
        self.n_allies = np.zeros(C, np.int32)
        self.enemy_list = np.zeros((C, self.ME), np.int32)
        self.n_foes = np.zeros(C, np.int32)
        for c, (allies, enemies) in enumerate(f.compositions):
            groups = sorted(allies, key=lambda t: sc.UNITS[t[0]].rl_id)
            units = [(g, u) for g, (u, n) in enumerate(groups) for _ in range(n)]
            self.n_allies[c] = len(units)
            for i, (g, u) in enumerate(units):
                self.ally_type[c, i], self.ally_group[c, i] = names.index(u), g
            foes = [u for u, n in enemies for _ in range(n)]
            self.n_foes[c] = len(foes)
            self.enemy_list[c, : len(foes)] = [names.index(u) for u in foes]
        self.sim_type = np.array([ut.TYPE_ID[n.lower()] for n in names], np.int32)
        self.max_cooldown = np.array([sc.UNITS[n].max_cooldown for n in names], np.float32)
        self.is_medivac = np.array([n == sc.MEDIVAC for n in names])
        self.type_rank = np.array([sc.UNITS[n].type_id for n in names], np.float32)
        lo_hi = [sc.army_count_range(int(n)) for n in self.n_foes]
        self.armies_lo = np.array([a for a, _ in lo_hi], np.int32)
        self.armies_hi = np.array([b for _, b in lo_hi], np.int32)
        big = [u for u, n in f.largest[1] for _ in range(n)]
        bt = np.array([ut.TYPE_ID[u.lower()] for u in big])
        self.max_reward = float(len(big) * 10.0 + 200.0 + np.sum(ut.HEALTH[bt] + ut.SHIELD[bt]))
        self.reward_scale = 20.0 / self.max_reward

    # -------------------------------------------------------------------------- reset
    def reset(self, key: jax.Array, **options: Any) -> tuple[Observation, ArmyState]:
        MA, ME, T = self.MA, self.ME, N_TASKS
        ks = jax.random.split(key, 12)
        c = jax.random.randint(ks[0], (), 0, len(self.n_allies))
        n_a, n_e = jnp.asarray(self.n_allies)[c], jnp.asarray(self.n_foes)[c]
        n_armies = jax.random.randint(ks[1], (), jnp.asarray(self.armies_lo)[c],
                                      jnp.asarray(self.armies_hi)[c] + 1)
        sizes, used = [], jnp.int32(0)
        for i, k in enumerate(jax.random.split(ks[2], T)):
            rem, after = n_e - used, n_armies - i - 1
            lo = jnp.maximum(1, rem - after * sc.MAX_ARMY_SIZE)
            hi = jnp.minimum(rem - after, sc.MAX_ARMY_SIZE)
            s = jnp.where(i < n_armies, jax.random.randint(k, (), lo, hi + 1), 0)
            sizes.append(s)
            used = used + s
        sizes = jnp.stack(sizes)
        slot_e = jnp.arange(ME)
        real_e = slot_e < n_e
        # shuffle the enemy list, cut it into consecutive armies
        shuffle = jnp.argsort(jnp.where(real_e, jax.random.uniform(ks[3], (ME,)), 2.0))
        e_kind = jnp.asarray(self.enemy_list)[c][shuffle]
        ends = jnp.cumsum(sizes)
        army = jnp.sum(slot_e[:, None] >= ends[None, :], axis=1).astype(jnp.int32)
        army = jnp.minimum(army, T - 1)
        theta = jax.random.uniform(ks[4], (), maxval=2 * jnp.pi)
        k_idx = jnp.arange(T)
        angle = theta + k_idx / n_armies * 2 * jnp.pi
        spawn = jnp.stack([CENTRE[0] + sc.SEPARATION * jnp.cos(angle),
                           CENTRE[1] + sc.SEPARATION * jnp.sin(angle)], 1)
        spawn = jnp.where((k_idx < n_armies)[:, None], spawn, FAR_POINT)
        # each army a ring around its point, numbered within the army
        rank_in_army = slot_e - jnp.concatenate([jnp.zeros(1, ends.dtype), ends])[army]
        size_of = sizes[army]
        ring = jnp.where(size_of > 1, RING, 0.0)
        a_e = 2 * jnp.pi * rank_in_army / jnp.maximum(size_of, 1)
        ex = spawn[army, 0] + ring * jnp.cos(a_e)
        ey = spawn[army, 1] + ring * jnp.sin(a_e)
        # agents: one jitter offset per type group, a ring per group
        a_kind = jnp.asarray(self.ally_type)[c]
        group = jnp.asarray(self.ally_group)[c]
        slot_a = jnp.arange(MA)
        real_a = slot_a < n_a
        jitter = (jax.random.uniform(ks[5], (MA, 2)) - 0.5) * 2 * sc.JITTER  # per group
        g_count = jnp.sum((group[None, :] == slot_a[:, None]) & real_a[None, :], axis=1)
        first_of = jnp.argmax(group[None, :] == slot_a[:, None], axis=1)
        rank_g = slot_a - first_of[group]
        n_g = g_count[group]
        a_a = 2 * jnp.pi * rank_g / jnp.maximum(n_g, 1)
        r_a = jnp.where(n_g > 1, RING, 0.0)
        ax = CENTRE[0] + jitter[group, 0] + r_a * jnp.cos(a_a)
        ay = CENTRE[1] + jitter[group, 1] + r_a * jnp.sin(a_a)
        # entity order: by (type, x, y) within each side (A.3 step 6)
        a_key = jnp.where(real_a, group * 1e4 + ax * 100 + ay, jnp.inf)
        a_ord = jnp.argsort(a_key)
        ax, ay, a_kind = ax[a_ord], ay[a_ord], a_kind[a_ord]
        e_key = jnp.where(real_e, jnp.asarray(self.type_rank)[e_kind] * 1e4 + ex * 100 + ey,
                          jnp.inf)
        e_ord = jnp.argsort(e_key)
        ex, ey, e_kind, army = ex[e_ord], ey[e_ord], e_kind[e_ord], army[e_ord]
        kind = jnp.concatenate([a_kind, e_kind])
        valid = jnp.concatenate([real_a, real_e])
        x = jnp.where(valid, jnp.concatenate([ax, ex]), 0.0)
        y = jnp.where(valid, jnp.concatenate([ay, ey]), 0.0)
        utype = jnp.asarray(self.sim_type)[kind]
        team = jnp.concatenate([jnp.zeros(MA, jnp.int32), jnp.ones(ME, jnp.int32)])
        units = sim.spawn(jnp.stack([x, y], 1), utype, team, valid)
        # tags, the heuristic's order, the army script
        tags = jnp.concatenate([ME + jax.random.permutation(ks[6], MA),
                                jax.random.permutation(ks[7], ME)]).astype(jnp.int32)
        order = jnp.argsort(jnp.where(real_a, jax.random.uniform(ks[8], (MA,)), 2.0))
        first = jax.random.randint(ks[9], (T,), 0, J.MAX_SWITCH)
        countdown, since, attacking = J.army_script_reset(first, n_armies)
        state = ArmyState(
            units=units, kind=kind.astype(jnp.int32), tags=tags, army=army,
            n_armies=n_armies.astype(jnp.int32), spawn=spawn, order=order.astype(jnp.int32),
            countdown=countdown, since=since, attacking=attacking,
            tasks_complete=k_idx >= n_armies, prev_x=x, prev_y=y,
            t=jnp.zeros((), jnp.int32), over=jnp.bool_(False))
        state = self._switch(state, ks[10])
        return self.get_obs(state), state

    def _switch(self, s: ArmyState, key: jax.Array) -> ArmyState:
        u, MA = s.units, self.MA
        meds = J.medivacs_only(u.alive[MA:], u.valid[MA:],
                               jnp.asarray(self.is_medivac)[s.kind[MA:]], s.army, N_TASKS)
        new = jax.random.randint(key, (N_TASKS,), J.MIN_SWITCH + 1, J.MAX_SWITCH + 1)
        cd, since, att = J.army_switch(s.countdown, s.since, s.attacking, meds, s.n_armies,
                                       new)
        return s.replace(countdown=cd, since=since, attacking=att)

    # ---------------------------------------------------------------------- observation
    def _medivac(self, s: ArmyState) -> jax.Array:
        return jnp.asarray(self.is_medivac)[s.kind] & s.units.valid

    def _dist_avail(self, s: ArmyState) -> tuple[jax.Array, jax.Array]:
        u = s.units
        x, y = u.pos[:, 0], u.pos[:, 1]
        dist = J.distance_matrix(x, y, u.alive, u.valid)
        med = self._medivac(s)
        avail = J.avail_codes(dist, x, y, u.alive, u.valid, med, med, s.tags, s.army, self.MA,
                              self.n_actions, jnp.asarray(self.pathing), self.move_amount)
        return dist, avail

    def heuristic_of_state(self, s: ArmyState) -> jax.Array:
        """[MA, T] bool: the style's heuristic allocation of the current state (A.13)."""
        u, MA = s.units, self.MA
        return J.heuristic_allocation(
            self.style, s.order, s.kind[:MA], u.alive[:MA], u.valid[:MA], s.kind[MA:],
            u.alive[MA:], u.valid[MA:], s.army, s.n_armies, s.tasks_complete, s.attacking,
            n_types=len(self.family.type_names), n_tasks=N_TASKS)

    def get_obs(self, s: ArmyState) -> Observation:
        u, MA = s.units, self.MA
        dist, avail = self._dist_avail(s)
        x, y = u.pos[:, 0], u.pos[:, 1]
        f = self.family
        ent = J.entity_features(
            x, y, u.alive, u.valid, s.kind, u.health, jnp.asarray(ut.HEALTH)[u.utype],
            u.shield, jnp.asarray(ut.SHIELD)[u.utype], u.energy,
            jnp.asarray(ut.ENERGY_MAX)[u.utype], u.cooldown,
            jnp.asarray(self.max_cooldown)[s.kind], s.tags, avail, s.attacking, s.since,
            s.army, MA, f.type_bits, f.shields, (MAP_SIZE, MAP_SIZE), (MAP_SIZE, MAP_SIZE),
            (s.prev_x, s.prev_y), self.move_amount)
        alloc = self.heuristic_of_state(s) if self.heuristic_alloc else None
        return Observation(
            entities=ent, avail_actions=avail, obs_mask=J.obs_mask(dist, u.valid, SIGHT),
            entity_mask=J.entity_mask(u.alive, u.valid),
            entity2task_mask=J.entity2task_mask(MA, s.army, u.valid[MA:], N_TASKS, alloc,
                                                u.valid[:MA]),
            task_mask=s.tasks_complete)

    def heuristic_allocation(self, obs: Observation) -> jax.Array:
        """The heuristic allocation the env wrote into the agents' subtask rows (needs
        `heuristic_alloc=True`, which `alg=heuristic` sets)."""
        return ~obs.entity2task_mask[: self.MA]

    # --------------------------------------------------------------------------- step
    def _commands(self, s: ArmyState, actions: jax.Array, avail: jax.Array) -> sim.Commands:
        u, MA, ME = s.units, self.MA, self.ME
        a = jnp.asarray(actions, jnp.int32)
        ok = (a >= 0) & (a < self.n_actions)
        ok = ok & (jnp.take_along_axis(avail, jnp.clip(a, 0, self.n_actions - 1)[:, None],
                                       1)[:, 0] >= 1)
        a = jnp.where(ok, a, 0)  # an unavailable action is skipped, as the reference env
        move = (a >= 2) & (a <= 5)
        dirs = jnp.asarray([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
        d = dirs[jnp.clip(a - 2, 0, 3)]
        tag = a - J.N_NO_ATTACK
        slot = jnp.argmax(s.tags[None, :] == tag[:, None], axis=1).astype(jnp.int32)
        attack = a >= J.N_NO_ATTACK
        kind = jnp.where(move, sim.MOVE, jnp.where(attack, sim.ATTACK, sim.HOLD))
        point = u.pos[:MA] + self.move_amount * d
        # enemies: attacking armies attack-move to the centre, the others go (or stay) home
        e_att = s.attacking[s.army]
        e_kind = jnp.where(e_att, sim.ATTACK_MOVE, sim.MOVE)
        e_point = jnp.where(e_att[:, None], jnp.asarray(CENTRE), s.spawn[s.army])
        return sim.Commands(kind=jnp.concatenate([kind, e_kind]).astype(jnp.int32),
                            target=jnp.concatenate([slot, jnp.zeros(ME, jnp.int32)]),
                            point=jnp.concatenate([point, e_point]))

    def step_env(self, key: jax.Array, state: ArmyState, actions: jax.Array):
        k_sim, k_switch = jax.random.split(key)
        _, avail = self._dist_avail(state)
        noise = (sim.cooldown_noise(k_sim, self.n_substeps, self.n_entities)
                 if self.cooldown_jitter else None)
        after = sim.advance(state.units, self._commands(state, actions, avail),
                            self.n_substeps, self.bounds, noise)
        return self._finish(state, after, k_switch)

    def step_batch(self, keys: jax.Array, state: ArmyState, actions: jax.Array,
                   avail=None):
        """`jax.vmap(step_env)` with the sub-steps on battle-axis-last arrays (per-battle
        unit tables, `sim.batched_tables`), in chunks of `sim_chunk` battles. A given `avail`
        is not used: the commands take `_dist_avail`'s, computed here as `step_env` does."""
        del avail
        split = jax.vmap(jax.random.split)(keys)
        k_sim, k_switch = split[:, 0], split[:, 1]
        avail = jax.vmap(lambda s: self._dist_avail(s)[1])(state)
        cmd = jax.vmap(self._commands)(state, actions, avail)
        noise = (jax.vmap(lambda k: sim.cooldown_noise(k, self.n_substeps, self.n_entities))(
            k_sim) if self.cooldown_jitter else None)
        # unit types change per episode: one unit table per battle (tb=None)
        after = sim.advance_batch(state.units, cmd, self.n_substeps, self.bounds, noise, None,
                                  self.sim_chunk)
        return jax.vmap(self._finish)(state, after, k_switch)

    def _finish(self, state: ArmyState, after: sim.Units, k_switch: jax.Array):
        """Rewards, boost, termination, the army script and the observation of a step."""
        s, MA = state, self.MA
        before = s.units
        after = jax.tree.map(lambda n, o: jnp.where(s.over, o, n), after, before)
        t = s.t + 1
        med = self._medivac(s)
        # rewards (A.6): damage to enemies not counted dead before, kills, win
        e = slice(MA, None)
        dmg, died = J.health_deltas(before.health[e] + before.shield[e], after.health[e],
                                    after.health[e] + after.shield[e], ~before.alive[e],
                                    before.valid[e])
        a_sl = slice(0, MA)
        a_dmg, a_died = J.health_deltas(before.health[a_sl] + before.shield[a_sl],
                                        after.health[a_sl],
                                        after.health[a_sl] + after.shield[a_sl],
                                        ~before.alive[a_sl], before.valid[a_sl])
        reward = J.battle_reward(dmg, died, a_dmg, a_died)
        task_r = J.army_damage_rewards(dmg, died, s.army, before.valid[e], N_TASKS,
                                       faithful=self.faithful)
        x, y = after.pos[:, 0], after.pos[:, 1]
        codes = J.task_end_codes(x[e], y[e], after.alive[e], after.valid[e], med[e], s.army,
                                 s.n_armies, CENTRE, N_TASKS)
        end = J.game_end_code(after.alive[a_sl], after.valid[a_sl], med[a_sl], after.alive[e],
                              after.valid[e], med[e], self.family.has_medivac)
        # health boost (A.7) for agents near an army defeated this step
        n_a, n_e = jnp.sum(before.valid[a_sl]), jnp.sum(before.valid[e])
        heal = J.boost_recipients(x[a_sl], y[a_sl], after.alive[a_sl], after.valid[a_sl],
                                  codes, s.tasks_complete, s.spawn) & (n_e > n_a)
        frac = J.boost_fraction(n_a, n_e, s.n_armies)
        h_max = jnp.asarray(ut.HEALTH)[after.utype[a_sl]]
        s_max = jnp.asarray(ut.SHIELD)[after.utype[a_sl]]
        health = after.health.at[a_sl].set(jnp.where(
            heal, jnp.minimum(after.health[a_sl] + h_max * frac, h_max), after.health[a_sl]))
        shield = after.shield.at[a_sl].set(jnp.where(
            heal & self.family.shields,
            jnp.minimum(after.shield[a_sl] + s_max * frac, s_max), after.shield[a_sl]))
        after = after.replace(health=health, shield=shield)
        k_idx = jnp.arange(N_TASKS)
        exists = k_idx < s.n_armies
        defeated, infiltrated = exists & (codes == 1), exists & (codes == -1)
        complete = codes != 0
        changed = jnp.any(complete != s.tasks_complete)
        task_r = jnp.where(exists, (task_r + defeated * 200.0) * self.reward_scale, 0.0)
        allies_defeated = end == -1
        end = jnp.where(jnp.any(infiltrated), -1, end)
        finished = end != 2
        won = end == 1
        timeout = ~finished & (t >= self.episode_limit)
        reward = (reward + jnp.where(won, 200.0, 0.0)) * self.reward_scale
        reward = jnp.where(s.over, 0.0, reward).astype(jnp.float32)
        done = finished | timeout
        new = s.replace(units=after, tasks_complete=complete, prev_x=before.pos[:, 0],
                        prev_y=before.pos[:, 1], t=t, over=s.over | done)
        new = self._switch(new, k_switch)
        n_exist = jnp.maximum(s.n_armies, 1).astype(jnp.float32)
        info = {
            "battle_won": won & ~s.over,
            "task_rewards": jnp.where(s.over, 0.0, task_r).astype(jnp.float32),
            "tasks_terminated": complete,
            "tasks_changed": changed & ~s.over,
            "perc_armies_defeated": jnp.sum(defeated) / n_exist,
            "allies_defeated": allies_defeated,
            "base_infiltrated": jnp.any(infiltrated),
            "episode_limit": jnp.bool_(False),  # a time-out is a plain termination (A.5)
            "truncated": timeout,
        }
        return self.get_obs(new), new, reward, done, info

    def __repr__(self) -> str:
        return f"MultiArmyJax(scenario={self.scenario!r})"
