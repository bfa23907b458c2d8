"""minilm/xla.py: jit compiles with the XLA:CPU options (matmuls alone handed to YNNPACK, reductions left to XLA),
and gives the same values as plain jax.jit."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm import xla
from minilm.model import layer_norm


def ffn_block(x_TD, w_FD, v_DF):  # the matmul -> GELU -> matmul -> LayerNorm shape of a transformer layer
    h_TD = jax.nn.gelu(x_TD @ w_FD.T, approximate=False) @ v_DF.T
    return layer_norm({"weight": jnp.ones(x_TD.shape[-1]), "bias": jnp.zeros(x_TD.shape[-1])}, x_TD + h_TD, 1e-12)


def library_fusions(hlo: str) -> dict[str, str]:
    """{fused computation name: its body} for every fusion the compiled HLO hands to YNNPACK."""
    bodies = dict(re.findall(r"^(%[\w.-]+) .*?\{\n(.*?)\n\}", hlo, re.S | re.M))
    return {name: bodies.get(name, "") for name in re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", hlo)}


def test_jit_hands_only_matmuls_to_the_library():
    rng = np.random.default_rng(0)
    x, w, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((256, 64), (128, 64), (64, 128)))
    ours = xla.jit(ffn_block)
    np.testing.assert_allclose(ours(x, w, v), jax.jit(ffn_block)(x, w, v), rtol=0, atol=1e-5)
    if xla.compiler_options() is None:
        pytest.skip(f"this jaxlib ({jax.__version__}) does not know {xla.CPU_OPTIONS}")
    fusions = library_fusions(ours.jitted().lower(x, w, v).compile().as_text())
    assert fusions, "expected the matmuls in YNNPACK fusions"
    assert not [name for name, body in fusions.items() if " reduce(" in body], fusions
