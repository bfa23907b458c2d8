"""WordPiece tokenization with explicit truncation, and padding to a few lengths.

The `tokenizers` library does the text -> word-piece ids part (BERT normalisation, punctuation splitting, greedy
longest-match WordPiece). Everything after that is written out here so that a reader sees each rule:

    budget      = max_length - special tokens          ([CLS] A [SEP] -> 2, [CLS] A [SEP] B [SEP] -> 3)
    strategy    = which text loses tokens              (longest_first, only_first, only_second, do_not_truncate)
    direction   = which end they are lost from         (right: the end, left: the start)
    stride      = overlap between overflow windows     (each cut-off part comes back as extra rows)

The rules are those of the `tokenizers` library (Rust `truncate_encodings`, `Encoding::truncate`,
`Encoding::merge_with`); tests/test_tokenizer.py checks that every combination gives the library's own output.
The truncation and padding baked into a tokenizer.json (all-MiniLM-L6-v2's file truncates and pads to 128 while
the model serves 256) are cleared on load: they would otherwise apply silently. docs/tokenizer.md has the rules
with examples.
"""
import dataclasses
import json
import pathlib

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm.config import read_json
from minilm.data import read_lines

STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
DIRECTIONS = ("right", "left")
# The padded lengths of a batch (one jitted shape each): steps of 8 up to 128 tokens, then 32, then 64; beyond 512
# the next multiple of 128. The one table of padded lengths: packed rows (batch.py) use its powers of two.
LENGTHS = (*range(8, 129, 8), 160, 192, 224, 256, 320, 384, 448, 512)


@dataclasses.dataclass(frozen=True)
class Encoding:
    """One model input row: token ids with [CLS]/[SEP], and token type ids (0 for the first text, 1 for the
    second text and its [SEP])."""
    ids: tuple[int, ...]
    type_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Batch:
    """Padded int32 arrays [B, T]; mask is 1 on real tokens, 0 on padding."""
    ids_BT: np.ndarray
    type_ids_BT: np.ndarray
    mask_BT: np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Truncation rules

def kept_lengths(n_a: int, n_b: int | None, budget: int, strategy: str) -> tuple[int, int | None]:
    """How many word pieces of each text survive, for texts of n_a and n_b pieces (n_b None: a single text)."""
    total = n_a + (n_b or 0)
    if strategy == "do_not_truncate" or total <= budget:
        return n_a, n_b
    excess = total - budget
    if strategy == "only_first" or strategy == "only_second":
        if strategy == "only_second" and n_b is None:
            raise ValueError("truncation strategy 'only_second' needs a pair of texts")
        target = n_a if strategy == "only_first" else n_b
        if target <= excess:
            which = "first" if strategy == "only_first" else "second"
            raise ValueError(
                f"truncation strategy '{strategy}' cannot fit the pair into {budget} word pieces: the {which} text "
                f"has {target} pieces but {excess} must go; use 'longest_first' or a larger max_length")
        return (n_a - excess, n_b) if strategy == "only_first" else (n_a, n_b - excess)
    if n_b is None:  # longest_first, one text
        return budget, None
    # longest_first, a pair. The shorter text keeps all it has if that leaves the longer text at least as much;
    # otherwise each gets half, and an odd budget's extra token goes to the longer one. On a tie the first text
    # counts as the shorter, so it is the one a token short: "4+4" pieces with budget 7 keep (3, 4).
    # (The legacy Python BertTokenizer gives that token to the first text instead; the Rust rule is the one
    # sentence-transformers and transformers' fast tokenizers use.)
    short = min(n_a, n_b)
    if 2 * short <= budget:
        keep_short, keep_long = short, budget - short
    else:
        keep_short, keep_long = budget // 2, budget // 2 + budget % 2
    return (keep_short, keep_long) if n_a <= n_b else (keep_long, keep_short)


def windows(n: int, keep: int, stride: int, direction: str) -> list[tuple[int, int]]:
    """[start, stop) spans of a text of n pieces cut to `keep`: the kept span first, then the overflow windows.

    Windows have `keep` pieces and start every keep - stride pieces, so neighbours share `stride` pieces; the last
    may be shorter. direction 'left' keeps the end of the text and walks the windows backwards from there.
    Example (keep 4, stride 2, n 10, right): (0, 4), (2, 6), (4, 8), (6, 10)."""
    if keep >= n:
        return [(0, n)]
    if keep == 0:  # nothing fits: the kept part is empty and the whole text is one overflow window
        return [(0, 0), (0, n)]
    if stride >= keep:
        raise ValueError(f"stride {stride} must be smaller than the window of {keep} word pieces it overlaps "
                         f"(max_length minus special tokens, split between the texts of a pair)")
    step = keep - stride
    spans = []
    if direction == "right":
        for start in range(0, n, step):
            spans.append((start, min(start + keep, n)))
            if start + keep >= n:
                break
    else:
        for stop in range(n, 0, -step):
            spans.append((max(stop - keep, 0), stop))
            if stop - keep <= 0:
                break
    return spans


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer

class Tokenizer:
    """A `tokenizers.Tokenizer` for word pieces, plus the truncation, special tokens and padding above.

    max_length counts special tokens (all-MiniLM-L6-v2: 256, from sentence_bert_config.json). do_lower_case is
    sentence-transformers' own flag (lowercase the text before tokenizing), separate from the normaliser's."""

    def __init__(self, tok: tokenizers.Tokenizer, max_length: int = 512, do_lower_case: bool = False):
        tok = tokenizers.Tokenizer.from_str(tok.to_str())  # a copy: we change its settings
        tok.no_truncation()
        tok.no_padding()
        self.tok, self.max_length, self.do_lower_case = tok, max_length, do_lower_case
        self.cls_id, self.sep_id, self.pad_id = (self.token_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise ValueError(f"the vocabulary has no {token} token; minilm needs BERT's [CLS], [SEP] and [PAD]")
        return i

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @classmethod
    def from_dir(cls, path, max_length: int | None = None) -> "Tokenizer":
        """From a model folder: tokenizer.json, else vocab.txt with the settings of tokenizer_config.json.
        max_length: the argument, else sentence_bert_config.json's max_seq_length, else tokenizer_config.json's
        model_max_length (unless it is transformers' 'no limit' sentinel), else 512."""
        path = pathlib.Path(path)
        tok_cfg = _read_json(path / "tokenizer_config.json")
        st_cfg = _read_json(path / "sentence_bert_config.json")
        if (path / "tokenizer.json").is_file():
            try:
                tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:
                raise ValueError(f"{path / 'tokenizer.json'}: cannot be read as a tokenizers file: {e}") from None
        elif (path / "vocab.txt").is_file():
            tok = wordpiece_from_vocab(path / "vocab.txt", lowercase=tok_cfg.get("do_lower_case", True),
                                       strip_accents=tok_cfg.get("strip_accents"),
                                       chinese_chars=tok_cfg.get("tokenize_chinese_chars", True))
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")
        if max_length is None:
            model_max = _length(tok_cfg, "model_max_length", path / "tokenizer_config.json") or 512
            max_length = (_length(st_cfg, "max_seq_length", path / "sentence_bert_config.json")
                          or (model_max if model_max < 1e6 else 512))
        return cls(tok, int(max_length), bool(st_cfg.get("do_lower_case", False)))

    def save(self, path):
        """tokenizer.json (without baked truncation or padding), vocab.txt and the transformers config files."""
        path = pathlib.Path(path)
        self.tok.save(str(path / "tokenizer.json"))
        vocab = sorted(self.tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        (path / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
        specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                    "mask_token": "[MASK]"}
        norm = json.loads(self.tok.to_str()).get("normalizer") or {}
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(norm.get("lowercase", True)),
                  "strip_accents": norm.get("strip_accents"),
                  "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
                  "model_max_length": self.max_length, **specials}
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
            (path / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    def n_special(self, pair: bool) -> int:
        return 3 if pair else 2

    def word_pieces(self, texts: list[str]) -> list[list[int]]:
        """Text -> word-piece ids, no special tokens (the library's batch call runs on all cores)."""
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        try:
            encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        except TypeError:  # the library's message ("TextEncodeInput must be Union[...]") names neither text nor cause
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str") from None
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate, e.g. from bytes decoded with surrogateescape
                    raise ValueError(f"texts[{i}] has a lone surrogate U+{ord(t[e.start]):04X} at character "
                                     f"{e.start}, which is not valid Unicode text") from None
            raise
        return [e.ids for e in encodings]

    def encode(self, text: str, pair: str | None = None, **options) -> Encoding:
        """One row: [CLS] text [SEP] (or [CLS] text [SEP] pair [SEP]) truncated as the options say."""
        return self.encode_overflowing(text, pair, **options)[0]

    def encode_overflowing(self, text: str, pair: str | None = None, *, max_length: int | None = None,
                           strategy: str = "longest_first", direction: str = "right", stride: int = 0
                           ) -> list[Encoding]:
        """The kept row first, then one row per overflow window (the library's `Encoding.overflowing`)."""
        pieces = self.word_pieces([text] if pair is None else [text, pair])
        return self.assemble(pieces[0], pieces[1] if pair is not None else None, max_length=max_length,
                             strategy=strategy, direction=direction, stride=stride)

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, **options) -> list[Encoding]:
        """The kept row of each text (or pair)."""
        pieces_a = self.word_pieces(list(texts))
        pieces_b = [None] * len(pieces_a) if pairs is None else self.word_pieces(list(pairs))
        if len(pieces_b) != len(pieces_a):
            raise ValueError(f"{len(pieces_a)} texts but {len(pieces_b)} pairs")
        return [self.assemble(a, b, **options)[0] for a, b in zip(pieces_a, pieces_b)]

    def batch(self, texts: list[str], pairs: list[str] | None = None, **options) -> Batch:
        return pad_batch(self.encode_batch(texts, pairs, **options), pad_id=self.pad_id)

    def assemble(self, a: list[int], b: list[int] | None, *, max_length: int | None = None,
                 strategy: str = "longest_first", direction: str = "right", stride: int = 0) -> list[Encoding]:
        """Truncate word pieces a (and b), add special tokens and type ids; kept row first, then overflow rows."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown truncation strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown truncation direction {direction!r}; expected 'right' or 'left'")
        if stride < 0:
            raise ValueError(f"stride must be >= 0, got {stride}")
        max_length = self.max_length if max_length is None else max_length
        budget = max_length - self.n_special(b is not None)
        if budget < 0:
            raise ValueError(f"max_length {max_length} is shorter than the {self.n_special(b is not None)} "
                             f"special tokens it must hold")
        if stride and strategy != "do_not_truncate" and stride >= budget:
            raise ValueError(f"stride {stride} must be smaller than max_length {max_length} minus the "
                             f"{self.n_special(b is not None)} special tokens")
        keep_a, keep_b = kept_lengths(len(a), None if b is None else len(b), budget, strategy)
        spans_a = windows(len(a), keep_a, stride, direction)
        if b is None:
            return [self.wrap(a[i:j]) for i, j in spans_a]
        spans_b = windows(len(b), keep_b, stride, direction)
        # Rows of a pair: every combination of a window of a with a window of b, the kept pair first, then in the
        # order of the library's Encoding.merge_with: each overflow window of a with each window of b, then the
        # kept window of a with each overflow window of b.
        order = [(0, 0)] + [(i, j) for i in range(1, len(spans_a)) for j in range(len(spans_b))]
        order += [(0, j) for j in range(1, len(spans_b))]
        return [self.wrap(a[slice(*spans_a[i])], b[slice(*spans_b[j])]) for i, j in order]

    def wrap(self, a: list[int], b: list[int] | None = None) -> Encoding:
        """[CLS] a [SEP] with type ids 0, then b [SEP] with type ids 1."""
        ids = [self.cls_id, *a, self.sep_id]
        type_ids = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            type_ids += [1] * (len(b) + 1)
        return Encoding(tuple(ids), tuple(type_ids))


def wordpiece_from_vocab(vocab_path, lowercase: bool = True, strip_accents: bool | None = None,
                         chinese_chars: bool = True) -> tokenizers.Tokenizer:
    """The BERT pipeline from a vocab.txt: BertNormalizer, BertPreTokenizer, WordPiece ([UNK], '##', 100 chars)."""
    vocab = {}
    for number, token in read_lines(vocab_path):
        vocab.setdefault(token, number - 1)
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


# ----------------------------------------------------------------------------------------------------------------
# Padding

def padded_length(n: int, lengths: tuple[int, ...] = LENGTHS) -> int:
    """The padded length for a longest row of n tokens: the shortest of `lengths` that holds it, or beyond them the
    next multiple of 128."""
    for length in lengths:
        if n <= length:
            return length
    return -(-n // 128) * 128


def pad_batch(encodings: list[Encoding], length: int | None = None, rows: int | None = None,
              pad_id: int = 0) -> Batch:
    """Right-pad to `length` (default: padded_length of the longest row) and to `rows` rows (default: as many as
    encodings; extra rows are all padding, mask 0)."""
    longest = max((len(e.ids) for e in encodings), default=0)
    length = padded_length(longest) if length is None else length
    rows = len(encodings) if rows is None else rows
    if longest > length or len(encodings) > rows:
        raise ValueError(f"{len(encodings)} rows of up to {longest} tokens do not fit a [{rows}, {length}] batch")
    ids = np.full((rows, length), pad_id, np.int32)
    type_ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, e in enumerate(encodings):
        n = len(e.ids)
        ids[r, :n], type_ids[r, :n], mask[r, :n] = e.ids, e.type_ids, 1
    return Batch(ids, type_ids, mask)


def _read_json(path: pathlib.Path) -> dict:
    """An optional JSON file of a model folder: {} when absent."""
    return read_json(path, dict) if path.is_file() else {}


def _length(cfg: dict, key: str, file: pathlib.Path):
    """A length field of a JSON file (None when absent), checked to be a positive number."""
    value = cfg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1):
        raise ValueError(f"{file}: field {key!r} should be a positive integer, got {value!r}")
    return value
