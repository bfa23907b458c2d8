"""An optimisation of plain jax.jit: which library computes the CPU matmuls, and JAX's persistent compilation cache;
tests/test_xla.py proves each library's results equal to plain jax.jit (1e-5).

On the CPU the matmuls are most of a forward, and which library computes them matters more than anything else we
control. jaxlib hands them to YNNPACK by default and also fuses neighbouring reductions (LayerNorm's mean and
variance) into those calls. Which is fastest depends on the CPU, and no rule from its feature flags held on every
machine measured (docs/fast-path.md), so it is measured: each library runs a whole encoder layer at a short and a
long row length (some seconds in all), the fastest is stored beside the compilation cache (matmul-library.json, keyed
by CPU model, core count and jax version) and later processes read it. Measuring happens when asked, never in the
middle of an embedding call: train.py and distill.py measure at their start if nothing is stored (a run of minutes
or hours; the seconds pay), `embed.py --measure-cpu` measures now; until then jaxlib's own choice ("default")
is used, so that a first `embed.py "one sentence"` takes seconds, not the measurement's dozen more.
MINILM_CPU_MATMULS (one of MATMUL_LIBRARIES) overrides. oneDNN is not offered: it
crashed on long forwards and its kernels cannot be stored in the compilation cache. The choice only changes which
kernels compute the same float32 operations; embeddings stay equal to sentence-transformers' to float32 rounding
(the parity tests run with the one chosen).
"""
import functools
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp

MATMUL_LIBRARIES = {  # name -> XLA:CPU compiler options
    "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},  # matmuls alone
    "xla": {"xla_cpu_experimental_ynn_fusion_type": ""},  # no library: XLA's own matmul (Eigen)
    "default": {},  # as jaxlib would: YNNPACK, with neighbouring reductions fused in
}


CHOICE_FILE = "matmul-library.json"
# How measure_libraries measures; a choice stored with another description (an older version's) is measured again.
MEASURE = "one encoder layer (scaled queries, softmax divided after V), packed rows of 128 and 256 tokens"


def machine() -> dict:
    """What the measured choice depends on: the CPU model, the cores, the jax version."""
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__}


def measure_libraries(lengths: tuple[int, ...] = (128, 256), tokens: int = 4096, hidden: int = 384,
                      repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of each library (that this jaxlib accepts) on one whole encoder layer (model.layer: Q, K, V, the
    masked attention, the output projection, both LayerNorms and the feed-forward), of the fast path's shape: packed
    rows of each of `lengths` tokens, `tokens` per forward, hidden//32 heads. Whole layers at a short and a long
    length, because a library that wins on the feed-forward alone can lose on the attention and its fusions
    (docs/fast-path.md). The rate is the layer's FLOPs at all lengths over the summed best time of `repeats` rounds;
    the libraries take turns within each round so that a busy moment does not fall on one of them alone."""
    from minilm import model  # here: model.py does not need this module, and importing xla stays cheap
    from minilm.batch import same_text
    from minilm.checkpoint import init_params
    from minilm.config import Config

    cfg = Config(vocab_size=8, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=max(1, hidden // 32),
                 intermediate_size=4 * hidden, max_position_embeddings=max(lengths))
    p = init_params(cfg, jax.random.key(0))["encoder"]["layer"][0]
    inputs, flops = [], 0
    for T in lengths:
        rows = max(1, tokens // T)
        x = jax.random.normal(jax.random.key(T), (rows, T, hidden))
        segments = jnp.broadcast_to((jnp.arange(T) >= T // 3).astype(jnp.int32) + 1, (rows, T))  # two texts a row
        inputs.append((x, segments))
        flops += rows * T * 2 * (4 * hidden * hidden + 2 * hidden * cfg.intermediate_size) + rows * 4 * T * T * hidden
    # The mask is built inside, from the segments, as in the fast path's forward: what a library does with it (a
    # fusion that needs it written out at [rows, heads, T, T]) is part of what is measured.
    layer = lambda x, segments: model.layer(p, x, model.attention_bias(same_text(segments)), cfg)
    compiled = {}
    for name, options in MATMUL_LIBRARIES.items():
        try:
            f = jax.jit(layer, compiler_options=options or None)
            for x, segments in inputs:
                f(x, segments).block_until_ready()  # compile and warm up
            compiled[name] = f
        except Exception:  # noqa: BLE001 - an option this jaxlib does not know
            continue
    best = {name: [float("inf")] * len(inputs) for name in compiled}
    for _ in range(repeats):
        for name, f in compiled.items():
            for i, (x, segments) in enumerate(inputs):
                start = time.perf_counter()
                f(x, segments).block_until_ready()
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return {name: flops / sum(seconds) / 1e9 for name, seconds in best.items()}


def matmul_library(measure: bool = False, again: bool = False) -> str:
    """$MINILM_CPU_MATMULS if set; else the choice stored beside the compilation cache for this machine (unless
    `again`); else, with `measure`, measure (measure_libraries, some seconds), store and return the fastest, and
    without it jaxlib's own "default". With the cache turned off (MINILM_COMPILE_CACHE=0) nothing could be stored,
    so nothing is measured."""
    name = os.environ.get("MINILM_CPU_MATMULS")
    if name:
        if name not in MATMUL_LIBRARIES:
            raise ValueError(f"MINILM_CPU_MATMULS={name!r} is not one of {', '.join(MATMUL_LIBRARIES)}")
        return name
    folder = cache_dir()
    if folder is None:
        return "default"
    file = pathlib.Path(folder) / CHOICE_FILE
    here = machine()
    stored = None if again else stored_choice(file, here)
    if stored or not measure:
        return stored or "default"
    print(f"minilm: timing the CPU matmul libraries on this machine, once (the choice goes to {file})",
          file=sys.stderr, flush=True)
    rates = measure_libraries()
    choice = max(rates, key=rates.get) if rates else "default"
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"machine": here, "measure": MEASURE, "library": choice,
                                   "gflops": {k: round(v, 1) for k, v in rates.items()}}, indent=1) + "\n")
        tmp.replace(file)
    except OSError:
        pass  # a read-only home: measure again next time
    return choice


def measure_once(again: bool = False) -> str:
    """Measure the libraries if this machine has no stored choice, or `again` (embed.py --measure-cpu); train.py and
    distill.py call this at their start, before compiling anything, so that this process and later ones use the
    fastest. Returns the library."""
    if jax.default_backend() != "cpu":
        return "default"
    name = matmul_library(measure=True, again=again)
    compiler_options.cache_clear()
    return name


def stored_choice(file: pathlib.Path, here: dict) -> str | None:
    """The library stored in `file` for this machine and this way of measuring; None if absent, unreadable (it is
    measured again and rewritten) or made elsewhere."""
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    ok = stored.get("machine") == here and stored.get("measure") == MEASURE
    return stored.get("library") if ok and stored.get("library") in MATMUL_LIBRARIES else None


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
