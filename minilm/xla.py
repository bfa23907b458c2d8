"""How the jitted functions are compiled: XLA:CPU options and JAX's persistent compilation cache.

XLA:CPU hands matmuls to the YNNPACK library. By default it also fuses neighbouring reductions (LayerNorm's mean
and variance) into those library calls, which on this model's shapes runs slower than XLA's own loops: a 6-layer
forward of 4,096 packed tokens took 560-600 ms with the default and 500-510 ms with matmuls alone handed over
(2-core Xeon, jax 0.10.2; `benchmarks/embed_bench.py` shows the end-to-end effect). `jit` below asks for the
latter on the CPU. The option only changes which kernels compute the same float32 operations; embeddings stay
equal to sentence-transformers' to float32 rounding (the parity tests run with it).
"""
import functools
import os
import pathlib

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict | None:
    """CPU_OPTIONS on the CPU backend when this jaxlib knows them (an older one rejects the value), else None."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x @ x, compiler_options=CPU_OPTIONS)(jnp.ones((2, 2))).block_until_ready()
    except Exception:  # noqa: BLE001 - an unknown option or value: compile as XLA would by default
        return None
    return CPU_OPTIONS


def jit(fun=None, **jit_kwargs):
    """jax.jit with `compiler_options()`. The options depend on the backend, which is known only once JAX has
    started, so the jax.jit object is made at the first call (a module may decorate at import time)."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)

    @functools.cache
    def jitted():
        return jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return jitted()(*args, **kwargs)

    call.jitted = jitted
    return call


def enable_compilation_cache(path: str | None = None) -> str | None:
    """JAX's persistent compilation cache, so that a second process loads its compiled forwards from disk instead
    of compiling them again. Folder: `path`, else $MINILM_COMPILE_CACHE, else ~/.cache/minilm/jax; the variable
    set to 0 turns it off. Returns the folder used (None: off)."""
    path = path or os.environ.get("MINILM_COMPILE_CACHE", str(pathlib.Path.home() / ".cache" / "minilm" / "jax"))
    if path in ("0", ""):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # our compiles take 0.1-1 s: keep all
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
