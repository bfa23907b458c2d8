"""Reading files, and training data: pair/triplet files in, fixed-size global batches for contrastive training out.

One reader of text files (config.py holds the one reader of JSON files), so that every file the project reads fails
the same way. A text file is UTF-8 with one text per line: a leading BOM is dropped, lines end in '\\n' or '\\r\\n'
(and only there: str.splitlines would also split on \\x0b, \\x1c or U+2028, which are text here), and a name
ending in .gz is read through gzip. A bad byte is an error naming the file, the line and the column; '-' reads
standard input.

A file holds (anchor, positive) pairs or (anchor, positive, negative) triplets, never both: .jsonl[.gz] with one JSON
object {"anchor", "positive"[, "negative"]} (or a list of 2-3 strings) per line, or .tsv[.gz] with 2-3 columns.

Batches follow `produce_data` in all-MiniLM-L6-v2's train_script.py (HF repo sentence-transformers/all-MiniLM-L6-v2):
- A global batch is `datasets_per_batch` equal parts; each part comes from one data set drawn with probability
  proportional to its weight (the script repeats index i weight_i times and draws uniformly from that list).
- All examples of a batch have the same number of texts: the data sets of the later parts are drawn among those with
  the first part's column count (the script re-draws until the count matches; drawing from the matching sets with
  the same weights gives the same probabilities).
- No text appears twice in a global batch: an example whose anchor, positive or negative (exact string) is already
  in it is consumed and skipped, not kept for later, as in the script.
- Each data set is walked in a new random order each epoch. The script's first pass reads the file in order and
  only later passes are shuffled; here every epoch is shuffled, so the order never depends on how the file is sorted.
  A data set smaller than its part walks on into its next epoch; a part still unfilled after skipping as many
  examples as its data set holds (too few distinct texts) is an error naming the file.
Unlike the script (global `random` state), everything is a pure function of the seed: the data sets of batch k come
from rng(seed, k) and the order of data set i in epoch e from rng(seed, i, e), so resuming needs only the number of
batches drawn and each data set's (epoch, position): that is `state()`.
"""
import gzip
import json
import math
import pathlib
import sys
import zlib
from collections import Counter

import numpy as np

from minilm.config import read_json

# ----------------------------------------------------------------------------------------------------------------
# Reading files.


def read_lines(path, bad_lines: list | None = None):
    """Yield (line number, text) for every line of a text file, lazily (1-based numbers; blank lines included).
    A line that is not UTF-8 raises ValueError("FILE:LINE: not valid UTF-8 (...)"), or, when `bad_lines` is a
    list, is appended to it as (line number, message) and skipped."""
    path = str(path)
    name = "<stdin>" if path == "-" else path
    if path == "-" and sys.stdin is None:  # started with file descriptor 0 closed
        raise ValueError("<stdin>: is closed; there is nothing to read")
    try:
        f = sys.stdin.buffer if path == "-" else (gzip.open if path.endswith(".gz") else open)(path, "rb")
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, expected a text file with one text per line") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        for number, raw in enumerate(f, start=1):  # binary lines end at b"\n" only
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
                if not raw:  # only a BOM: an empty file
                    break
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                message = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                if bad_lines is None:
                    raise ValueError(f"{name}:{number}: {message}") from None
                bad_lines.append((number, message))
                continue
            yield number, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # BadGzipFile is an OSError: catch it first
        raise ValueError(f"{name}: not a valid gzip file ({e})") from None
    except IsADirectoryError:  # open() of a folder succeeds on some systems; reading it fails
        raise ValueError(f"{name}: is a folder, expected a text file with one text per line") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    finally:
        if path != "-":
            f.close()


def json_object(path, number: int, text: str, keys: tuple[str, ...]) -> dict:
    """One line of a JSON-lines file: an object holding `keys`, else a ValueError naming the file and line."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    if not isinstance(row, dict) or any(k not in row for k in keys):
        raise ValueError(f"{path}:{number}: expected an object with {', '.join(keys)}")
    return row


# ----------------------------------------------------------------------------------------------------------------
# Training data.


Example = tuple[str, ...]  # (anchor, positive) or (anchor, positive, negative)
FIELDS = ("anchor", "positive", "negative")
SUFFIXES = (".jsonl", ".jsonl.gz", ".tsv", ".tsv.gz")


def _parse_json(text: str) -> Example:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(row, dict) and "texts" in row:  # {"texts": [...]}, which train_script.py also reads
        row = row["texts"]
    if isinstance(row, dict):
        if "anchor" not in row or "positive" not in row:
            raise ValueError(f'missing "{"anchor" if "anchor" not in row else "positive"}"')
        texts = [(k, row[k]) for k in FIELDS if k in row]
    elif isinstance(row, list):
        if len(row) not in (2, 3):
            raise ValueError(f"a list of {len(row)} items; expected 2 or 3 texts")
        texts = [(f"item {i + 1}", t) for i, t in enumerate(row)]
    else:
        raise ValueError(f'expected an object with "anchor" and "positive" or a list of 2-3 texts, '
                         f"got {type(row).__name__}")
    for name, t in texts:
        if not isinstance(t, str):
            raise ValueError(f'"{name}" is not a string (got {json.dumps(t)[:40]})')
    return tuple(t for _, t in texts)


def _parse_tsv(text: str) -> Example:
    columns = text.split("\t")
    if len(columns) not in (2, 3):
        raise ValueError(f"{len(columns)} tab-separated columns; expected 2 or 3")
    return tuple(columns)


def _parse_line(text: str, parse) -> Example:
    example = parse(text)
    for i, t in enumerate(example):
        if not t.strip():  # e.g. the empty third column left by a stray trailing tab
            raise ValueError(f"text {i + 1} is empty")
    return example


def read_examples(path, on_error: str = "stop", counts: dict | None = None) -> tuple[list[Example], int]:
    """A training file -> (examples, number of lines skipped). A malformed line raises
    ValueError("{path}:{line}: ...") with on_error="stop" and is skipped and counted with on_error="skip". Blank
    lines are ignored. A file mixing pairs and triplets keeps its more common kind; the others are skipped too (a
    batch is drawn from one file, so its rows must all have the same columns). `counts`, if given, receives
    {"malformed": lines that could not be read, "other kind": e.g. the pairs of a file of triplets, "kind": 2 or 3}."""
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    name = str(path)
    if not name.endswith(SUFFIXES):
        raise ValueError(f"{name}: unknown data format; expected one of {', '.join(SUFFIXES)}")
    parse = _parse_tsv if name.removesuffix(".gz").endswith(".tsv") else _parse_json
    rows, bad = [], 0  # rows: (line number, example)
    undecodable = [] if on_error == "skip" else None  # lines that are not UTF-8, skipped and counted
    for number, text in read_lines(name, undecodable):
        if not text.strip():
            continue
        try:
            rows.append((number, _parse_line(text, parse)))
        except ValueError as e:
            if on_error == "stop":
                raise ValueError(f"{name}:{number}: {e}") from None
            bad += 1
    bad += len(undecodable or ())
    # One file, one kind: the more common column count wins (the first row's on a tie, as train_script.py's assert).
    kinds, other = Counter(len(ex) for _, ex in rows), 0
    if len(kinds) > 1:
        keep = max(kinds, key=lambda c: (kinds[c], c == len(rows[0][1])))
        odd = [(number, ex) for number, ex in rows if len(ex) != keep]
        if on_error == "stop":
            raise ValueError(f"{name}:{odd[0][0]}: {len(odd[0][1])} texts, but {kinds[keep]} of the file's "
                             f"{len(rows)} examples have {keep}; a file must not mix pairs and triplets")
        other = len(odd)
        rows = [(number, ex) for number, ex in rows if len(ex) == keep]
    if not rows:
        raise ValueError(f"{name}: no examples" + (f" ({bad} malformed lines skipped)" if bad else ""))
    if counts is not None:
        counts.update({"malformed": bad, "other kind": other, "kind": len(rows[0][1])})
    return [ex for _, ex in rows], bad + other


def _weight(value, where: str, hint: str = "") -> float:
    try:
        w = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"{where}: weight {value!r} is not a positive number{hint}")
    return w


def parse_data_specs(args: list[str]) -> list[tuple[str, float]]:
    """(path, weight) of each data set: 'file', 'file:weight' (the last ':' starts the weight) or a data_config.json:
    a JSON list of {"name": file relative to the json's folder, "weight": w (default 1), ...}, like the one shipped
    with all-MiniLM-L6-v2. Every weight is checked here, once: a positive number."""
    specs = []
    for arg in args:
        if not arg.endswith(".json"):
            path, colon, weight = arg.rpartition(":")
            if not colon:
                specs.append((arg, 1.0))
                continue
            if path.endswith(".json"):
                raise ValueError(f"{arg}: a data_config.json takes no :weight; the weights are inside it")
            hint = " (a path with ':' needs an explicit weight, e.g. 'a:b.jsonl:1')" if "." in weight else ""
            specs.append((path, _weight(weight, arg, hint)))
            continue
        entries = read_json(arg)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f'{arg}: expected a non-empty JSON list of {{"name": file, "weight": w}} objects')
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ValueError(f'{arg}: entry {i}: expected an object with a "name" (a file)')
            specs.append((str(pathlib.Path(arg).parent / entry["name"]),
                          _weight(entry.get("weight", 1), f"{arg}: entry {i} ({entry['name']})")))
    return specs


class BatchSampler:
    """Global batches for contrastive training, deterministic from the seed, resumable from state()."""

    def __init__(self, specs: list[tuple[str, float]], batch_size: int, seed: int = 0, datasets_per_batch: int = 1,
                 on_error: str = "stop", examples: dict[str, list[Example]] | None = None):
        if not specs:
            raise ValueError("no training data")
        if batch_size < 1 or datasets_per_batch < 1 or batch_size % datasets_per_batch:
            raise ValueError(f"batch size {batch_size} must be a positive multiple of datasets_per_batch "
                             f"{datasets_per_batch}")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
        self.paths = [str(path) for path, _ in specs]
        if len(set(self.paths)) < len(self.paths):
            raise ValueError(f"{Counter(self.paths).most_common(1)[0][0]}: listed twice")
        self.batch_size, self.seed, self.part_size = batch_size, int(seed), batch_size // datasets_per_batch
        self.datasets_per_batch = datasets_per_batch
        self.weights = np.array([weight for _, weight in specs], np.float64)  # parse_data_specs checked them
        self.data, self.skipped = [], {}  # skipped: {path: {"malformed", "other kind", "kind"}} of each file read
        for path in self.paths:  # every file is read once, up front, so a bad line stops the run before step 1
            if examples is None:
                self.skipped[path] = {}
                rows, _ = read_examples(path, on_error, self.skipped[path])
            else:
                rows = examples.get(path)
            self.data.append(rows)
        self.num_columns = [len(rows[0]) if rows else 0 for rows in self.data]
        for path, rows, c in zip(self.paths, self.data, self.num_columns):
            if not rows or c not in (2, 3) or any(len(ex) != c for ex in rows):
                raise ValueError(f"{path}: expected a non-empty list of examples with 2 or 3 texts each, not mixed")
        self.batches = 0
        self.epoch = [0] * len(specs)
        self.position = [0] * len(specs)  # examples of the current epoch consumed so far, always < len(data)
        self._order = {}  # dataset index -> (epoch, permutation) of its current epoch

    def datasets_for_batch(self, k: int) -> list[int]:
        """The data set of each part of batch k: a pure function of (seed, k)."""
        rng = np.random.default_rng([self.seed, k])
        first = int(rng.choice(len(self.data), p=self.weights / self.weights.sum()))
        same = [i for i, c in enumerate(self.num_columns) if c == self.num_columns[first]]
        p = self.weights[same] / self.weights[same].sum()
        return [first] + [same[int(rng.choice(len(same), p=p))] for _ in range(self.datasets_per_batch - 1)]

    def _next_example(self, i: int) -> Example:
        """The next example of data set i in its shuffled order; a new permutation each epoch."""
        n = len(self.data[i])
        if self._order.get(i, (None,))[0] != self.epoch[i]:
            self._order[i] = (self.epoch[i], np.random.default_rng([self.seed, i, self.epoch[i]]).permutation(n))
        example = self.data[i][self._order[i][1][self.position[i]]]
        self.position[i] += 1
        if self.position[i] == n:
            self.epoch[i], self.position[i] = self.epoch[i] + 1, 0
        return example

    def __next__(self) -> list[Example]:
        batch, seen = [], set()
        for i in self.datasets_for_batch(self.batches):
            part, skipped = [], 0
            while len(part) < self.part_size:
                example = self._next_example(i)
                if any(t in seen for t in example):  # consumed, not retried, as train_script.py
                    skipped += 1
                    if skipped > len(self.data[i]):  # a whole epoch's worth of examples could not be used
                        raise ValueError(f"{self.paths[i]}: cannot fill {self.part_size} examples of a batch with "
                                         f"distinct texts ({len(self.data[i])} examples; {len(part)} taken, "
                                         f"{skipped} skipped because a text was already in the batch)")
                    continue
                seen.update(example)
                part.append(example)
            batch += part
        self.batches += 1
        return batch

    def __iter__(self):
        return self

    def state(self) -> dict:
        """JSON-serialisable position: batches drawn and each data set's epoch and position in it."""
        return {"batches": self.batches,
                "datasets": [{"path": p, "epoch": e, "position": q}
                             for p, e, q in zip(self.paths, self.epoch, self.position)]}

    def load_state(self, state: dict) -> None:
        """Continue exactly where `state()` was taken (the same files, in the same order)."""
        if not isinstance(state, dict) or not all(isinstance(d, dict) for d in state.get("datasets", [None])):
            raise ValueError("data state: expected {'batches', 'datasets': [{'path', 'epoch', 'position'}]}")
        paths = [d.get("path") for d in state["datasets"]]
        if paths != self.paths:
            raise ValueError(f"data state is for the files {paths}, but this run reads {self.paths}")
        ints = [state.get("batches")] + [d.get(k) for d in state["datasets"] for k in ("epoch", "position")]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ints):
            raise ValueError(f"data state: batches, epoch and position must be non-negative integers: {state}")
        for d, rows in zip(state["datasets"], self.data):
            if d["position"] >= len(rows):
                raise ValueError(f"{d['path']}: data state position {d['position']} is past its {len(rows)} "
                                 f"examples; did the file change?")
        self.batches = state["batches"]
        self.epoch = [d["epoch"] for d in state["datasets"]]
        self.position = [d["position"] for d in state["datasets"]]


# ----------------------------------------------------------------------------------------------------------------
# Every example of a file as it stands (distill.py's texts and pairs).


def each_example(name: str):
    """Every example of a pair or triplet file, pairs and triplets mixed or not; a bad line is an error naming file
    and line."""
    parse = _parse_tsv if name.removesuffix(".gz").endswith(".tsv") else _parse_json
    for number, line in read_lines(name):
        if line.strip():
            try:
                yield _parse_line(line, parse)
            except ValueError as e:
                raise ValueError(f"{name}:{number}: {e}") from None
