"""STS evaluation: how well cosine similarity of embeddings ranks sentence pairs against human scores.

    python -m minilm.evaluate --sts stsb-en-test.csv                   # all-MiniLM-L6-v2
    python -m minilm.evaluate --model out/step-0001000 --sts stsb-en-dev.csv

Spearman (rank) and Pearson (linear) correlation x 100 between cos(emb(s1), emb(s2)) and the gold score, as
sentence-transformers' EmbeddingSimilarityEvaluator reports them (its "spearman_cosine" x 100). Ranks of tied
values are their average rank, as scipy.stats.rankdata computes them.
"""
import argparse
import csv
import dataclasses
import sys

import numpy as np

from minilm.files import read_lines
from minilm.model import l2_normalize


@dataclasses.dataclass(frozen=True)
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # float64 [N] gold similarity


def read_sts(path) -> StsPairs:
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


def evaluate_sts(pairs: StsPairs, model=None, **embed_options) -> dict[str, float]:
    """{"spearman", "pearson"} x 100 of cosine similarity against gold scores; each distinct sentence is
    embedded once, with the fast path (embed_options: those of minilm.embed; fast=False takes the plain path)."""
    from minilm.fast.embedding import embed

    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    row = {s: i for i, s in enumerate(unique)}
    emb = np.asarray(l2_normalize(embed(unique, model, **embed_options)), np.float64)
    a = emb[[row[s] for s in pairs.sentences1]]
    b = emb[[row[s] for s in pairs.sentences2]]
    cosine = (a * b).sum(axis=1)
    return {"spearman": 100 * spearman(cosine, pairs.scores), "pearson": 100 * pearson(cosine, pairs.scores),
            "pairs": len(pairs.scores)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sts", required=True, metavar="FILE", help="CSV of sentence1,sentence2,score")
    p.add_argument("--model", metavar="DIR", help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="tokens per text including special tokens (default: the model's)")
    p.add_argument("--layers", type=int, help="use only the first N encoder layers")
    p.add_argument("--dim", type=int, help="keep the first D dimensions")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        pairs = read_sts(args.sts)
        result = evaluate_sts(pairs, args.model, batch_size=args.batch_size, max_length=args.max_length,
                              progress=False if args.quiet else None,
                              num_layers=args.layers, dim=args.dim)
    except (ValueError, FileNotFoundError) as e:
        print(f"minilm.evaluate: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.sts}: {result['pairs']} pairs  spearman {result['spearman']:.2f}  pearson {result['pearson']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
