"""Evaluation: STS (how well the similarity of embeddings ranks sentence pairs against human scores) and retrieval
(how well it ranks documents for queries; minilm/tools/retrieval.py).

    python -m minilm.tools.evaluate --sts stsb-en-test.csv                   # all-MiniLM-L6-v2
    python -m minilm.tools.evaluate --model out/step-0001000 --sts stsb-en-dev.csv
    python -m minilm.tools.evaluate --sts sts.tsv --sts more.jsonl --ir scifact/   # several sets; a BEIR folder

Spearman (rank) and Pearson (linear) correlation x 100 between cos(emb(s1), emb(s2)) and the gold score, as
sentence-transformers' EmbeddingSimilarityEvaluator reports them (its "spearman_cosine" x 100). Ranks of tied
values are their average rank, as scipy.stats.rankdata computes them. STS files: CSV rows sentence1,sentence2,score
(STS-b; an optional header), TSV with a header naming the columns sentence1, sentence2 and score, or JSONL objects
with those keys.
"""
import argparse
import csv
import dataclasses
import sys

import numpy as np

from minilm.data import json_object, read_lines
from minilm.tools.similarity import similarity


@dataclasses.dataclass(frozen=True)
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # float64 [N] gold similarity


STS_COLUMNS = ("sentence1", "sentence2", "score")


def read_sts(path) -> StsPairs:
    """STS pairs from a CSV, TSV or JSONL file (.gz too). Any bad row is an error naming file and line."""
    name = str(path).removesuffix(".gz")
    if name.endswith(".tsv"):
        return read_named_sts(path, "tsv")
    if name.endswith(".jsonl"):
        return read_named_sts(path, "jsonl")
    return read_sts_csv(path)


def sts_pairs(path, rows: list[tuple[str, str, float, int]]) -> StsPairs:
    """(sentence1, sentence2, score, line) rows -> StsPairs, each score checked."""
    for _, _, score, line in rows:
        if not np.isfinite(score):
            raise ValueError(f"{path}:{line}: score {score!r} is not finite")
    if len(rows) < 2:
        raise ValueError(f"{path}: {len(rows)} scored pairs; a correlation needs at least 2")
    return StsPairs([r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows], np.float64))


def read_named_sts(path, kind: str) -> StsPairs:
    """TSV with a header naming sentence1, sentence2, score (other columns ignored), or JSONL objects with them."""
    rows, header = [], None
    for line, text in read_lines(path):
        if not text.strip():
            continue
        if kind == "tsv":
            cells = text.split("\t")
            if header is None:
                header = cells
                missing = [c for c in STS_COLUMNS if c not in header]
                if missing:
                    raise ValueError(f"{path}:{line}: the header must name the columns {', '.join(STS_COLUMNS)}; "
                                     f"missing {', '.join(missing)}")
                continue
            if len(cells) != len(header):
                raise ValueError(f"{path}:{line}: {len(cells)} columns, the header has {len(header)}")
            row = dict(zip(header, cells))
        else:
            row = json_object(path, line, text, STS_COLUMNS)
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line}: score {row['score']!r} is not a number") from None
        rows.append((str(row["sentence1"]), str(row["sentence2"]), score, line))
    return sts_pairs(path, rows)


def read_sts_csv(path) -> StsPairs:
    """An STS-b style CSV: sentence1,sentence2,score per row (quoted as CSV where needed). A first row whose score
    is not a number is taken as a header; any later bad row is an error naming file and line."""
    s1, s2, scores = [], [], []
    reader = csv.reader(text for _, text in read_lines(path))  # a quoted field cannot span lines here
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{line}: expected 3 columns (sentence1,sentence2,score), got {len(row)}")
            try:
                score = float(row[2])
            except ValueError:
                if not scores and line == 1:  # a header row
                    continue
                raise ValueError(f"{path}:{line}: score {row[2]!r} is not a number") from None
            if not np.isfinite(score):
                raise ValueError(f"{path}:{line}: score {row[2]!r} is not finite")
            s1.append(row[0])
            s2.append(row[1])
            scores.append(score)
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV: {e}") from None
    if len(scores) < 2:
        raise ValueError(f"{path}: {len(scores)} scored pairs; a correlation needs at least 2")
    return StsPairs(s1, s2, np.asarray(scores, np.float64))


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the average of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_group = np.r_[True, xs[1:] != xs[:-1]]  # first position of each run of equal values
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ((first + last) / 2 + 1)[group]
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a), rankdata(b))


def evaluate_sts(pairs: StsPairs, model=None, fn: str | None = None, **embed_options) -> dict[str, float]:
    """{"spearman", "pearson"} x 100 of the pairs' similarity against gold scores, by fn (default: the model
    folder's similarity function, cosine for all-MiniLM-L6-v2); each distinct sentence is embedded once, with the
    fast path (embed_options: those of minilm.embed; fast=False takes the plain path)."""
    from minilm.fast.embedding import embed
    from minilm.st.folder import get_model

    m = get_model(model)
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    row = {s: i for i, s in enumerate(unique)}
    emb = embed(unique, m, **embed_options)
    scores = similarity(emb[[row[s] for s in pairs.sentences1]], emb[[row[s] for s in pairs.sentences2]],
                        fn or m.similarity_fn, pairs=True)
    return {"spearman": 100 * spearman(scores, pairs.scores), "pearson": 100 * pearson(scores, pairs.scores),
            "pairs": len(pairs.scores)}


def ir_line(name: str, result: dict) -> str:
    """One line for a retrieval result, like the STS line."""
    names = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "Recall"}
    metrics = "  ".join(f"{names[k.split('@')[0]]}@{k.split('@')[1]} {v:.2f}" for k, v in result.items() if "@" in k)
    return f"{name}: {result['queries']} queries, {result['documents']} documents  {metrics}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sts", action="append", default=[], metavar="FILE",
                   help="STS pairs: CSV sentence1,sentence2,score, or TSV / JSONL with those named columns "
                        "(repeatable)")
    p.add_argument("--ir", action="append", default=[], metavar="DIR",
                   help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv (repeatable)")
    p.add_argument("--model", metavar="DIR", help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="tokens per text including special tokens (default: the model's)")
    p.add_argument("--layers", type=int, help="use only the first N encoder layers")
    p.add_argument("--dim", type=int, help="keep the first D dimensions")
    p.add_argument("--similarity-fn", choices=("cosine", "dot", "euclidean", "manhattan"),
                   help="how pairs and documents are scored (default: the model folder's similarity_fn_name)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if not args.sts and not args.ir:
        p.error("nothing to evaluate: give --sts FILE and/or --ir DIR")
    options = dict(batch_size=args.batch_size, max_length=args.max_length, num_layers=args.layers, dim=args.dim)
    try:
        from minilm.st.folder import get_model
        from minilm.tools.retrieval import evaluate_ir, read_beir
        sets = [("sts", path, read_sts(path)) for path in args.sts] + \
            [("ir", path, read_beir(path)) for path in args.ir]  # every file is checked before the model loads
        model = get_model(args.model)
        for kind, path, data in sets:
            if kind == "sts":
                result = evaluate_sts(data, model, args.similarity_fn, progress=False if args.quiet else None,
                                      **options)
                print(f"{path}: {result['pairs']} pairs  spearman {result['spearman']:.2f}  "
                      f"pearson {result['pearson']:.2f}")
            else:
                result = evaluate_ir(data, model, args.similarity_fn, progress=False if args.quiet else None,
                                     **options)
                print(ir_line(path, result))
    except (ValueError, FileNotFoundError) as e:
        print(f"minilm.tools.evaluate: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
