"""An optimisation of plain jax.jit: which library computes the CPU matmuls, and JAX's persistent compilation cache;
tests/test_xla.py proves each library's results equal to plain jax.jit (1e-5).

On the CPU the matmuls are most of a forward, and which library computes them matters more than anything else we
control. jaxlib hands them to YNNPACK by default and also fuses neighbouring reductions (LayerNorm's mean and
variance) into those calls. `jit` asks for YNNPACK with the matmuls alone where the CPU has AVX-512, and for XLA's own
matmuls (Eigen) on x86 CPUs without it: the fastest of those measured on each kind of machine (docs/fast-path.md has
the figures). MINILM_CPU_MATMULS (one of MATMUL_LIBRARIES) overrides. oneDNN is not offered: it crashed on long
forwards and its kernels cannot be stored in the compilation cache. The choice only changes which kernels compute
the same float32 operations; embeddings stay equal to sentence-transformers' to float32 rounding (the parity tests
run with the one chosen).
"""
import functools
import os
import pathlib

import jax
import jax.numpy as jnp

MATMUL_LIBRARIES = {  # name -> XLA:CPU compiler options
    "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},  # matmuls alone
    "xla": {"xla_cpu_experimental_ynn_fusion_type": ""},  # no library: XLA's own matmul (Eigen)
    "default": {},  # as jaxlib would: YNNPACK, with neighbouring reductions fused in
}


def matmul_library(cpuinfo: str | None = None) -> str:
    """$MINILM_CPU_MATMULS if set; else "xla" on an x86 CPU without AVX-512 and "ynnpack" otherwise. cpuinfo: the
    text of /proc/cpuinfo (read when None; where it is missing, as on macOS, the CPU counts as unknown)."""
    name = os.environ.get("MINILM_CPU_MATMULS")
    if name:
        if name not in MATMUL_LIBRARIES:
            raise ValueError(f"MINILM_CPU_MATMULS={name!r} is not one of {', '.join(MATMUL_LIBRARIES)}")
        return name
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "xla" if "avx2" in flags and "avx512f" not in flags else "ynnpack"


@functools.cache
def compiler_options() -> dict | None:
    """The options of matmul_library() on the CPU backend when this jaxlib knows them (an older one rejects the
    value), else None (compile as XLA would by default)."""
    options = MATMUL_LIBRARIES[matmul_library()]
    if jax.default_backend() != "cpu" or not options:
        return None
    try:
        jax.jit(lambda x: x @ x, compiler_options=options)(jnp.ones((2, 2))).block_until_ready()
    except Exception:  # noqa: BLE001 - an unknown option or value
        return None
    return options


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
