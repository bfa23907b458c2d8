"""Quantized embeddings: 4x smaller (int8, uint8) or 32x smaller (binary, ubinary), with the semantics of
sentence-transformers' `quantize_embeddings`, and search over binary vectors by Hamming distance with float
rescoring (docs/quantization.md).

    int8 / uint8: each dimension d is cut into 255 equal steps between its minimum and maximum over calibration
        embeddings (ranges [2, D]: row 0 the minima, row 1 the maxima); q = clip(floor((x - min_d) / step_d), 0, 255),
        minus 128 for int8. A dimension with min = max gets step 1.
    binary / ubinary: one bit per dimension, 1 where x > 0, packed 8 to a byte (numpy.packbits, first dimension
        in the highest bit); binary stores each byte minus 128 as int8, ubinary as uint8.
"""
import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(calibration_ND: np.ndarray) -> np.ndarray:
    """[2, D]: each dimension's minimum and maximum over the calibration embeddings (at least two)."""
    calibration_ND = np.asarray(calibration_ND, np.float32)
    if calibration_ND.ndim != 2 or len(calibration_ND) < 2:
        raise ValueError(f"int8 ranges need at least two calibration embeddings [N, D], got shape "
                         f"{calibration_ND.shape}")
    return np.vstack((calibration_ND.min(axis=0), calibration_ND.max(axis=0)))


def quantize(emb_ND: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Float embeddings [N, D] -> [N, D] int8/uint8 or [N, ceil(D / 8)] packed bits. int8 and uint8 take `ranges`
    (calibration_ranges of representative embeddings); without them the embeddings calibrate themselves."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    emb_ND = np.asarray(emb_ND, np.float32)
    if precision == "float32":
        return emb_ND
    if precision in ("int8", "uint8"):
        ranges = calibration_ranges(emb_ND) if ranges is None else np.asarray(ranges, np.float32)
        if ranges.shape != (2, emb_ND.shape[-1]):
            raise ValueError(f"ranges of shape {ranges.shape}; expected (2, {emb_ND.shape[-1]}): minima, maxima")
        steps_D = (ranges[1] - ranges[0]) / 255
        steps_D = np.where(steps_D == 0, 1, steps_D)
        q_ND = np.clip(np.floor((emb_ND - ranges[0]) / steps_D), 0, 255)
        return q_ND.astype(np.uint8) if precision == "uint8" else (q_ND - 128).astype(np.int8)
    bits_NB = np.packbits(emb_ND > 0, axis=-1)
    return bits_NB if precision == "ubinary" else (bits_NB.astype(np.int16) - 128).astype(np.int8)


def unsigned_bits(packed_NB: np.ndarray) -> np.ndarray:
    """binary (int8, byte - 128) or ubinary (uint8) packed bits -> uint8 bytes."""
    packed_NB = np.asarray(packed_NB)
    return (packed_NB.astype(np.int16) + 128).astype(np.uint8) if packed_NB.dtype == np.int8 else packed_NB


POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int32)


def hamming_distance(a_QB: np.ndarray, b_NB: np.ndarray) -> np.ndarray:
    """[Q, N]: the number of differing bits between packed vectors (binary or ubinary)."""
    a_QB, b_NB = unsigned_bits(a_QB), unsigned_bits(b_NB)
    return POPCOUNT[a_QB[:, None, :] ^ b_NB[None, :, :]].sum(-1)


def binary_search(query_QD: np.ndarray, corpus_NB: np.ndarray, top_k: int = 5,
                  rescore_multiplier: int = 0) -> list[list[tuple[int, float]]]:
    """The top_k corpus rows for each float query over packed-bit corpus embeddings: the query's bits ranked by
    Hamming distance (score = -distance, ties by corpus order). With rescore_multiplier m > 0, the top m * top_k by
    Hamming distance are rescored by float query . unpacked corpus bits (0/1) and the best top_k kept, as
    sentence-transformers' semantic_search_faiss rescores."""
    query_QD = np.asarray(query_QD, np.float32)
    D = query_QD.shape[-1]
    distance_QN = hamming_distance(quantize(query_QD, "ubinary"), corpus_NB)
    k = min(top_k * max(rescore_multiplier, 1), distance_QN.shape[1])
    best_QK = np.argsort(distance_QN, axis=1, kind="stable")[:, :k]
    results = []
    for q, rows in enumerate(best_QK):
        if rescore_multiplier > 0:
            bits_KD = np.unpackbits(unsigned_bits(corpus_NB)[rows], axis=-1)[:, :D].astype(np.float32)
            scores = bits_KD @ query_QD[q]
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append([(int(rows[i]), float(scores[i])) for i in order])
        else:
            results.append([(int(j), -float(distance_QN[q, j])) for j in rows[:top_k]])
    return results


def sign_cosine(score: float, query_D: np.ndarray) -> float:
    """A rescored score (float query . 0/1 bits, binary_search) as the cosine between the query and the document's
    sign vector (the bits as +1/-1): q . (2b - 1) / (|q| sqrt(D)) = (2 score - sum q) / (|q| sqrt(D)). The same order
    for one query, on the scale of the float search's cosines (embed.py --rescore prints it)."""
    q = np.asarray(query_D, np.float64)
    return float((2 * score - q.sum()) / (np.linalg.norm(q) * np.sqrt(q.size)))
