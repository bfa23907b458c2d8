"""The real all-MiniLM-L6-v2 through `embed.py`, and through the book's plain path alone, against
sentence-transformers, on the unique sentences of the STS-b dev set (../shared/data/stsb/stsb-en-dev.csv).

Tolerance: max absolute difference per component <= 1e-5 between our normalized embeddings (JAX, float32, CPU)
and sentence-transformers' (torch, float32, CPU).
"""
import csv
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, need


def unique_sentences(path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    sentences = list(dict.fromkeys(s for row in rows for s in row[:2]))
    assert not any("\n" in s or "\r" in s for s in sentences)  # one sentence per line in the input file
    return sentences


def test_embed_py_equals_sentence_transformers_on_stsb_dev(real_model_dir, stsb_dir, tmp_path):
    st = need("sentence_transformers")
    sentences = unique_sentences(stsb_dir / "stsb-en-dev.csv")
    assert len(sentences) > 2500
    (tmp_path / "in.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "embed.py"), "--model", str(real_model_dir),
                           "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "x.npy")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ours = np.load(tmp_path / "x.npy")
    theirs = st.SentenceTransformer(str(real_model_dir), device="cpu").encode(sentences, batch_size=64)
    assert ours.shape == theirs.shape == (len(sentences), 384) and ours.dtype == np.float32
    diff = np.abs(ours - theirs).max()
    print(f"{len(sentences)} sentences, max |ours - sentence-transformers| = {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.book
def test_the_books_plain_path_equals_sentence_transformers(real_model_dir, stsb_dir):
    """The plain path with the book's objects alone, as docs/encoder.md shows it: config.json, the weights and
    tokenizer.json each read by its chapter, then model.embed(texts, params, cfg, tokenizer), on 256 STS-b dev
    sentences."""
    st = need("sentence_transformers")
    from minilm.checkpoint import load_params
    from minilm.config import Config
    from minilm.model import embed
    from minilm.tokenizer import Tokenizer
    sentences = unique_sentences(stsb_dir / "stsb-en-dev.csv")[:256]
    cfg = Config.from_json(real_model_dir / "config.json")
    params = load_params(real_model_dir, cfg)
    tokenizer = Tokenizer.from_file(real_model_dir / "tokenizer.json", max_length=256)
    ours = embed(sentences, params, cfg, tokenizer)
    theirs = st.SentenceTransformer(str(real_model_dir), device="cpu").encode(sentences, batch_size=64)
    diff = np.abs(ours - theirs).max()
    print(f"{len(sentences)} sentences, max |model.embed - sentence-transformers| = {diff:.2e}")
    assert ours.shape == (256, 384) and diff <= 1e-5
