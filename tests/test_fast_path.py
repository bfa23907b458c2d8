"""The fast path (minilm/fast/) against the plain path (model.embed with the folder's head, st/heads.py): the same
embeddings for the same texts,
within 1e-6 per component, relative for unnormalised vectors (float32; only the batch shapes differ, which changes
rounding by ~2e-7). Texts of mixed
lengths, every pooling mode, with and without normalisation, the first layers and dimensions; embed.py --plain
against embed.py; and the real all-MiniLM-L6-v2 on STS-b dev sentences."""
import dataclasses

import numpy as np
import pytest

import embed as cli
from minilm import embed, load
from minilm.st import heads
from tests.tiny import tiny_model

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "man", "woman", "is", "eating", "food", "music", "plays", "!"]


def mixed_texts(n=41, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(0, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"), max_length=40, max_position_embeddings=40)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fast_embed_equals_plain_embed(tiny, pooling, normalize):
    model = dataclasses.replace(tiny, pooling=pooling)
    texts = mixed_texts()
    plain = heads.embed(texts, model, batch_size=8, normalize=normalize)
    assert plain.shape == (len(texts), 32) and plain.dtype == np.float32
    for options in ({}, {"pack": False}, {"batch_size": 3}):
        fast = embed(texts, model, normalize=normalize, **options)
        # 1e-6: unit vectors absolutely; unnormalised ones (components up to ~10 here) relatively
        np.testing.assert_allclose(fast, plain, rtol=0 if normalize else 1e-6, atol=1e-6, err_msg=str(options))
    assert np.array_equal(embed(texts, model, normalize=normalize, batch_size=8, fast=False), plain)


def test_first_layers_and_dimensions_equal(tiny):
    texts = mixed_texts(seed=1)
    plain = heads.embed(texts, tiny, num_layers=1, dim=16)
    assert plain.shape == (len(texts), 16) and np.allclose(np.linalg.norm(plain, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(embed(texts, tiny, num_layers=1, dim=16), plain, rtol=0, atol=1e-6)


def test_plain_path_is_not_the_fast_one(tiny, monkeypatch):
    """embed(fast=False) and embed.py --plain never enter the fast path's forward."""
    from minilm.fast import embedding as fast
    monkeypatch.setattr(fast, "compiled_embed_rows", None)  # calling it would fail
    embed(mixed_texts(5), tiny, fast=False)


def test_embed_py_plain_equals_default(tmp_path, tiny):
    from minilm import save
    save(tiny, tmp_path / "model")
    (tmp_path / "in.txt").write_text("\n".join(mixed_texts(30, seed=2)) + "\n", encoding="utf-8")
    for flags, out in (([], "fast.npy"), (["--plain"], "plain.npy")):
        argv = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.txt"), "--output",
                str(tmp_path / out), *flags]
        assert cli.main(argv) == 0
    np.testing.assert_allclose(np.load(tmp_path / "fast.npy"), np.load(tmp_path / "plain.npy"), rtol=0, atol=1e-6)
    assert cli.main(["--plain", "--dtype", "bfloat16", "x"]) == 1  # the plain path is the float32 reference


def test_real_model_fast_equals_plain(real_model_dir, stsb_dir):
    import csv
    with open(stsb_dir / "stsb-en-dev.csv", encoding="utf-8", newline="") as f:
        texts = [row[0] for row, _ in zip(csv.reader(f), range(96))]
    plain = heads.embed(texts, load(real_model_dir))
    fast = embed(texts, real_model_dir)
    worst = float(np.abs(fast - plain).max())
    print(f"max |fast - plain| on {len(texts)} STS-b dev sentences: {worst:.1e}")
    assert worst <= 1e-6
