"""Similarity functions with sentence-transformers' conventions (1e-5 against its own functions), taken from the
model folder's similarity_fn_name, overridable, and used by embed.py."""
import json

import numpy as np
import pytest

import embed as cli
from minilm import load, save, SentenceModel
from minilm.tools.similarity import search, similarity
from tests.conftest import need
from tests.tiny import TEXTS, tiny_model


def test_each_function_equals_sentence_transformers():
    st = need("sentence_transformers")
    torch = need("torch")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32)
    theirs = {"cosine": st.util.cos_sim, "dot": st.util.dot_score, "euclidean": st.util.euclidean_sim,
              "manhattan": st.util.manhattan_sim}
    for fn, f in theirs.items():
        expected = f(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(similarity(a, b, fn), expected, rtol=1e-5, atol=1e-5, err_msg=fn)
        hits = search(a, b, 2, fn)
        assert [[j for j, _ in h] for h in hits] == np.argsort(-expected, axis=1, kind="stable")[:, :2].tolist()
    with pytest.raises(ValueError, match="not one of cosine, dot, euclidean, manhattan"):
        similarity(a, b, "jaccard")


def test_folder_similarity_fn_is_read_saved_and_used(tmp_path, capsys):
    st = need("sentence_transformers")
    model = tiny_model(tmp_path)
    model.similarity_fn = "dot"
    save(model, tmp_path / "m")
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert theirs.similarity_fn_name == "dot"
    theirs.similarity_fn_name = "manhattan"
    theirs.save(str(tmp_path / "saved-by-st"))
    assert load(tmp_path / "saved-by-st").similarity_fn == "manhattan"
    ours = SentenceModel.load(tmp_path / "saved-by-st")
    emb = ours.encode(TEXTS[:3])
    np.testing.assert_allclose(ours.similarity(emb, emb), theirs.similarity(emb, emb).numpy(), rtol=1e-5, atol=1e-5)
    assert cli.main(["--model", str(tmp_path / "saved-by-st"), "--similarity", "--quiet", *TEXTS[:2]]) == 0
    printed = capsys.readouterr().out.splitlines()[2:]
    np.testing.assert_allclose([[float(x) for x in row.split()] for row in printed],
                               similarity(emb[:2], emb[:2], "manhattan"), atol=1e-4)
    assert cli.main(["--model", str(tmp_path / "saved-by-st"), "--similarity", "--similarity-fn", "cosine",
                     "--quiet", *TEXTS[:2]]) == 0
    printed = capsys.readouterr().out.splitlines()[2:]
    assert abs(float(printed[0].split()[0]) - 1.0) < 1e-4  # a text's cosine with itself
    (tmp_path / "saved-by-st" / "config_sentence_transformers.json").write_text(
        json.dumps({"similarity_fn_name": "jaccard"}))
    with pytest.raises(ValueError, match="config_sentence_transformers.json: similarity_fn_name 'jaccard'"):
        load(tmp_path / "saved-by-st")


def test_repr_is_a_summary_not_the_weights(tmp_path):
    """repr(SentenceModel) used to print every weight (420,622 characters for all-MiniLM-L6-v2)."""
    from minilm.st.folder import save
    from minilm.tools.sentence_model import SentenceModel
    from tests.tiny import tiny_model
    save(tiny_model(tmp_path), tmp_path / "tiny")
    text = repr(SentenceModel.load(tmp_path / "tiny"))
    assert text == ("SentenceModel(Model(2 layers x 32, 4 heads, max_length 24, mean pooling, normalized, dim 32, "
                    "cosine))"), text
