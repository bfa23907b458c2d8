"""WordPiece tokenization with explicit truncation, and padding to a few lengths.

The `tokenizers` library does the text -> word-piece ids part (BERT normalisation, punctuation splitting, greedy
longest-match WordPiece). Everything after that is written out here so that a reader sees each rule:

    budget      = max_length - 2                       (max_length counts the special tokens [CLS] and [SEP])
    kept        = the first `budget` word pieces        (the end of a long text is cut)
    row         = [CLS] kept [SEP], token type ids 0

That is the `tokenizers` library's rule for one text (`Encoding::truncate`, right side, longest_first), and
sentence-transformers'; tests/test_tokenizer.py checks it against the library's own output. Pairs of texts, left
truncation and overflow windows (the library's other options) are in tools/truncation.py. The truncation and
padding baked into a tokenizer.json (all-MiniLM-L6-v2's file truncates and pads to 128 while the model serves 256)
are cleared on load: they would otherwise apply silently. docs/tokenizer.md has the rules with examples.
"""
import dataclasses
import json
import pathlib

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm.config import read_json
from minilm.data import read_lines

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

    def encode(self, text: str, max_length: int | None = None) -> Encoding:
        """One row: [CLS] text [SEP], the text cut to fit max_length (default: the tokenizer's)."""
        return self.assemble(self.word_pieces([text])[0], max_length)

    def encode_batch(self, texts: list[str], max_length: int | None = None) -> list[Encoding]:
        return [self.assemble(pieces, max_length) for pieces in self.word_pieces(list(texts))]

    def batch(self, texts: list[str], max_length: int | None = None) -> Batch:
        return pad_batch(self.encode_batch(texts, max_length), pad_id=self.pad_id)

    def assemble(self, pieces: list[int], max_length: int | None = None) -> Encoding:
        """Word pieces -> a row: the first max_length - 2 pieces between [CLS] and [SEP]."""
        max_length = self.max_length if max_length is None else max_length
        if max_length < self.n_special(False):
            raise ValueError(f"max_length {max_length} is shorter than the 2 special tokens it must hold")
        return self.wrap(pieces[:max_length - self.n_special(False)])

    def wrap(self, a: list[int], b: list[int] | None = None) -> Encoding:
        """[CLS] a [SEP] with type ids 0, then (a pair's second text, tools/truncation.py) b [SEP] with type ids 1."""
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
