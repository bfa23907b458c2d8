"""Prompts as sentence-transformers applies them, on tiny folders it saves itself: prompt names, the default
prompt, encode_query / encode_document, and include_prompt false (pooling without the prompt's tokens) for mean,
CLS and max pooling; embeddings equal to its encode within 1e-5, on the plain and the fast path."""
import numpy as np
import pytest

import embed as cli
from minilm import embed, load, save, SentenceModel
from tests.conftest import need
from tests.tiny import TEXTS, tiny_model

TEXTS = [t for t in TEXTS if t]  # sentence-transformers' prompt_length needs text after the prompt
PROMPTS = {"query": "the man ", "document": "a cat a dog ", "music": "music "}


@pytest.fixture(scope="module", params=[("mean", True), ("mean", False), ("cls", False), ("max", False)],
                ids=["mean", "mean-without-prompt", "cls-without-prompt", "max-without-prompt"])
def folders(request, tmp_path_factory):
    """(our folder as sentence-transformers saved it, its SentenceTransformer)."""
    st = need("sentence_transformers")
    pooling, include_prompt = request.param
    tmp = tmp_path_factory.mktemp("prompts")
    model = tiny_model(tmp, seed=5)
    model.pooling = pooling
    save(model, tmp / "ours")
    theirs = st.SentenceTransformer(str(tmp / "ours"), device="cpu", prompts=PROMPTS, default_prompt_name="music")
    theirs[1].include_prompt = include_prompt
    theirs.save(str(tmp / "theirs"))
    return tmp / "theirs", st.SentenceTransformer(str(tmp / "theirs"), device="cpu")


def test_prompts_equal_sentence_transformers(folders):
    folder, theirs = folders
    model = load(folder)
    assert model.prompts == PROMPTS and model.default_prompt_name == "music"
    assert model.include_prompt == theirs[1].include_prompt
    cases = {"default prompt": ({}, theirs.encode(TEXTS)),
             "prompt name": ({"prompt_name": "query"}, theirs.encode(TEXTS, prompt_name="query")),
             "prompt text": ({"prompt": "woman "}, theirs.encode(TEXTS, prompt="woman "))}
    for name, (options, expected) in cases.items():
        for fast in (False, True):
            np.testing.assert_allclose(embed(TEXTS, model, fast=fast, **options), expected, atol=1e-5,
                                       err_msg=f"{name}, fast={fast}")
    ours = SentenceModel(model)
    np.testing.assert_allclose(ours.encode_query(TEXTS), theirs.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(ours.encode_document(TEXTS), theirs.encode_document(TEXTS), atol=1e-5)
    if not model.include_prompt:  # leaving the prompt out of the pooling changes the vector
        with_prompt = embed(TEXTS, model.__class__(**{**model.__dict__, "include_prompt": True}), prompt_name="query")
        assert np.abs(with_prompt - embed(TEXTS, model, prompt_name="query")).max() > 1e-3
    with pytest.raises(ValueError, match="prompt name 'passage' is not one of the model's prompts"):
        embed(TEXTS, model, prompt_name="passage")


def test_embed_py_prompts_and_query_document_search(folders, capsys):
    folder, theirs = folders
    assert cli.main(["--model", str(folder), "--quiet", "--prompt-name", "query", TEXTS[0]]) == 0
    line = capsys.readouterr().out
    import json
    np.testing.assert_allclose(json.loads(line)["embedding"], theirs.encode(TEXTS[0], prompt_name="query"),
                               atol=1e-5)
    assert cli.main(["--model", str(folder), "--quiet", "--query", TEXTS[1], "--top-k", "5", *TEXTS]) == 0
    printed = capsys.readouterr().out.splitlines()[1:]
    q, d = theirs.encode_query([TEXTS[1]]), theirs.encode_document(TEXTS)
    scores = theirs.similarity(q, d).numpy()[0]
    np.testing.assert_allclose([float(line.split()[1]) for line in printed], np.sort(scores)[::-1], atol=1e-4)
