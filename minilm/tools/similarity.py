"""Similarity and search over embeddings, with sentence-transformers' conventions (cosine, dot, euclidean,
manhattan; higher = more similar)."""
import numpy as np

SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")  # a folder's similarity_fn_name, embed.py's choices


def similarity(a_ND: np.ndarray, b_MD: np.ndarray, fn: str = "cosine", pairs: bool = False) -> np.ndarray:
    """[N, M] scores of every a against every b, higher = more similar, with sentence-transformers' conventions:
    cosine; dot (the raw inner product); euclidean and manhattan as negated L2 and L1 distances. pairs=True: the
    [N] scores of the pairs (a_i, b_i) instead, in float64 (evaluation ranks them: Spearman)."""
    if fn not in SIMILARITY_FNS:
        raise ValueError(f"similarity function {fn!r} is not one of {', '.join(SIMILARITY_FNS)}")
    a_ND, b_MD = (np.asarray(x, np.float64 if pairs else np.float32) for x in (a_ND, b_MD))
    if fn == "cosine":  # as model.l2_normalize: x / max(|x|, 1e-12)
        a_ND, b_MD = (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12) for x in (a_ND, b_MD))
    if fn in ("cosine", "dot"):
        return (a_ND * b_MD).sum(-1) if pairs else a_ND @ b_MD.T
    diff = a_ND - b_MD if pairs else a_ND[:, None] - b_MD[None]
    return 0.0 - (np.sqrt(np.square(diff).sum(-1)) if fn == "euclidean" else np.abs(diff).sum(-1))  # 0.0 -: no -0.0


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
