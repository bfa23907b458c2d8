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


def test_train_and_distill_through_dense_modules(tmp_path):
    """train.py trains the Dense weights with the encoder (the loss goes through them) and saves them; distill.py
    learns a Dense teacher's embedding (the targets go through its Dense modules); sentence-transformers loads both
    results with our embeddings (1e-5)."""
    st = need("sentence_transformers")
    torch = need("torch")
    import distill
    import train
    from minilm.st.folder import load as load_folder
    from tests.tiny import train_folder, distill_folder
    from sentence_transformers import models
    train_folder(tmp_path)
    distill_folder(tmp_path)
    torch.manual_seed(1)
    modules = [models.Transformer(str(tmp_path / "model")), models.Pooling(32, "mean"),
               models.Dense(32, 16, activation_function=torch.nn.Tanh()), models.Normalize()]
    st.SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "dense"))
    before = load_folder(tmp_path / "dense")
    assert train.main(["--model", str(tmp_path / "dense"), "--data", str(tmp_path / "pairs.jsonl"), "--batch-size", "8",
                       "--max-length", "16", "--steps", "2", "--lr", "1e-2", "--warmup", "1",
                       "--out", str(tmp_path / "t")]) == 0
    trained = load_folder(tmp_path / "t" / "step-0000002")
    assert trained.dim == 16 and np.abs(trained.dense[0]["weight"] - before.dense[0]["weight"]).max() > 1e-3
    np.testing.assert_allclose(embed(TEXTS, trained), st.SentenceTransformer(
        str(tmp_path / "t" / "step-0000002"), device="cpu").encode(TEXTS), atol=1e-5)
    assert distill.main(["--teacher", str(tmp_path / "dense"), "--data", str(tmp_path / "text.txt.gz"),
                         "--student-hidden-size", "16", "--student-heads", "2", "--student-num-layers", "1",
                         "--relations", "none", "--embedding-loss", "cosine", "--batch-size", "8", "--max-length",
                         "16", "--steps", "2", "--out", str(tmp_path / "d")]) == 0
    student = load_folder(tmp_path / "d" / "step-0000002")
    assert student.dim == 16 and not student.dense  # PCA of the teacher's 16-dim embeddings: no projection needed
