"""Similarity and search over embeddings, with sentence-transformers' conventions (cosine, dot, euclidean,
manhattan; higher = more similar)."""
import jax.numpy as jnp
import numpy as np

from minilm.model import l2_normalize
from minilm.st.folder import SIMILARITY_FNS


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
