"""minilm/xla.py: the CPU matmul library chosen by the CPU's features (or MINILM_CPU_MATMULS), each library
giving the same values as plain jax.jit, and the compiled HLO holding what the option says."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm.fast import xla
from minilm.model import layer_norm

AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 fma avx avx2 f16c\n"
AVX512 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512bw\n"


def ffn_block(x_TD, w_FD, v_DF):  # the matmul -> GELU -> matmul -> LayerNorm shape of a transformer layer
    h_TD = jax.nn.gelu(x_TD @ w_FD.T, approximate=False) @ v_DF.T
    return layer_norm({"weight": jnp.ones(x_TD.shape[-1]), "bias": jnp.zeros(x_TD.shape[-1])}, x_TD + h_TD, 1e-12)


def library_fusions(hlo: str) -> dict[str, str]:
    """{fused computation name: its body} for every fusion the compiled HLO hands to YNNPACK."""
    bodies = dict(re.findall(r"^(%[\w.-]+) .*?\{\n(.*?)\n\}", hlo, re.S | re.M))
    return {name: bodies.get(name, "") for name in re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", hlo)}


def test_the_library_follows_the_cpu_and_the_variable(monkeypatch):
    monkeypatch.delenv("MINILM_CPU_MATMULS", raising=False)
    assert xla.matmul_library(AVX2) == "xla"
    assert xla.matmul_library(AVX512) == "ynnpack"
    assert xla.matmul_library("") == "ynnpack"  # unknown CPU (no /proc/cpuinfo): the library jaxlib would use
    assert xla.matmul_library("processor\t: 0\nFeatures\t: fp asimd sve\n") == "ynnpack"  # an ARM CPU
    monkeypatch.setenv("MINILM_CPU_MATMULS", "default")
    assert xla.matmul_library(AVX2) == "default"
    monkeypatch.setenv("MINILM_CPU_MATMULS", "onednn")
    with pytest.raises(ValueError, match="MINILM_CPU_MATMULS='onednn' is not one of ynnpack, xla, default"):
        xla.matmul_library(AVX2)


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
    ours = xla.jit(lambda a: jax.nn.gelu(a @ a.T))
    hlo = ours.jitted().lower(x).compile().as_text()
    options = xla.compiler_options()
    if options is None:
        pytest.skip(f"no CPU options apply here (backend {jax.default_backend()}, {xla.matmul_library()})")
    assert ("__ynn_fusion" in hlo) == (options == xla.MATMUL_LIBRARIES["ynnpack"]), hlo
