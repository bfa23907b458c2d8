"""STS evaluation: numpy ranks and correlations against scipy, and the command against sentence-transformers'
EmbeddingSimilarityEvaluator on ../shared/data/stsb/stsb-en-test.csv (Spearman x 100 within 0.01)."""
import numpy as np
import pytest

from minilm import evaluate
from tests.conftest import need


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


def test_command_equals_sentence_transformers_evaluator(real_model_dir, stsb_dir, capsys):
    st = need("sentence_transformers")
    try:  # sentence-transformers >= 6 moved it; the old path still works there, with a deprecation warning
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    except ImportError:
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    test_csv = stsb_dir / "stsb-en-test.csv"
    assert evaluate.main(["--model", str(real_model_dir), "--sts", str(test_csv)]) == 0
    printed = capsys.readouterr().out
    ours = float(printed.split("spearman")[1].split()[0])
    pairs = evaluate.read_sts(test_csv)
    evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, (pairs.scores / 5).tolist())
    theirs = 100 * evaluator(st.SentenceTransformer(str(real_model_dir), device="cpu"))["spearman_cosine"]
    print(f"spearman: ours {ours:.2f}, sentence-transformers {theirs:.4f}")
    assert abs(ours - theirs) <= 0.01
