"""Quantized embeddings bit for bit against sentence-transformers' quantize_embeddings, and binary search against a
per-pair loop."""
import numpy as np
import pytest

from minilm.tools.quantize import binary_search, calibration_ranges, hamming_distance, PRECISIONS, quantize
from tests.conftest import need


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    x[:, 3] = 0.25  # a constant dimension: step 1, as sentence-transformers
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_equal_to_sentence_transformers_bit_for_bit(embeddings, precision):
    st = need("sentence_transformers")
    quantize_embeddings = st.quantize_embeddings
    calibration, x = embeddings[:40], embeddings[40:] * 1.5  # some values beyond the calibration ranges: clipped
    ours = quantize(x, precision, calibration_ranges(calibration))
    theirs = quantize_embeddings(x, precision, calibration_embeddings=calibration)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours, theirs)
    self_calibrated = quantize_embeddings(embeddings, precision)
    assert np.array_equal(quantize(embeddings, precision), self_calibrated)


def test_binary_search_ranks_by_hamming_then_rescores(embeddings):
    corpus, queries = embeddings[:40], embeddings[40:43]
    packed = quantize(corpus, "binary")
    bits = corpus > 0
    for q, hits in enumerate(binary_search(queries, packed, top_k=4)):
        distances = [int(np.sum(bits[j] != (queries[q] > 0))) for j in range(40)]
        assert [j for j, _ in hits] == sorted(range(40), key=lambda j: distances[j])[:4]
        assert [s for _, s in hits] == [-distances[j] for j, _ in hits]
    for q, hits in enumerate(binary_search(queries, quantize(corpus, "ubinary"), top_k=3, rescore_multiplier=4)):
        distances = [int(np.sum(bits[j] != (queries[q] > 0))) for j in range(40)]
        candidates = sorted(range(40), key=lambda j: distances[j])[:12]
        scores = {j: float(queries[q] @ bits[j]) for j in candidates}
        best = sorted(candidates, key=lambda j: -scores[j])[:3]
        assert [j for j, _ in hits] == best
        np.testing.assert_allclose([s for _, s in hits], [scores[j] for j in best], rtol=1e-6)
    assert hamming_distance(packed[:1], packed[:1])[0, 0] == 0


def test_bad_ranges_and_precision_are_named():
    with pytest.raises(ValueError, match="not one of float32, int8"):
        quantize(np.zeros((2, 4)), "int4")
    with pytest.raises(ValueError, match=r"expected \(2, 4\)"):
        quantize(np.zeros((2, 4)), "int8", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least two calibration embeddings"):
        quantize(np.zeros((1, 4)), "uint8")
