"""Data files and batch sampling: readers and their file:line errors, FILE:WEIGHT and data_config.json specs, and
the sampler's rules (exact size, no repeated text, one column count, weights, per-epoch coverage, resumable state)."""
import collections
import gzip
import json
import re

import pytest

from minilm import data
from tests.conftest import DATA, STRICT

pytestmark = pytest.mark.book  # the learner's tier: the readers and the sampler


def pairs(prefix: str, n: int) -> list[data.Example]:
    """n examples whose texts are all distinct and name their data set: ('a3', 'a3+')."""
    return [(f"{prefix}{i}", f"{prefix}{i}+") for i in range(n)]


def triplets(prefix: str, n: int) -> list[data.Example]:
    return [(f"{prefix}{i}", f"{prefix}{i}+", f"{prefix}{i}-") for i in range(n)]


def sampler(sets: dict, batch_size: int, seed: int = 0, weights: dict | None = None, **kw) -> data.BatchSampler:
    specs = [(p, (weights or {}).get(p, 1.0)) for p in sets]
    return data.BatchSampler(specs, batch_size, seed=seed, examples=sets, **kw)


def source(example: data.Example) -> str:
    return example[0].rstrip("0123456789")


def assert_valid_batch(batch, batch_size):
    assert len(batch) == batch_size
    texts = [t for ex in batch for t in ex]
    assert len(texts) == len(set(texts)), "a text repeats inside the batch"
    assert len({len(ex) for ex in batch}) == 1, "pairs and triplets mixed in one batch"


# --- reading files -------------------------------------------------------------------------------------------------

def test_reads_jsonl_gzip_tsv_and_list_form(tmp_path):
    rows = ['{"anchor": "a", "positive": "b", "negative": "c"}', "",
            '{"anchor": "d", "positive": "e", "negative": "f", "extra": 1}']
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "t.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(rows))  # no final newline
    (tmp_path / "l.jsonl").write_text('["a", "b"]\r\n["d", "e\\u2028x"]\r\n', encoding="utf-8")
    (tmp_path / "t.tsv").write_text("a\tb\n\nd\te\n", encoding="utf-8")
    with gzip.open(tmp_path / "t.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("a\tb\tc\nd\te\tf\n")
    triples = [("a", "b", "c"), ("d", "e", "f")]
    assert data.read_examples(tmp_path / "t.jsonl") == (triples, 0)
    assert data.read_examples(tmp_path / "t.jsonl.gz") == (triples, 0)
    assert data.read_examples(tmp_path / "l.jsonl") == ([("a", "b"), ("d", "e\u2028x")], 0)
    assert data.read_examples(tmp_path / "t.tsv") == ([("a", "b"), ("d", "e")], 0)
    assert data.read_examples(tmp_path / "t.tsv.gz") == (triples, 0)


MALFORMED = [  # (file name, contents; line 2 is the bad one, message)
    ("x.jsonl", b'{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": \n', r"not valid JSON"),
    ("x.jsonl", b'{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', r'missing "positive"'),
    ("x.jsonl", b'{"anchor": "a", "positive": "b"}\n{"positive": "c"}\n', r'missing "anchor"'),
    ("x.jsonl", b'{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": 7}\n', r'"positive" is not a string'),
    ("x.jsonl", b'["a", "b"]\n["c", "d", "e", "f"]\n', r"a list of 4 items"),
    ("x.jsonl", b'["a", "b"]\n["c", null]\n', r'"item 2" is not a string'),
    ("x.jsonl", b'["a", "b"]\n"c"\n', r"expected an object .* got str"),
    ("x.jsonl", b'["a", "b"]\n["c", "\xff"]\n', r"not valid UTF-8 \(byte 0xff at column 8\)"),
    ("x.jsonl", b'["a", "b"]\n["c", " "]\n', r"text 2 is empty"),
    ("x.jsonl", b'["a", "b"]\n["c", "d", "e"]\n["f", "g"]\n', r"3 texts, but 2 of the file's 3 examples have 2"),
    ("x.tsv", b"a\tb\nc\td\te\tf\n", r"4 tab-separated columns"),
    ("x.tsv", b"a\tb\nc\n", r"1 tab-separated columns"),
    ("x.tsv", b"a\tb\nc\td\t\n", r"text 3 is empty"),
    ("x.tsv", b"a\tb\n\xc3(\td\n", r"not valid UTF-8"),
    ("x.tsv.gz", gzip.compress(b"a\tb\tc\nd\te\nf\tg\th\n"), r"2 texts, but 2 of the file's 3 examples have 3"),
]


@pytest.mark.parametrize("name,contents,message", MALFORMED)
def test_malformed_line_stops_with_file_and_line_or_is_skipped(tmp_path, name, contents, message):
    path = tmp_path / name
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: {message}"):
        data.read_examples(path)
    examples, skipped = data.read_examples(path, on_error="skip")
    lines = (gzip.decompress(contents) if name.endswith(".gz") else contents).splitlines()
    assert (skipped, len(examples)) == (1, len(lines) - 1)
    assert len({len(ex) for ex in examples}) == 1


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: cannot read \(No such file or directory\)"):
        data.read_examples(tmp_path / "nope.jsonl")
    (tmp_path / "x.jsonl.gz").write_bytes(b'["a", "b"]\n')  # not compressed
    with pytest.raises(ValueError, match=r"x\.jsonl\.gz: not a valid gzip file"):
        data.read_examples(tmp_path / "x.jsonl.gz")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'["a", "b"]\n' * 1000)[:-30])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz: not a valid gzip file"):
        data.read_examples(tmp_path / "cut.jsonl.gz")
    (tmp_path / "blank.tsv").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"blank\.tsv: no examples$"):
        data.read_examples(tmp_path / "blank.tsv")
    (tmp_path / "bad.tsv").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: no examples \(2 malformed lines skipped\)"):
        data.read_examples(tmp_path / "bad.tsv", on_error="skip")
    with pytest.raises(ValueError, match=r"x\.csv: unknown data format"):
        data.read_examples(tmp_path / "x.csv")


@pytest.fixture(scope="module")
def mrpc_file():
    path = DATA / "mrpc" / "mrpc_positive_pairs.jsonl.gz"
    if not path.is_file():
        message = f"{path} not found (the shared data sets live beside the repository)"
        pytest.fail(message) if STRICT else pytest.skip(message)
    return path


def test_real_mrpc_pairs(mrpc_file):
    examples, skipped = data.read_examples(mrpc_file)
    assert (len(examples), skipped) == (3291, 0)  # the row count in shared/data/README.md
    s = data.BatchSampler(data.parse_data_specs([f"{mrpc_file}:2"]), 64, seed=1)
    assert s.num_columns == [2] and s.skipped == {str(mrpc_file): {"malformed": 0, "other kind": 0, "kind": 2}}
    for _ in range(60):  # a little over one epoch
        assert_valid_batch(next(s), 64)
    assert s.state()["datasets"][0]["epoch"] == 1


# --- data specs ----------------------------------------------------------------------------------------------------

def test_parse_data_specs(tmp_path):
    assert data.parse_data_specs(["a.jsonl", "b.tsv.gz:2.5", "c:d.jsonl:1"]) == [
        ("a.jsonl", 1.0), ("b.tsv.gz", 2.5), ("c:d.jsonl", 1.0)]
    for bad in ["a.jsonl:0", "a.jsonl:-1", "a.jsonl:x", "a.jsonl:nan", "a.jsonl:inf", "a.jsonl:"]:
        with pytest.raises(ValueError, match=rf"^{re.escape(bad)}: weight .* is not a positive number"):
            data.parse_data_specs([bad])
    with pytest.raises(ValueError, match=r"explicit weight"):
        data.parse_data_specs(["c:d.jsonl"])

    (tmp_path / "sub").mkdir()
    config = tmp_path / "sub" / "data_config.json"
    config.write_text(json.dumps([{"name": "x/a.jsonl.gz", "lines": 10, "weight": 247},
                                  {"name": "b.tsv", "lines": 3, "weight": 1}]))
    assert data.parse_data_specs([str(config), "c.jsonl:3"]) == [
        (str(tmp_path / "sub" / "x" / "a.jsonl.gz"), 247.0), (str(tmp_path / "sub" / "b.tsv"), 1.0), ("c.jsonl", 3.0)]
    for text, message in [('[{"name": "a.jsonl", "weight": 0}]', r"entry 0 \(a\.jsonl\): weight 0 is not"),
                          ('[{"name": "a.jsonl", "weight": "3"}, {"name": "b.jsonl", "weight": true}]',
                           r"entry 1 \(b\.jsonl\): weight True is not"),
                          ('[{"weight": 1}]', r'entry 0: expected an object with a "name"'),
                          ('{"name": "a.jsonl"}', r"expected a non-empty JSON list"),
                          ('[{"name": "a.jsonl",]', r"not valid JSON \(line 1: ")]:
        config.write_text(text)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(config))}: {message}"):
            data.parse_data_specs([str(config)])
    with pytest.raises(ValueError, match=r"missing\.json: cannot read"):
        data.parse_data_specs([str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match=r"takes no :weight"):
        data.parse_data_specs([f"{config}:2"])


def test_sampler_reads_each_file_and_counts_skipped_lines(tmp_path):
    """Malformed lines and lines of the other kind (pairs in a file of triplets) are counted apart, so train.py can
    say which it left out."""
    (tmp_path / "a.jsonl").write_text('["a1", "b1"]\n["a2"]\n["a3", "b3"]\n')
    (tmp_path / "b.tsv").write_text("x\ty\tz\nx2\ty2\tz2\np\tq\n")
    specs = data.parse_data_specs([str(tmp_path / "a.jsonl"), f"{tmp_path / 'b.tsv'}:2"])
    with pytest.raises(ValueError, match=r"a\.jsonl:2: a list of 1 items"):
        data.BatchSampler(specs, 2)
    s = data.BatchSampler(specs, 2, on_error="skip")
    assert s.skipped == {str(tmp_path / "a.jsonl"): {"malformed": 1, "other kind": 0, "kind": 2},
                         str(tmp_path / "b.tsv"): {"malformed": 0, "other kind": 1, "kind": 3}}
    assert s.num_columns == [2, 3]


# --- sampling ------------------------------------------------------------------------------------------------------

def test_batches_are_exact_distinct_uniform_and_seeded():
    sets = {"p": pairs("p", 50), "q": pairs("q", 7), "t": triplets("t", 30)}

    def draw(seed):
        s = sampler(sets, 6, seed=seed, datasets_per_batch=2)
        return [next(s) for _ in range(40)]

    first = draw(0)
    for batch in first:
        assert_valid_batch(batch, 6)
    assert first == draw(0)
    other = draw(1)
    assert first != other
    sources = lambda batches: [(source(b[0]), source(b[-1])) for b in batches]
    assert sources(first) != sources(other)  # the seed changes the choice of data sets, not only their order
    assert {len(batch[0]) for batch in first} == {2, 3}  # both kinds occur, never in one batch


def test_collisions_are_skipped_not_retried_and_unfillable_sets_fail():
    shared = [("q", "a"), ("q", "b"), ("r", "c"), ("s", "d"), ("t", "e"), ("u", "f")]  # "q" twice
    s = sampler({"s": shared}, 4)
    for _ in range(30):
        batch = next(s)
        assert_valid_batch(batch, 4)
    # each batch consumed 4 examples plus 1 per "q" collision, so positions run ahead of 4 per batch
    consumed = s.state()["datasets"][0]["epoch"] * 6 + s.state()["datasets"][0]["position"]
    assert consumed > 30 * 4
    with pytest.raises(ValueError, match=r"^few: cannot fill 4 examples"):
        next(sampler({"few": pairs("f", 3)}, 4))
    with pytest.raises(ValueError, match=r"^same: cannot fill 2 examples"):
        next(sampler({"same": [("q", f"p{i}") for i in range(20)]}, 2))


def test_tiny_dataset_walks_into_the_next_epoch():
    s = sampler({"tiny": pairs("t", 3)}, 2)
    for _ in range(20):
        assert_valid_batch(next(s), 2)
    d = s.state()["datasets"][0]
    # 40 examples taken from 3: about 13 epochs, plus the examples skipped where an epoch's first example was the
    # previous epoch's last one, already in the batch
    assert 40 <= 3 * d["epoch"] + d["position"] < 50


def test_every_example_once_per_epoch_in_a_new_order():
    s = sampler({"d": pairs("d", 12)}, 4)
    epochs = [[ex for _ in range(3) for ex in next(s)] for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(pairs("d", 12))
    assert epochs[0] != epochs[1] != epochs[2]


def test_weighted_sampling_frequencies():
    s = sampler({"a": pairs("a", 100), "b": pairs("b", 100)}, 2, weights={"a": 3.0, "b": 1.0})
    counts = collections.Counter(source(next(s)[0]) for _ in range(2000))
    assert counts["a"] / 2000 == pytest.approx(0.75, abs=0.03)
    # with datasets_per_batch=2, the second part only comes from sets with the first part's column count
    sets = {"p": pairs("p", 100), "q": pairs("q", 100), "t": triplets("t", 100)}
    s = sampler(sets, 4, datasets_per_batch=2, weights={"p": 1.0, "q": 3.0, "t": 4.0})
    parts = [(source(b[0]), source(b[2])) for b in (next(s) for _ in range(2000))]
    firsts, seconds = collections.Counter(a for a, _ in parts), collections.Counter(b for _, b in parts)
    for name, w in [("p", 1), ("q", 3), ("t", 4)]:
        assert firsts[name] / 2000 == pytest.approx(w / 8, abs=0.03)
    assert all((a == "t") == (b == "t") for a, b in parts)
    assert seconds["q"] / (seconds["p"] + seconds["q"]) == pytest.approx(0.75, abs=0.04)


def test_two_datasets_per_batch_compose_parts():
    sets = {"p": pairs("p", 40), "q": pairs("q", 40), "t": triplets("t", 40), "u": triplets("u", 40)}
    s = sampler(sets, 6, datasets_per_batch=2, seed=3)
    mixed = 0
    for k in range(50):
        batch = next(s)
        assert_valid_batch(batch, 6)
        first, second = {source(ex) for ex in batch[:3]}, {source(ex) for ex in batch[3:]}
        assert len(first) == len(second) == 1  # each half from one data set
        assert s.datasets_for_batch(k) == [list(sets).index(x) for x in (*first, *second)]
        mixed += first != second
    assert mixed > 10
    with pytest.raises(ValueError, match=r"batch size 5 must be a positive multiple of datasets_per_batch 2"):
        sampler(sets, 5, datasets_per_batch=2)


def test_state_round_trip_resumes_exactly():
    sets = {"p": pairs("p", 9), "q": pairs("q", 5), "t": triplets("t", 4)}
    a = sampler(sets, 4, seed=5, datasets_per_batch=2)
    for _ in range(5):
        next(a)
    state = json.loads(json.dumps(a.state()))
    assert state["batches"] == 5 and [d["path"] for d in state["datasets"]] == ["p", "q", "t"]
    assert any(d["epoch"] > 0 for d in state["datasets"])  # the state crosses an epoch boundary
    rest = [next(a) for _ in range(5)]
    b = sampler(sets, 4, seed=5, datasets_per_batch=2)
    b.load_state(state)
    assert [next(b) for _ in range(5)] == rest
    fresh = sampler(sets, 4, seed=5, datasets_per_batch=2)
    assert [next(fresh) for _ in range(5)] != rest

    other = sampler({"p": pairs("p", 9), "x": pairs("x", 5), "t": triplets("t", 4)}, 4)
    with pytest.raises(ValueError, match=r"data state is for the files \['p', 'q', 't'\], but this run reads"):
        other.load_state(state)
    state["datasets"][1]["position"] = 5
    with pytest.raises(ValueError, match=r"q: data state position 5 is past its 5 examples"):
        b.load_state(state)


def test_text_sampler_epochs_state_and_errors(tmp_path):
    from distill import read_texts, TextSampler
    f = tmp_path / "t.txt.gz"
    with gzip.open(f, "wt", encoding="utf-8") as g:
        g.write("\ufeffone\n\n  \ntwo\r\nthree\nfour\nfive\n")
    assert read_texts(f) == ["one", "two", "three", "four", "five"]
    s = TextSampler([str(f)], batch_size=2, seed=1)
    first_epoch = next(s) + next(s) + next(s)[:1]
    assert sorted(first_epoch) == ["five", "four", "one", "three", "two"]  # each text once per epoch
    state = json.loads(json.dumps(s.state()))
    later = [next(s) for _ in range(4)]
    again = TextSampler([str(f)], batch_size=2, seed=1)
    again.load_state(state)
    assert [next(again) for _ in range(4)] == later
    assert TextSampler([str(f)], batch_size=5, seed=2).order.tolist() != TextSampler([str(f)], 5, seed=1).order.tolist()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xfe nope\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not valid UTF-8"):
        read_texts(bad)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no text"):
        read_texts(tmp_path / "blank.txt")
    with pytest.raises(ValueError, match="cannot read"):
        read_texts(tmp_path / "missing.txt")


def test_texts_of_pair_and_triplet_files_for_distillation(tmp_path):
    from distill import read_texts
    f = tmp_path / "mixed.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as out:
        out.write('{"anchor": "a", "positive": "b", "negative": "c"}\n\n["b", "d"]\n{"anchor": "e", "positive": "a"}\n')
    assert read_texts(f) == ["a", "b", "c", "d", "e"]  # every distinct text once, pairs and triplets mixed
    (tmp_path / "t.tsv").write_text("x\ty\nz\n")
    with pytest.raises(ValueError, match=r"t.tsv:2: 1 tab-separated columns"):
        read_texts(tmp_path / "t.tsv")


def test_read_pairs_takes_the_first_two_texts_of_pairs_and_triplets_mixed(tmp_path):
    from distill import read_pairs
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"anchor": "q1", "positive": "p1"}\n\n["q2", "p2", "n2"]\n{"anchor": "q3", "positive": "p3", '
                 '"negative": "n3"}\n')
    assert read_pairs(f) == [("q1", "p1"), ("q2", "p2"), ("q3", "p3")]
    f.write_text('{"anchor": "q1", "positive": "p1"}\n{"anchor": "q2"}\n')
    with pytest.raises(ValueError, match=r"mixed.jsonl:2: "):
        read_pairs(f)
    with pytest.raises(ValueError, match=r"pairs come from .jsonl or .tsv"):
        read_pairs(tmp_path / "texts.txt")
