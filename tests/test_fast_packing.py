"""Packing and padding plans (minilm/fast/embedding.py) and the compiled shapes of embed(): every text is placed once,
rows never overflow, packed rows give the embeddings each text gets alone (1e-6), and new texts of lengths seen
before compile nothing new (a trace counter, not a timer)."""
import numpy as np
import pytest

from minilm.batch import PACK_LENGTHS
from minilm.fast import embedding as fast
from minilm.fast.embedding import plan_packed, plan_padded
from minilm.st.folder import Model
from minilm.tokenizer import LENGTHS
from tests.tiny import tiny_model

rng = np.random.default_rng(0)
LENGTHS_MIX = [int(n) for n in rng.integers(2, 300, 500)] + [2, 2, 2, 3, 64, 65, 128, 129, 256]


@pytest.mark.parametrize("plan", [lambda L: plan_packed(L, tokens=2048), lambda L: plan_packed(L, tokens=64),
                                  lambda L: plan_padded(L, 32), lambda L: plan_padded(L, 7)])
def test_every_text_placed_once_without_overlap(plan):
    forwards = plan(LENGTHS_MIX)
    placed = np.concatenate([f.index for f in forwards])
    assert sorted(placed.tolist()) == list(range(len(LENGTHS_MIX)))
    for f in forwards:
        used = np.zeros((f.rows, f.length), int)
        for i, r, s, t in zip(f.index, f.row, f.slot, f.start):
            assert 0 <= s < f.slots and t + LENGTHS_MIX[i] <= f.length
            used[r, t:t + LENGTHS_MIX[i]] += 1
        assert used.max() == 1  # no token position holds two texts
        assert len({(r, s) for r, s in zip(f.row, f.slot)}) == len(f.index)  # one text per (row, slot)


def test_shapes_are_bounded_and_packing_wastes_little():
    packed = plan_packed(LENGTHS_MIX, tokens=4096)
    assert {f.length for f in packed} <= set(PACK_LENGTHS) | set(LENGTHS)
    assert all(f.rows & (f.rows - 1) == 0 or f.rows == 4096 // f.length for f in packed)  # full or power of two
    real = sum(LENGTHS_MIX)
    assert real / sum(f.rows * f.length for f in packed) > 0.9
    padded = plan_padded(LENGTHS_MIX, 32)
    assert {f.length for f in padded} <= set(LENGTHS) and all(f.rows in (1, 2, 4, 8, 16, 32) for f in padded)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"), max_length=40, max_position_embeddings=40)


def texts_of(lengths, seed):
    """Texts of exactly n tokens each with [CLS]/[SEP] (one tiny-vocabulary word per token)."""
    words = np.random.default_rng(seed).choice(["cat", "dog", "sat", "mat", "man", "food"], max(lengths))
    return [" ".join(words[: n - 2]) for n in lengths]


@pytest.mark.parametrize("pooling", ["mean", "cls", "mean_sqrt_len", "max"])
def test_packed_equals_each_text_alone(tiny, pooling):
    model = Model(tiny.config, tiny.params, tiny.tokenizer, pooling=pooling)
    texts = texts_of([2, 3, 5, 9, 17, 40, 33, 12, 2, 7, 25] * 3, seed=1)
    alone = np.concatenate([fast.embed([t], model, pack=False) for t in texts])
    np.testing.assert_allclose(fast.embed(texts, model, batch_size=1), alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.embed(texts, model, pack=False, batch_size=8), alone, rtol=0, atol=1e-6)


def test_new_texts_of_known_lengths_compile_nothing_new(tiny):
    lengths = [int(n) for n in rng.integers(2, 41, 300)]
    fast.TRACES.clear()
    for pack in (True, False):
        fast.embed(texts_of(lengths, seed=2), tiny, batch_size=16, pack=pack)
        shapes = dict(fast.TRACES)
        for seed in (3, 4):  # other words, the same lengths in another order: no new shape, no retrace
            fast.embed(texts_of(list(np.random.default_rng(seed).permutation(lengths)), seed), tiny,
                            batch_size=16, pack=pack)
            assert fast.TRACES == shapes
        assert all(n == 1 for n in fast.TRACES.values())  # each shape traced once
    # a shape is (rows, length, slots); a batch of 16 packed: rows of 32 tokens, and of 40 for the longest texts
    # (texts of 33-40 tokens), 16 x 128 / T rows per forward, or a power of two fewer for the last one
    assert {s for s in fast.TRACES if s[2] > 1} <= {(r, T, T // 4) for T in (32, 40)
                                                          for r in (1, 2, 4, 8, 16, 32, 2048 // T)}
    assert {s for s in fast.TRACES if s[2] == 1} <= {(r, n, 1) for r in (1, 2, 4, 8, 16) for n in LENGTHS}


def test_bfloat16_is_close_to_float32(tiny):
    texts = texts_of([2, 5, 9, 17, 40, 12], seed=5)
    full, half = fast.embed(texts, tiny), fast.embed(texts, tiny, dtype="bfloat16")
    assert half.dtype == np.float32 and np.isfinite(half).all()
    cosine = (full * half).sum(1)  # both unit length
    assert cosine.min() > 0.995 and np.abs(full - half).max() > 1e-6  # close, yet really computed in bfloat16
    with pytest.raises(ValueError, match="dtype 'float16' is not supported"):
        fast.embed(texts, tiny, dtype="float16")
