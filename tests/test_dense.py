"""Dense modules (a linear layer and its activation after the pooling, as sentence-transformers adds them to change
an embedding's width): a folder sentence-transformers saves loads here with its embeddings (1e-5, plain and fast
path), and the folder we save loads there alike."""
import json

import numpy as np
import pytest

from minilm import embed, load, save
from tests.conftest import need
from tests.tiny import TEXTS, tiny_model


def test_dense_folders_both_ways(tmp_path):
    st = need("sentence_transformers")
    torch = need("torch")
    from sentence_transformers import models
    save(tiny_model(tmp_path, seed=6), tmp_path / "bert")
    torch.manual_seed(0)
    modules = [models.Transformer(str(tmp_path / "bert")), models.Pooling(32, "mean"),
               models.Dense(32, 16, activation_function=torch.nn.Tanh()),
               models.Dense(16, 8, bias=False, activation_function=torch.nn.Identity()), models.Normalize()]
    theirs = st.SentenceTransformer(modules=modules, device="cpu")
    theirs.save(str(tmp_path / "theirs"))
    expected = theirs.encode(TEXTS)
    ours = load(tmp_path / "theirs")
    assert ours.dim == 8 and len(ours.dense) == 2 and "bias" not in ours.dense[1]
    for fast in (False, True):
        np.testing.assert_allclose(embed(TEXTS, ours, fast=fast), expected, atol=1e-5)
    save(ours, tmp_path / "ours")
    again = st.SentenceTransformer(str(tmp_path / "ours"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(again, expected, atol=1e-5)
    config = tmp_path / "theirs" / "2_Dense" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "activation_function": "my.Swish"}))
    with pytest.raises(ValueError, match="activation_function 'my.Swish' is not supported; minilm implements Tanh"):
        load(tmp_path / "theirs")
