"""`precision=bf16`: bf16 contractions with fp32 accumulation, fp32 everywhere else.

Each learner's loss and gradients on a fixed batch are computed at both precisions: bf16 must
agree with fp32 to bf16's resolution (a relative error of a few 1e-3 per product, summed over
small contractions) and must differ from it at all (the option is not silently ignored).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_aql as taql
import test_lica as tlica
import test_qmix_learner as tq

from alma_jax.config import ConfigError, load_config
from alma_jax.cpuinfo import read_cpuinfo
from alma_jax.learners.aql import AQLLearner
from alma_jax.learners.lica import LicaLearner
from alma_jax.learners.qmix import QMixConfig, QMixLearner
from alma_jax.nn import precision
from alma_jax.nn.agent import EntityAttentionAgent

# Stated tolerances of bf16 against fp32 on these batches: the loss to 1% (relative), the
# gradient's direction to a cosine of 0.999 and its norm to 2% (measured on the 2-core EPYC,
# 2026-12-04: at most 0.4%, 1 - 2e-5 and 0.9%).
LOSS_RTOL, GRAD_COS, NORM_RTOL = 1e-2, 0.999, 2e-2


def flat_tree(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def assert_close_not_equal(loss32, loss16, g32, g16):
    g32, g16 = flat_tree(g32), flat_tree(g16)
    assert abs(float(loss16) - float(loss32)) <= LOSS_RTOL * abs(float(loss32))
    cos = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
    assert cos >= GRAD_COS, cos
    assert abs(np.linalg.norm(g16) / np.linalg.norm(g32) - 1.0) <= NORM_RTOL
    assert np.max(np.abs(g16 - g32)) > 0.0  # bf16 really ran


def test_contractions_round_inputs_and_accumulate_in_fp32():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(6, 40)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    rounded = [np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)
               for a in (x, w)]
    with precision.matmul_precision("bf16"):
        y = precision.dot(jnp.asarray(x), jnp.asarray(w))
        e = precision.einsum("ik,kj->ij", jnp.asarray(x), jnp.asarray(w))
    assert y.dtype == jnp.float32 and e.dtype == jnp.float32
    want = rounded[0] @ rounded[1]  # bf16 products are exact in fp32; only the sum rounds
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(e), want, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(want - x.astype(np.float64) @ w)) > 1e-3  # the inputs were rounded
    # outside the block nothing is rounded
    np.testing.assert_array_equal(np.asarray(precision.dot(jnp.asarray(x), jnp.asarray(w))),
                                  np.asarray(jnp.dot(x, w)))


def test_fp32_modules_are_not_wrapped_and_names_are_checked():
    agent = EntityAttentionAgent(2, 3)
    assert precision.at_precision(agent, "fp32") is agent
    assert isinstance(precision.at_precision(agent, "bf16"), precision.AtPrecision)
    assert precision.at_precision(agent, "bf16").n_actions == 3
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\]"):
        precision.at_precision(agent, "fp16")
    with pytest.raises(ValueError, match="precision"):
        QMixConfig(n_agents=2, n_actions=3, n_tasks=1, precision="half")
    with pytest.raises(ConfigError, match=r"precision='fp16' is not allowed.*'bf16'"):
        load_config(["precision=fp16"])
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(["alg=refil", "+refil.precision=bf16"])
    assert load_config(["precision=bf16"]).precision == "bf16"


@pytest.mark.parametrize("mode", [pytest.param("flat", marks=pytest.mark.slow), "mask"])
def test_qmix_bf16_loss_and_gradients_match_fp32(mode):
    w = tq.make_window()
    cond = None if mode == "flat" else "mask"
    learners = {p: QMixLearner(QMixConfig(subtask_cond=cond, precision=p, **tq.SIZES))
                for p in precision.PRECISIONS}
    state = tq.make_state(learners["fp32"], w)
    out = {p: jax.jit(L.loss_and_grads)(state, w) for p, L in learners.items()}
    (g32, o32), (g16, o16) = out["fp32"], out["bf16"]
    assert_close_not_equal(o32.loss, o16.loss, g32, g16)
    # targets, Pop-Art statistics and the updated parameters and optimiser stay fp32
    new, _ = jax.jit(learners["bf16"].update)(state, w)
    for leaf in jax.tree.leaves((new.params, new.opt_state, new.stats, o16.y)):
        assert leaf.dtype in (jnp.float32, jnp.int32, jnp.bool_), leaf.dtype


def test_aql_bf16_losses_and_gradients_match_fp32():
    _, _, _, _, meta = taql.setup()
    state = taql.target_state()
    _, _, props, _ = taql.targets_fn()(state, meta, jax.random.key(8))
    res = {}
    for p in precision.PRECISIONS:
        L = AQLLearner(dataclasses.replace(taql.CFG, precision=p))
        weight = jnp.asarray(meta.exists, jnp.float32)
        y = jnp.linspace(-1.0, 1.0, weight.shape[0])
        perm = jnp.arange(taql.CFG.n_tasks)
        q = jax.jit(jax.value_and_grad(L.critic_loss))(state.critic, meta, y, weight, perm)
        (pl, _), pg = jax.jit(jax.value_and_grad(L.policy_loss, has_aux=True))(
            state.pi, meta, props)
        res[p] = (q, (pl, pg))
    for i in range(2):
        (l32, g32), (l16, g16) = res["fp32"][i], res["bf16"][i]
        assert_close_not_equal(l32, l16, g32, g16)


def test_lica_bf16_losses_and_gradients_match_fp32():
    w = tlica.mask_window()
    base = tlica.mask()
    params, target = base.state.params, base.state.target_critic
    res = {}
    for p in precision.PRECISIONS:
        L = LicaLearner(dataclasses.replace(tlica.MASK_CFG, precision=p))

        def losses(agent, critic, L=L):
            b = L.prepare(w)
            y = L.critic_targets(target, w, b)
            lc, gc = jax.value_and_grad(lambda c: L.critic_loss(c, y, b)[0])(critic)
            la, ga = jax.value_and_grad(lambda a: L.actor_loss(a, critic, b,
                                                               jax.random.key(0))[0])(agent)
            return (lc, gc), (la, ga)

        res[p] = jax.jit(losses)(params["agent"], params["critic"])
    for i in range(2):
        (l32, g32), (l16, g16) = res["fp32"][i], res["bf16"][i]
        assert_close_not_equal(l32, l16, g32, g16)


def test_bf16_note_only_for_cpus_without_bf16_instructions(tmp_path):
    """The AVX2-only EPYC of 2026-12-05 is warned; AVX512-BF16, AMX and GPUs are not."""
    avx2 = {"sse2", "avx", "avx2", "fma"}
    note = precision.bf16_speed_note("cpu", avx2)
    assert note is not None and "precision=fp32" in note and "avx512_bf16" in note
    assert precision.bf16_speed_note("cpu", avx2 | {"avx512f", "avx512_bf16"}) is None
    assert precision.bf16_speed_note("cpu", avx2 | {"amx_tile", "amx_bf16"}) is None
    assert precision.bf16_speed_note("gpu", avx2) is None
    assert precision.bf16_speed_note("cpu", None) is None  # flags unknown: say nothing
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert read_cpuinfo(str(info)) == ("AMD EPYC", {"fpu", "avx2", "fma"})
    assert read_cpuinfo(str(tmp_path / "absent")) == (None, None)
    arm = tmp_path / "cpuinfo_arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    model, flags = read_cpuinfo(str(arm))
    assert model is None and precision.bf16_speed_note("cpu", flags) is None
