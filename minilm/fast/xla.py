"""An optimisation of plain jax.jit: which library computes the CPU matmuls, and JAX's persistent compilation cache;
tests/test_xla.py proves each library's results equal to plain jax.jit (1e-5).

On the CPU the matmuls are most of a forward, and which library computes them matters more than anything else we
control. jaxlib hands them to YNNPACK by default and also fuses neighbouring reductions (LayerNorm's mean and
variance) into those calls. Which is fastest depends on the CPU, and no rule from its feature flags held on every
machine measured (docs/fast-path.md), so `jit` measures: the first time on a machine, each library runs the
encoder's matmul shapes for about a second, the fastest is stored beside the compilation cache (matmul-library.json,
keyed by CPU model, core count and jax version) and later processes read it. MINILM_CPU_MATMULS (one of
MATMUL_LIBRARIES) overrides; deleting the file measures again. oneDNN is not offered: it crashed on long
forwards and its kernels cannot be stored in the compilation cache. The choice only changes which kernels compute
the same float32 operations; embeddings stay equal to sentence-transformers' to float32 rounding (the parity tests
run with the one chosen).
"""
import functools
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

MATMUL_LIBRARIES = {  # name -> XLA:CPU compiler options
    "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},  # matmuls alone
    "xla": {"xla_cpu_experimental_ynn_fusion_type": ""},  # no library: XLA's own matmul (Eigen)
    "default": {},  # as jaxlib would: YNNPACK, with neighbouring reductions fused in
}


CHOICE_FILE = "matmul-library.json"


def machine() -> dict:
    """What the measured choice depends on: the CPU model, the cores, the jax version."""
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__}


def measure_libraries(tokens: int = 2048, hidden: int = 384, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of each library (that this jaxlib accepts) on the encoder's feed-forward matmuls, [tokens, hidden] x
    [hidden, 4 hidden] -> GELU -> x [4 hidden, hidden]: the best of `repeats` rounds, the libraries taking turns
    within each round so that a busy moment does not fall on one of them alone."""
    key1, key2 = jax.random.split(jax.random.key(0))
    x = jnp.ones((tokens, hidden), jnp.float32)
    w1, w2 = jax.random.normal(key1, (4 * hidden, hidden)), jax.random.normal(key2, (hidden, 4 * hidden))
    flops = 2 * 2 * tokens * hidden * 4 * hidden
    compiled = {}
    for name, options in MATMUL_LIBRARIES.items():
        try:
            f = jax.jit(lambda a, b, c: jax.nn.gelu(a @ b.T) @ c.T, compiler_options=options or None)
            f(x, w1, w2).block_until_ready()  # compile and warm up
            compiled[name] = f
        except Exception:  # noqa: BLE001 - an option this jaxlib does not know
            continue
    best = dict.fromkeys(compiled, float("inf"))
    for _ in range(repeats):
        for name, f in compiled.items():
            start = time.perf_counter()
            f(x, w1, w2).block_until_ready()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: flops / seconds / 1e9 for name, seconds in best.items()}


def matmul_library() -> str:
    """$MINILM_CPU_MATMULS if set; else the choice stored beside the compilation cache for this machine; else
    measure (measure_libraries), store and return the fastest."""
    name = os.environ.get("MINILM_CPU_MATMULS")
    if name:
        if name not in MATMUL_LIBRARIES:
            raise ValueError(f"MINILM_CPU_MATMULS={name!r} is not one of {', '.join(MATMUL_LIBRARIES)}")
        return name
    folder = cache_dir()
    file = pathlib.Path(folder) / CHOICE_FILE if folder else None
    here = machine()
    if file and file.is_file():
        try:
            stored = json.loads(file.read_text())
            if stored.get("machine") == here and stored.get("library") in MATMUL_LIBRARIES:
                return stored["library"]
        except (OSError, ValueError):
            pass  # unreadable: measure again and rewrite it
    rates = measure_libraries()
    choice = max(rates, key=rates.get) if rates else "default"
    if file:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"machine": here, "library": choice,
                                       "gflops": {k: round(v, 1) for k, v in rates.items()}}, indent=1) + "\n")
            tmp.replace(file)
        except OSError:
            pass  # a read-only home: measure again next time
    return choice


@functools.cache
def compiler_options() -> dict | None:
    """The options of matmul_library() on the CPU backend when this jaxlib knows them (an older one rejects the
    value), else None (compile as XLA would by default)."""
    if jax.default_backend() != "cpu":
        return None
    options = MATMUL_LIBRARIES[matmul_library()]
    if not options:
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


def cache_dir() -> str | None:
    """$MINILM_COMPILE_CACHE, else ~/.cache/minilm/jax; None when the variable is 0 (no cache)."""
    path = os.environ.get("MINILM_COMPILE_CACHE", str(pathlib.Path.home() / ".cache" / "minilm" / "jax"))
    return None if path in ("0", "") else path


def enable_compilation_cache(path: str | None = None) -> str | None:
    """JAX's persistent compilation cache, so that a second process loads its compiled forwards from disk instead
    of compiling them again. Folder: `path`, else cache_dir(). Returns the folder used (None: off)."""
    path = path or cache_dir()
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # our compiles take 0.1-1 s: keep all
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
