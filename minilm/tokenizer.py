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

import numpy as np
import tokenizers


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
    def from_file(cls, path, max_length: int = 512, do_lower_case: bool = False) -> "Tokenizer":
        """From a tokenizer.json (all-MiniLM-L6-v2's: max_length=256, its sentence_bert_config.json's
        max_seq_length). A folder with only vocab.txt, and the lengths its config files give: st/folder.py."""
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)), max_length, do_lower_case)
        except Exception as e:  # the library's errors name neither the file nor what is wrong with it
            raise ValueError(f"{path}: cannot be read as a tokenizers file: {e}") from None

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
