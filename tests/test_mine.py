"""Hard-negative mining against sentence-transformers' mine_hard_negatives with the same model and settings: the
same triplets, in the same order."""
import csv
import json

import pytest

from minilm.tools import mine
from tests.conftest import need


@pytest.fixture(scope="module")
def pairs(stsb_dir):
    rows = list(csv.reader(open(stsb_dir / "stsb-en-dev.csv", encoding="utf-8")))
    pairs = [(a, b) for a, b, s in rows if float(s) >= 3.5][:150]
    return pairs + [(pairs[0][0], pairs[5][1])]  # an anchor with two positives


@pytest.mark.parametrize("settings", [
    dict(num_negatives=3),
    dict(num_negatives=2, range_min=3, range_max=25, relative_margin=0.05, max_score=0.9),
    dict(num_negatives=2, absolute_margin=0.1, min_score=0.2),
], ids=["top", "range-relative-margin-max-score", "absolute-margin-min-score"])
def test_same_triplets_as_sentence_transformers(real_model_dir, pairs, settings):
    st = need("sentence_transformers")
    datasets = need("datasets")
    model = st.SentenceTransformer(str(real_model_dir), device="cpu")
    dataset = datasets.Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    theirs = st.util.mine_hard_negatives(dataset, model, verbose=False, **settings)
    expected = list(zip(theirs["anchor"], theirs["positive"], theirs["negative"]))
    ours = mine.mine(pairs, real_model_dir, progress=False, **settings)
    assert len(ours) > 100 and ours == expected


def test_command_writes_triplets_train_py_reads(real_model_dir, pairs, tmp_path, capsys):
    from minilm.data import read_examples
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n"
                                                  for a, p in pairs[:40]))
    assert mine.main(["--model", str(real_model_dir), "--data", str(tmp_path / "pairs.jsonl"), "--out",
                      str(tmp_path / "triplets.jsonl"), "--num-negatives", "2", "--quiet"]) == 0
    capsys.readouterr()
    again = mine.mine(pairs[:40], real_model_dir, num_negatives=2, progress=True)  # progress: each pass named
    err = capsys.readouterr().err
    assert err.index("embedding 40 corpus texts") < err.index("anchors (the queries)")
    assert [t[2] for t in again[:4]] == [json.loads(line)["negative"] for line in
                                          (tmp_path / "triplets.jsonl").read_text().splitlines()[:4]]
    triplets, bad = read_examples(tmp_path / "triplets.jsonl")
    assert bad == 0 and len(triplets) == 80 and all(len(t) == 3 and t[2] != t[1] for t in triplets)
    assert mine.main(["--data", str(tmp_path / "triplets.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 1
