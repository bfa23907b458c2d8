"""minilm/fast/xla.py: the CPU matmul library chosen by measurement, stored and reused (MINILM_CPU_MATMULS
overrides), each library giving the same values as plain jax.jit, and the compiled HLO holding what the option
says."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm.fast import xla
from minilm.model import layer_norm



def ffn_block(x_TD, w_FD, v_DF):  # the matmul -> GELU -> matmul -> LayerNorm shape of a transformer layer
    h_TD = jax.nn.gelu(x_TD @ w_FD.T, approximate=False) @ v_DF.T
    return layer_norm({"weight": jnp.ones(x_TD.shape[-1]), "bias": jnp.zeros(x_TD.shape[-1])}, x_TD + h_TD, 1e-12)


def library_fusions(hlo: str) -> dict[str, str]:
    """{fused computation name: its body} for every fusion the compiled HLO hands to YNNPACK."""
    bodies = dict(re.findall(r"^(%[\w.-]+) .*?\{\n(.*?)\n\}", hlo, re.S | re.M))
    return {name: bodies.get(name, "") for name in re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", hlo)}


def test_the_library_is_measured_when_asked_stored_and_reused_and_the_variable_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("MINILM_CPU_MATMULS", raising=False)
    monkeypatch.setenv("MINILM_COMPILE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(xla, "measure_libraries", lambda: calls.append(1) or {"ynnpack": 150.0, "xla": 180.0,
                                                                                  "default": 120.0})
    assert xla.matmul_library() == "default" and not calls  # not asked to measure: jaxlib's own, nothing stored
    assert not (tmp_path / xla.CHOICE_FILE).exists()
    assert xla.matmul_library(measure=True) == "xla" and len(calls) == 1  # measured: the fastest
    stored = json.loads((tmp_path / xla.CHOICE_FILE).read_text())
    assert stored["library"] == "xla" and stored["machine"] == xla.machine() and stored["gflops"]["xla"] == 180.0
    assert xla.matmul_library() == "xla" and len(calls) == 1  # read back, not measured again
    assert xla.matmul_library(measure=True) == "xla" and len(calls) == 1
    monkeypatch.setenv("MINILM_CPU_MATMULS", "default")
    assert xla.matmul_library() == "default" and len(calls) == 1  # the variable wins over the stored choice
    monkeypatch.setenv("MINILM_CPU_MATMULS", "onednn")
    with pytest.raises(ValueError, match="MINILM_CPU_MATMULS='onednn' is not one of ynnpack, xla, default"):
        xla.matmul_library()
    monkeypatch.delenv("MINILM_CPU_MATMULS")
    (tmp_path / xla.CHOICE_FILE).write_text(json.dumps({**stored, "machine": {**stored["machine"], "cpu": "other"}}))
    assert xla.matmul_library() == "default" and len(calls) == 1  # another machine's choice is not this one's
    assert xla.matmul_library(measure=True) == "xla" and len(calls) == 2  # measured again
    (tmp_path / xla.CHOICE_FILE).write_text(json.dumps({**stored, "measure": "feed-forward matmuls"}))
    assert xla.matmul_library(measure=True) == "xla" and len(calls) == 3  # measured another way (older): again
    monkeypatch.setenv("MINILM_COMPILE_CACHE", "0")
    assert xla.matmul_library(measure=True) == "default" and len(calls) == 3  # no cache folder: not measured


def test_embedding_never_measures_and_a_run_measures_once(monkeypatch, tmp_path, capsys):
    """A first `embed.py "one sentence"` must not spend seconds measuring (issue: the first run in seconds); a
    training run measures before compiling, once per machine."""
    from minilm.fast import embedding as fast
    from tests.tiny import tiny_model
    monkeypatch.delenv("MINILM_CPU_MATMULS", raising=False)
    monkeypatch.setenv("MINILM_COMPILE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(xla, "measure_libraries", lambda: calls.append(1) or {"xla": 2.0, "default": 1.0})
    xla.compiler_options.cache_clear()
    try:
        fast.embed(["a sentence", "another one"], tiny_model(tmp_path))
        assert not calls and not (tmp_path / xla.CHOICE_FILE).exists()
        assert xla.measure_once() == ("xla" if jax.default_backend() == "cpu" else "default")
        assert xla.measure_once() and len(calls) == (jax.default_backend() == "cpu")
    finally:
        xla.compiler_options.cache_clear()


def test_measurement_gives_a_rate_for_each_library_this_jaxlib_accepts():
    rates = xla.measure_libraries(lengths=(16, 32), tokens=64, hidden=32, repeats=2)
    assert "default" in rates and all(r > 0 for r in rates.values())


@pytest.mark.parametrize("name", ["ynnpack", "xla"])  # ("default" is plain jax.jit, the reference itself)
def test_each_library_computes_the_same_values_and_compiles_as_asked(name):
    rng = np.random.default_rng(0)
    x, w, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((256, 64), (128, 64), (64, 128)))
    options = xla.MATMUL_LIBRARIES[name]
    try:
        compiled = jax.jit(ffn_block, compiler_options=options or None).lower(x, w, v).compile()
    except Exception as e:  # noqa: BLE001 - an older jaxlib that does not know the option
        pytest.skip(f"this jaxlib ({jax.__version__}) does not know {options}: {e}")
    np.testing.assert_allclose(compiled(x, w, v), jax.jit(ffn_block)(x, w, v), rtol=0, atol=1e-5)
    fusions = library_fusions(compiled.as_text())
    if name == "ynnpack":  # the matmuls in YNNPACK, and nothing else there
        assert fusions, "expected the matmuls in YNNPACK fusions"
        assert not [n for n, body in fusions.items() if " reduce(" in body], fusions
    else:
        assert not fusions and " dot(" in compiled.as_text()


def test_jit_compiles_with_the_chosen_library():
    x = jnp.ones((64, 32))
    ours = jax.jit(lambda a: jax.nn.gelu(a @ a.T), compiler_options=xla.compiler_options())
    hlo = ours.lower(x).compile().as_text()
    options = xla.compiler_options()
    if options is None:
        pytest.skip(f"no CPU options apply here (backend {jax.default_backend()}, {xla.matmul_library()})")
    assert ("__ynn_fusion" in hlo) == (options == xla.MATMUL_LIBRARIES["ynnpack"]), hlo
