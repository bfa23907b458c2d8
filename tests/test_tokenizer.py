"""minilm.tokenizer (the book's rule for one text) and minilm.tools.truncation (pairs, left truncation, overflow
windows) against the `tokenizers` library's own truncation and transformers' tokenizers.

Every case is compared id for id and type id for type id, overflow rows included. The library is the tokenizer
of all-MiniLM-L6-v2 (tokenizer.json) with `enable_truncation(max_length, stride, strategy, direction)`; ours is
the same file with that truncation written out.
"""
import itertools

import pytest
import tokenizers

from minilm.tokenizer import Encoding, LENGTHS, pad_batch, padded_length, Tokenizer
from minilm.st import folder
from minilm.tools import truncation
from minilm.tools.truncation import kept_lengths, windows
from tests.conftest import need

TEXTS = {
    "plain": "The quick brown fox jumps over the lazy dog.",
    "accents": "Café naïve résumé Ångström São Paulo façade",
    "cjk": "我爱北京天安门 日本語のテキスト 안녕하세요 세계",
    "emoji": "I ❤️ 🍕 and 👩‍👩‍👧 family 🇫🇷",
    "control": "tab\there\x00null\x07bell\u200bzero\u00adsoft\r\nnew line\ufffd",
    "punct": "Hello, world!!! (yes) — 'quoted' U.S.A. e-mail: a@b.com #1 $5.00",
    "empty": "",
    "blank": "   \t\n ",
    "one": "word",
    "four": "one two three four",
    "eight": "one two three four five six seven eight",
    "medium": "Sentence embeddings map text to vectors; similar meanings land close together, unlike words.",
    "long": " ".join(f"token{i} is here, antidisestablishmentarianism!" for i in range(120)),  # ~1100 pieces
}
MAX_LENGTHS = [2, 3, 5, 8, 10, 16, 64, 256]
STRIDES = [0, 1, 3]
# With both texts of a pair overflowing, the library nests every combination of windows inside every other
# (Encoding.merge_with), so its memory grows with the cube of the window counts: two long texts at max_length 8
# exhaust 24 GB. Pairs here keep at least one side short enough for that.
PAIRS = [("four", "four"), ("four", "eight"), ("eight", "four"), ("eight", "eight"), ("one", "long"),
         ("long", "one"), ("medium", "medium"), ("medium", "long"), ("cjk", "emoji"), ("empty", "plain"),
         ("plain", "empty"),
         ("accents", "control"), ("blank", "punct")]


@pytest.fixture(scope="module")
def ours(real_model_dir):
    return folder.read_tokenizer(real_model_dir)


@pytest.fixture(scope="module")
def library(real_model_dir):
    tok = tokenizers.Tokenizer.from_file(str(real_model_dir / "tokenizer.json"))
    tok.no_padding()
    return tok


def rows(encoding) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The library's kept row then its (top-level) overflow rows, which is what transformers returns."""
    return [(tuple(e.ids), tuple(e.type_ids)) for e in [encoding, *encoding.overflowing]]


def run_library(tok, text, pair, max_length, strategy, direction, stride):
    """Rows, or the exception the library raised (a Rust panic is a BaseException, not an Exception)."""
    try:
        if strategy == "do_not_truncate":
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length, stride=stride, strategy=strategy, direction=direction)
        return rows(tok.encode(text, pair))
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        return e


def run_ours(tok, text, pair, max_length, strategy, direction, stride):
    try:
        return [(e.ids, e.type_ids) for e in truncation.encode_overflowing(
            tok, text, pair, max_length=max_length, strategy=strategy, direction=direction, stride=stride)]
    except ValueError as e:
        return e


def check(ours, library, text, pair, max_length, strategy, direction, stride):
    case = f"{text!r} + {pair!r}, max_length={max_length} {strategy} {direction} stride={stride}"
    theirs = run_library(library, text, pair, max_length, strategy, direction, stride)
    mine = run_ours(ours, text, pair, max_length, strategy, direction, stride)
    n_special = 2 if pair is None else 3
    if isinstance(theirs, BaseException):
        assert isinstance(mine, ValueError), f"{case}: the library raised {theirs!r}, we returned {mine}"
    elif isinstance(mine, ValueError):
        # Where we are stricter than the library, and why:
        # - max_length below the special tokens: the library's `max_length - n_special` wraps around (unsigned) and
        #   it silently does not truncate at all;
        # - stride >= max_length - n_special (the window): the library lets stride == window through its up-front
        #   check (for pairs it checks against max_length - 2) and then fails only if a window is actually cut;
        #   we refuse the setting up front, whatever the text.
        allowed = max_length < n_special or (stride >= max_length - n_special and strategy != "do_not_truncate")
        assert allowed, f"{case}: we raised {mine} but the library returned {theirs}"
    else:
        assert mine == theirs, f"{case}:\n ours   {mine}\n theirs {theirs}"


@pytest.mark.book
def test_the_books_rule_equals_library(ours, library):
    """The book's one rule (Tokenizer.encode: the first max_length - 2 pieces) against the library's truncation of
    one text at its defaults (longest_first, right, no stride), for every text and length: the library's kept row
    (its overflow rows are what tools/truncation.py adds)."""
    for name, max_length in itertools.product(TEXTS, MAX_LENGTHS):
        theirs = run_library(library, TEXTS[name], None, max_length, "longest_first", "right", 0)
        mine = ours.encode(TEXTS[name], max_length=max_length)
        assert (mine.ids, mine.type_ids) == theirs[0], (name, max_length)
    assert ours.encode_batch([TEXTS["plain"], TEXTS["long"]], max_length=16) == \
        [ours.encode(TEXTS["plain"], max_length=16), ours.encode(TEXTS["long"], max_length=16)]
    with pytest.raises(ValueError, match="shorter than the 2 special tokens"):
        ours.encode("a", max_length=1)


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second", "do_not_truncate"])
def test_single_texts_equal_library(ours, library, strategy, direction):
    for name, max_length, stride in itertools.product(TEXTS, MAX_LENGTHS, STRIDES):
        check(ours, library, TEXTS[name], None, max_length, strategy, direction, stride)


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second", "do_not_truncate"])
def test_pairs_equal_library(ours, library, strategy, direction):
    for (a, b), max_length, stride in itertools.product(PAIRS, MAX_LENGTHS + [7, 9, 11], STRIDES):
        check(ours, library, TEXTS[a], TEXTS[b], max_length, strategy, direction, stride)


def test_errors_name_the_problem(ours):
    with pytest.raises(ValueError, match="only_second' needs a pair"):
        truncation.encode(ours, "a b c d", strategy="only_second", max_length=4)
    with pytest.raises(ValueError, match="the second text has 1 pieces but 2 must go"):
        truncation.encode(ours, "a b c", "d", strategy="only_second", max_length=5)
    with pytest.raises(ValueError, match="stride 4 must be smaller"):
        truncation.encode(ours, "a b c d e f g h", stride=4, max_length=6)
    with pytest.raises(ValueError, match="shorter than the 3 special tokens"):
        truncation.encode(ours, "a", "b", max_length=2)
    with pytest.raises(ValueError, match="unknown truncation strategy 'longest'"):
        truncation.encode(ours, "a", strategy="longest")
    with pytest.raises(ValueError, match="unknown truncation direction"):
        truncation.encode(ours, "a", direction="middle")


def test_documented_examples(ours):
    # docs/tokenizer.md: max_length 6, stride 2, ten words -> [1-4], [3-6], [5-8], [7-10].
    words = "a b c d e f g h i j"
    got = [ours.tok.decode(list(e.ids)) for e in truncation.encode_overflowing(ours, words, max_length=6, stride=2)]
    assert got == ["a b c d", "c d e f", "e f g h", "g h i j"]
    assert windows(10, 4, 2, "left") == [(6, 10), (4, 8), (2, 6), (0, 4)]
    # The odd budget of a pair: the longer text gets the extra token; on a tie the second text gets it.
    assert kept_lengths(4, 4, 7, "longest_first") == (3, 4)
    assert kept_lengths(8, 4, 7, "longest_first") == (4, 3)
    assert kept_lengths(2, 9, 7, "longest_first") == (2, 5)


@pytest.mark.book
def test_default_max_length_is_sentence_transformers(ours, real_model_dir):
    """tokenizer.json bakes in truncation and padding at 128; the model serves 256 (sentence_bert_config.json).
    Ours must give sentence-transformers' own token ids, which the baked-in settings would not."""
    st = need("sentence_transformers")
    model = st.SentenceTransformer(str(real_model_dir), device="cpu")
    texts = [TEXTS["long"], TEXTS["plain"], TEXTS["empty"], TEXTS["control"], TEXTS["cjk"]]
    features = model.tokenize(texts)
    assert ours.max_length == 256 == model.max_seq_length
    for i, enc in enumerate(ours.encode_batch(texts)):
        n = int(features["attention_mask"][i].sum())
        assert list(enc.ids) == features["input_ids"][i, :n].tolist()
        assert list(enc.type_ids) == features["token_type_ids"][i, :n].tolist()
    assert len(ours.encode(TEXTS["long"]).ids) == 256


@pytest.mark.parametrize("direction", ["right", "left"])
def test_transformers_fast_tokenizer(ours, real_model_dir, direction):
    """transformers' (Rust-backed) BertTokenizer with return_overflowing_tokens: kept row, then overflow rows."""
    transformers = need("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(real_model_dir))
    hf.truncation_side = direction
    for (a, b), max_length, stride, strategy in itertools.product(
            PAIRS[:8], [8, 11, 64], [0, 2], ["longest_first", "only_first", "only_second"]):
        text, pair = TEXTS[a], TEXTS[b]
        try:
            got = hf(text, pair, max_length=max_length, truncation=strategy, stride=stride,
                     return_overflowing_tokens=True, return_token_type_ids=True)
        except BaseException as e:  # noqa: BLE001 (a Rust panic is not an Exception)
            if isinstance(e, KeyboardInterrupt):
                raise
            with pytest.raises(ValueError):
                truncation.encode_overflowing(ours, text, pair, max_length=max_length, strategy=strategy,
                                              direction=direction, stride=stride)
            continue
        mine = truncation.encode_overflowing(ours, text, pair, max_length=max_length, strategy=strategy,
                                             direction=direction, stride=stride)
        assert [list(e.ids) for e in mine] == got["input_ids"], (a, b, max_length, stride, strategy)
        assert [list(e.type_ids) for e in mine] == got["token_type_ids"]


def test_legacy_python_tokenizer_odd_budget(ours, real_model_dir):
    """Where transformers' legacy Python BertTokenizer and the Rust library disagree, we follow Rust.

    For a pair that must be cut on both sides with an odd budget and len(first) <= len(second), Rust gives the
    extra token to the second text, the legacy Python code to the first (docs/tokenizer.md). sentence-transformers
    and transformers' default (fast) tokenizers use Rust, so the embeddings users compare against do too."""
    transformers = need("transformers")
    legacy = transformers.BertTokenizerLegacy.from_pretrained(str(real_model_dir))
    a, b = TEXTS["four"], TEXTS["four"]
    python_ids = legacy(a, b, max_length=10, truncation="longest_first")["input_ids"]
    mine = truncation.encode(ours, a, b, max_length=10)
    assert python_ids.count(102) == 2 and python_ids.index(102) == 5  # Python: 4 + 3 pieces
    assert mine.ids.index(102) == 4  # Rust and ours: 3 + 4 pieces
    # Where they agree (first longer, or even budgets), all three are equal.
    for a, b, max_length in [("eight", "four", 10), ("four", "eight", 11), ("plain", "accents", 12)]:
        python_ids = legacy(TEXTS[a], TEXTS[b], max_length=max_length, truncation="longest_first")["input_ids"]
        assert list(truncation.encode(ours, TEXTS[a], TEXTS[b], max_length=max_length).ids) == python_ids


def test_vocab_txt_folder_tokenizes_like_tokenizer_json(ours, real_model_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((real_model_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_bytes((real_model_dir / "tokenizer_config.json").read_bytes())
    from_vocab = folder.read_tokenizer(tmp_path)
    assert from_vocab.max_length == 512  # model_max_length of tokenizer_config.json: no sentence_bert_config here
    for text in TEXTS.values():
        assert from_vocab.encode(text, max_length=256) == ours.encode(text)


def test_save_round_trip(ours, tmp_path):
    folder.write_tokenizer(ours, tmp_path)
    again = folder.read_tokenizer(tmp_path)
    assert again.max_length == ours.max_length
    for text in TEXTS.values():
        assert truncation.encode(again, text, TEXTS["cjk"]) == truncation.encode(ours, text, TEXTS["cjk"])
    assert again.tok.truncation is None and again.tok.padding is None


@pytest.mark.book
def test_padded_lengths_and_pad_batch_layout():
    assert [padded_length(n) for n in (0, 1, 8, 9, 100, 129, 256, 257, 512, 513, 700)] == \
        [8, 8, 8, 16, 104, 160, 256, 320, 512, 640, 768]
    assert LENGTHS == tuple(sorted(LENGTHS))
    batch = pad_batch([Encoding((101, 7, 102), (0, 0, 0)), Encoding((101, 102, 8, 102), (0, 0, 1, 1))], rows=4)
    assert batch.ids_BT.shape == (4, 8) and batch.ids_BT.dtype.name == "int32"
    assert batch.ids_BT[0, :4].tolist() == [101, 7, 102, 0]
    assert batch.type_ids_BT[1, :5].tolist() == [0, 0, 1, 1, 0]
    assert batch.mask_BT.sum(1).tolist() == [3, 4, 0, 0]
    with pytest.raises(ValueError, match="do not fit"):
        pad_batch([Encoding((1,) * 20, (0,) * 20)], length=16)
