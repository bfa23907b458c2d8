"""The `tokenizers` library's other truncation options, written out as the book's tokenizer writes its one rule:
pairs of texts, which text loses tokens, from which end, and overflow windows.

    budget      = max_length - special tokens          ([CLS] A [SEP] -> 2, [CLS] A [SEP] B [SEP] -> 3)
    strategy    = which text loses tokens              (longest_first, only_first, only_second, do_not_truncate)
    direction   = which end they are lost from         (right: the end, left: the start)
    stride      = overlap between overflow windows     (each cut-off part comes back as extra rows)

The rules are those of the library (Rust `truncate_encodings`, `Encoding::truncate`, `Encoding::merge_with`);
tests/test_tokenizer.py checks that every combination gives the library's own output, and transformers'.
One text, longest_first, right, no stride is the book's rule (minilm/tokenizer.py: Tokenizer.encode).
"""
from minilm.tokenizer import Encoding, Tokenizer

STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
DIRECTIONS = ("right", "left")


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


def assemble(tokenizer: Tokenizer, a: list[int], b: list[int] | None, *, max_length: int | None = None,
             strategy: str = "longest_first", direction: str = "right", stride: int = 0) -> list[Encoding]:
    """Truncate word pieces a (and b), add special tokens and type ids; kept row first, then overflow rows."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown truncation strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown truncation direction {direction!r}; expected 'right' or 'left'")
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    max_length = tokenizer.max_length if max_length is None else max_length
    special = tokenizer.n_special(b is not None)
    budget = max_length - special
    if budget < 0:
        raise ValueError(f"max_length {max_length} is shorter than the {special} special tokens it must hold")
    if stride and strategy != "do_not_truncate" and stride >= budget:
        raise ValueError(f"stride {stride} must be smaller than max_length {max_length} minus the "
                         f"{special} special tokens")
    keep_a, keep_b = kept_lengths(len(a), None if b is None else len(b), budget, strategy)
    spans_a = windows(len(a), keep_a, stride, direction)
    if b is None:
        return [tokenizer.wrap(a[i:j]) for i, j in spans_a]
    spans_b = windows(len(b), keep_b, stride, direction)
    # Rows of a pair: every combination of a window of a with a window of b, the kept pair first, then in the
    # order of the library's Encoding.merge_with: each overflow window of a with each window of b, then the
    # kept window of a with each overflow window of b.
    order = [(0, 0)] + [(i, j) for i in range(1, len(spans_a)) for j in range(len(spans_b))]
    order += [(0, j) for j in range(1, len(spans_b))]
    return [tokenizer.wrap(a[slice(*spans_a[i])], b[slice(*spans_b[j])]) for i, j in order]


def encode_overflowing(tokenizer: Tokenizer, text: str, pair: str | None = None, **options) -> list[Encoding]:
    """The kept row first, then one row per overflow window (the library's `Encoding.overflowing`)."""
    pieces = tokenizer.word_pieces([text] if pair is None else [text, pair])
    return assemble(tokenizer, pieces[0], pieces[1] if pair is not None else None, **options)


def encode(tokenizer: Tokenizer, text: str, pair: str | None = None, **options) -> Encoding:
    """One row: [CLS] text [SEP] (or [CLS] text [SEP] pair [SEP]) truncated as the options say."""
    return encode_overflowing(tokenizer, text, pair, **options)[0]


def encode_batch(tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None = None,
                 **options) -> list[Encoding]:
    """The kept row of each text (or pair)."""
    pieces_a = tokenizer.word_pieces(list(texts))
    pieces_b = [None] * len(pieces_a) if pairs is None else tokenizer.word_pieces(list(pairs))
    if len(pieces_b) != len(pieces_a):
        raise ValueError(f"{len(pieces_a)} texts but {len(pieces_b)} pairs")
    return [assemble(tokenizer, a, b, **options)[0] for a, b in zip(pieces_a, pieces_b)]
