"""STS evaluation: numpy ranks and correlations against scipy, and the command against sentence-transformers'
EmbeddingSimilarityEvaluator on ../shared/data/stsb/stsb-en-test.csv (Spearman x 100 within 0.01); the Reuters
gap analysis's per-query ranks against the retrieval evaluation."""
import sys

import numpy as np
import pytest

from minilm.tools import evaluate
from minilm.tools.retrieval import rank, ranking_metrics
from tests.conftest import need, REPO


def test_ranks_and_correlations_equal_scipy():
    stats = need("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 5, 100, 1000):
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a + rng.normal(0, 2, n)
        np.testing.assert_array_equal(evaluate.rankdata(a), stats.rankdata(a))
        assert evaluate.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert evaluate.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
    assert evaluate.rankdata(np.array([10, 20, 20, 30])).tolist() == [1, 2.5, 2.5, 4]


def test_read_sts_errors_name_file_and_line(tmp_path):
    f = tmp_path / "sts.csv"
    f.write_text('sentence1,sentence2,score\n"A, quoted",b,4.5\nc,d,1\n', encoding="utf-8")
    pairs = evaluate.read_sts(f)
    assert pairs.sentences1 == ["A, quoted", "c"] and pairs.scores.tolist() == [4.5, 1.0]
    f.write_text("a,b,1\nc,d,2\ne,f,high\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sts\.csv:3: score 'high' is not a number"):
        evaluate.read_sts(f)
    f.write_text("a,b,1\nc,d\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sts\.csv:2: expected 3 columns"):
        evaluate.read_sts(f)
    f.write_bytes(b"a,b,1\n\xff,d,2\n")
    with pytest.raises(ValueError, match=r"sts\.csv:2: not valid UTF-8 \(byte 0xff at column 1\)"):
        evaluate.read_sts(f)
    with pytest.raises(ValueError, match="cannot read"):
        evaluate.read_sts(tmp_path / "missing.csv")


def test_command_equals_sentence_transformers_evaluator(real_model_dir, stsb_dir, capsys, monkeypatch):
    st = need("sentence_transformers")
    try:  # sentence-transformers >= 6 moved it; the old path still works there, with a deprecation warning
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    except ImportError:
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    test_csv = stsb_dir / "stsb-en-test.csv"
    emb = {}  # the command's own embeddings, kept for the other similarity functions below

    from minilm.fast import embedding as fast

    def embed_and_keep(texts, *args, real=fast.embed, **kwargs):
        out = real(texts, *args, **kwargs)
        emb.update(zip(texts, out))
        return out

    monkeypatch.setattr(fast, "embed", embed_and_keep)  # evaluate_sts imports it when called
    assert evaluate.main(["--model", str(real_model_dir), "--sts", str(test_csv)]) == 0
    printed = capsys.readouterr().out
    ours = float(printed.split("spearman")[1].split()[0])
    pairs = evaluate.read_sts(test_csv)
    fns = ("cosine", "dot", "euclidean", "manhattan")
    evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, (pairs.scores / 5).tolist(),
                                             similarity_fn_names=list(fns))
    theirs = evaluator(st.SentenceTransformer(str(real_model_dir), device="cpu"))
    print(f"spearman: ours {ours:.2f}, sentence-transformers {100 * theirs['spearman_cosine']:.4f}")
    assert abs(ours - 100 * theirs["spearman_cosine"]) <= 0.01
    a, b = (np.stack([emb[t] for t in side]) for side in (pairs.sentences1, pairs.sentences2))
    for fn in fns[1:]:  # each similarity function (1e-4: the same embeddings to float32 rounding)
        ours_fn = 100 * evaluate.spearman(evaluate.similarity(a, b, fn, pairs=True), pairs.scores)
        assert abs(ours_fn - 100 * theirs[f"spearman_{fn}"]) <= 1e-4 * 100, fn


def test_sts_from_tsv_and_jsonl_equals_csv(stsb_dir, tmp_path):
    import csv
    import json
    rows = list(csv.reader(open(stsb_dir / "stsb-en-dev.csv", encoding="utf-8")))[:300]
    (tmp_path / "sts.tsv").write_text("genre\tsentence1\tsentence2\tscore\n" + "".join(
        f"x\t{a}\t{b}\t{s}\n" for a, b, s in rows), encoding="utf-8")
    (tmp_path / "sts.jsonl").write_text("".join(
        json.dumps({"sentence1": a, "sentence2": b, "score": float(s)}) + "\n" for a, b, s in rows), encoding="utf-8")
    with open(tmp_path / "sts.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    pairs = {kind: evaluate.read_sts(tmp_path / f"sts.{kind}") for kind in ("csv", "tsv", "jsonl")}
    for kind in ("tsv", "jsonl"):
        assert pairs[kind].sentences1 == pairs["csv"].sentences1 and pairs[kind].sentences2 == pairs["csv"].sentences2
        np.testing.assert_array_equal(pairs[kind].scores, pairs["csv"].scores)
    (tmp_path / "bad.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\t1\n")
    with pytest.raises(ValueError, match="bad.tsv:1: the header must name the columns sentence1, sentence2, score"):
        evaluate.read_sts(tmp_path / "bad.tsv")
    (tmp_path / "bad.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with sentence1, sentence2, score"):
        evaluate.read_sts(tmp_path / "bad.jsonl")


def beir_folder(tmp_path, stsb_dir):
    """A small BEIR folder from STS-b sentences: each query's relevant documents are its paired sentences."""
    import csv
    import json
    rows = list(csv.reader(open(stsb_dir / "stsb-en-test.csv", encoding="utf-8")))[:400]
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = list(dict.fromkeys(b for _, b, _ in rows))
    doc_id = {d: f"d{i}" for i, d in enumerate(docs)}
    with open(folder / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"_id": doc_id[d], "title": d.split()[0], "text": d}) + "\n")
    queries = list(dict.fromkeys(a for a, _, s in rows if float(s) >= 3.0))[:60]
    with open(folder / "queries.jsonl", "w") as f:
        for i, q in enumerate(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i, q in enumerate(queries):
            for a, b, s in rows:
                if a == q:
                    f.write(f"q{i}\t{doc_id[b]}\t{1 if float(s) >= 3.0 else 0}\n")
    return folder


def test_retrieval_equals_sentence_transformers_evaluator(real_model_dir, stsb_dir, tmp_path, capsys):
    st = need("sentence_transformers")
    from minilm.tools.retrieval import evaluate_ir, read_beir
    folder = beir_folder(tmp_path, stsb_dir)
    beir = read_beir(folder)
    ours = evaluate_ir(beir, real_model_dir, progress=False)
    try:  # sentence-transformers 6 moved it; 3.x-5.x keep it in sentence_transformers.evaluation
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:
        from sentence_transformers.evaluation import InformationRetrievalEvaluator
    evaluator = InformationRetrievalEvaluator(beir.queries, beir.corpus, beir.relevant, map_at_k=[100],
                                              precision_recall_at_k=[1, 10, 100])
    theirs = evaluator(st.SentenceTransformer(str(real_model_dir), device="cpu"))
    assert ours["queries"] == 60 and ours["documents"] > 300
    for name in ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100"):
        assert abs(ours[name] - 100 * theirs[f"cosine_{name}"]) <= 1e-6 * 100, name
    assert 50 < ours["ndcg@10"] < 100  # the paired sentence is usually found
    assert evaluate.main(["--model", str(real_model_dir), "--ir", str(folder), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert f"60 queries, {ours['documents']} documents  nDCG@10 {ours['ndcg@10']:.2f}" in line
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\n")
    with pytest.raises(ValueError, match=r"test.tsv:2: expected 3 tab-separated columns"):
        read_beir(folder)


def test_reuters_gap_ranks_equal_the_evaluation_ranking():
    """experiments/reuters_gap.py's per-query nDCG@10, averaged, is the evaluation's nDCG@10 and its rank-1 share is
    Recall@1: one relevant document per query, ties (duplicate documents) broken by ascending id as rank() does."""
    sys.path.insert(0, str(REPO / "experiments"))
    import reuters_gap
    rng = np.random.default_rng(0)
    corpus_ND = rng.normal(size=(60, 8)).astype(np.float32)
    corpus_ND[40:] = corpus_ND[:20]  # exact duplicates: equal scores
    ids = [f"d{i}" for i in range(60)]  # "d10" sorts before "d2"
    relevant_Q = rng.integers(0, 60, 50)
    query_QD = corpus_ND[relevant_Q] + rng.normal(scale=1.5, size=(50, 8)).astype(np.float32)
    ranks_Q = reuters_gap.relevant_ranks(query_QD, corpus_ND, relevant_Q, ids)
    expected = ranking_metrics(rank(query_QD, corpus_ND, ids, 10), [{ids[r]} for r in relevant_Q])
    assert 0 < (ranks_Q == 1).mean() < 1 and (ranks_Q > 10).any()
    assert np.isclose(100 * reuters_gap.ndcg10(ranks_Q).mean(), expected["ndcg@10"])
    assert np.isclose(100 * (ranks_Q == 1).mean(), expected["recall@1"])
