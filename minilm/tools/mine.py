"""Hard-negative mining: turn (anchor, positive) pairs into (anchor, positive, negative) triplets for train.py, the way
sentence-transformers' mine_hard_negatives does, with the same options and the same triplets.

    python -m minilm.tools.mine --data pairs.jsonl.gz --out triplets.jsonl --num-negatives 3 --range-min 10 \
        --range-max 50 --relative-margin 0.05

For each distinct anchor, the corpus (every distinct positive, plus --corpus texts) is ranked by similarity to it
(the model's own similarity function over normalised embeddings, with the folder's "query" / "document" prompts);
candidates are dropped if they are the anchor itself or any of its positives, come within the margin of its
hardest positive (absolute: neg + m > pos; relative: neg > pos - |pos| m), score above --max-score or below
--min-score; of what remains, ranks range_min..range_max are kept and the top --num-negatives taken (or a seeded
random sample of them). Each (anchor, positive) pair gives one triplet per negative found (docs/contrastive.md).
"""
import argparse
import json
import os
import pathlib
import random
import sys

import numpy as np


def default_range_max(range_min: int, num_negatives: int, max_positives: int, filtered: bool) -> int:
    """sentence-transformers' default: room for 10x the negatives when filters will drop candidates."""
    return range_min + num_negatives * (10 if filtered else 1) + max_positives


def mine(pairs: list[tuple[str, str]], model=None, corpus: list[str] | None = None, *, num_negatives: int = 3,
         range_min: int = 0, range_max: int | None = None, max_score: float | None = None,
         min_score: float | None = None, absolute_margin: float | None = None, relative_margin: float | None = None,
         sampling: str = "top", seed: int = 0, batch_size: int = 32, progress=None) -> list[tuple[str, str, str]]:
    """(anchor, positive) pairs -> (anchor, positive, negative) triplets, grouped by distinct anchor in order of first
    appearance, each anchor's positives in order, each positive's negatives best first."""
    from minilm.fast.embedding import embed
    from minilm.st.folder import get_model
    from minilm.tools.similarity import similarity

    m = get_model(model)
    if num_negatives < 1:
        raise ValueError(f"--num-negatives must be at least 1, got {num_negatives}")
    if sampling not in ("top", "random"):
        raise ValueError(f"--sampling must be top or random, got {sampling!r}")
    anchors_all, positives_all = [a for a, _ in pairs], [p for _, p in pairs]
    corpus = list(dict.fromkeys((corpus or []) + positives_all))  # every positive is a candidate too
    corpus_index = {t: i for i, t in enumerate(corpus)}
    anchors = list(dict.fromkeys(anchors_all))
    anchor_index = {t: i for i, t in enumerate(anchors)}
    rows_per_anchor = np.bincount([anchor_index[a] for a in anchors_all], minlength=len(anchors))
    max_positives = int(rows_per_anchor.max())
    filtered = absolute_margin is not None or relative_margin is not None or max_score is not None
    range_max = default_range_max(range_min, num_negatives, max_positives, filtered) if range_max is None else range_max
    if range_min < 0 or range_min >= range_max:
        raise ValueError(f"--range-min {range_min} must be >= 0 and below --range-max {range_max}")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine {num_negatives} negatives: only {range_max - range_min} candidates remain "
                         f"between --range-min {range_min} and --range-max {range_max}")

    # Embed both sides (normalised), and keep each anchor's best candidates.
    def embed_side(texts: list[str], what: str, prompt_name: str) -> np.ndarray:  # a line says which pass it is
        if progress is not False and (progress or len(texts) >= 1000):
            print(f"embedding {len(texts):,} {what}", file=sys.stderr, flush=True)
        return embed(texts, m, batch_size=batch_size, normalize=True, prompt_name=prompt_name, progress=progress)

    corpus_ND = embed_side(corpus, "corpus texts (the positives and candidate negatives)", "document")
    query_QD = embed_side(anchors, "anchors (the queries)", "query")
    candidates = range_max + max_positives + 1  # room for the anchor itself and its positives, dropped below
    k = min(candidates, len(corpus))
    scores_QK = np.full((len(anchors), candidates), -np.inf, np.float32)
    index_QK = np.full((len(anchors), candidates), -1, np.int64)
    for start in range(0, len(anchors), 4096):  # a chunk of anchors at a time: memory of 4096 x corpus scores
        s_QN = similarity(query_QD[start:start + 4096], corpus_ND, m.similarity_fn)
        top_QK = np.argsort(-s_QN, axis=1, kind="stable")[:, :k]
        index_QK[start:start + 4096, :k] = top_QK
        scores_QK[start:start + 4096, :k] = np.take_along_axis(s_QN, top_QK, axis=1)

    # Each anchor's distinct positives, and their scores (the hardest one sets the margin).
    positives = [[] for _ in anchors]
    for a, p in zip(anchors_all, positives_all):
        if corpus_index[p] not in positives[anchor_index[a]]:
            positives[anchor_index[a]].append(corpus_index[p])
    hardest = np.array([similarity(query_QD[q:q + 1], corpus_ND[rows], m.similarity_fn).min()
                        for q, rows in enumerate(positives)], np.float32)

    # Drop the anchor itself, its positives, and what the filters exclude.
    for q, a in enumerate(anchors):
        own = [corpus_index[a]] if a in corpus_index else []
        scores_QK[q, np.isin(index_QK[q], own + positives[q])] = -np.inf
    scores_QK[index_QK < 0] = -np.inf
    if absolute_margin is not None:
        scores_QK[scores_QK + absolute_margin > hardest[:, None]] = -np.inf
    if relative_margin is not None:
        scores_QK[scores_QK > (hardest - np.abs(hardest) * relative_margin)[:, None]] = -np.inf
    if max_score is not None:
        scores_QK[scores_QK > max_score] = -np.inf
    if min_score is not None:
        scores_QK[(scores_QK < min_score) & np.isfinite(scores_QK)] = -np.inf

    # Ranks range_min..range_max of what is left; the top num_negatives of them, or a random sample.
    order_QK = np.argsort(-scores_QK, axis=1, kind="stable")[:, :range_max][:, range_min:]
    scores_QK = np.take_along_axis(scores_QK, order_QK, axis=1)
    index_QK = np.take_along_axis(index_QK, order_QK, axis=1)
    rng = random.Random(seed)
    triplets = []
    for q, a in enumerate(anchors):
        if sampling == "top":
            chosen = range(num_negatives)
        else:  # sample among the finite candidates (all of them if too few), then best first
            options = max(int(np.isfinite(scores_QK[q]).sum()), num_negatives)
            chosen = sorted(rng.sample(range(options), k=num_negatives), key=lambda j: -scores_QK[q, j])
        negatives = [corpus[index_QK[q, j]] for j in chosen if np.isfinite(scores_QK[q, j])]
        triplets += [(a, corpus[p], n) for p in positives[q] for n in negatives]
    return triplets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minilm.tools.mine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="FILE", help="pairs (anchor, positive): .jsonl or .tsv, .gz too")
    p.add_argument("--out", required=True, metavar="FILE", help="triplets as JSONL {anchor, positive, negative}")
    p.add_argument("--model", metavar="DIR", help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--corpus", metavar="FILE", help="more candidate texts, one a line (the positives always are)")
    p.add_argument("--num-negatives", type=int, default=3, help="negatives per pair (default 3)")
    p.add_argument("--range-min", type=int, default=0, help="skip the best N candidates (default 0)")
    p.add_argument("--range-max", type=int, help="consider candidates up to this rank (default: enough for "
                                                 "--num-negatives, 10x that with a margin or --max-score)")
    p.add_argument("--max-score", type=float, help="drop candidates scoring above this")
    p.add_argument("--min-score", type=float, help="drop candidates scoring below this")
    p.add_argument("--absolute-margin", type=float, help="drop candidates with score + margin > the positive's")
    p.add_argument("--relative-margin", type=float, help="drop candidates above positive - |positive| x margin")
    p.add_argument("--sampling", choices=("top", "random"), default="top", help="the best candidates, or a random "
                                                                                "sample of them (default top)")
    p.add_argument("--seed", type=int, default=0, help="for --sampling random")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        from minilm.data import read_examples, read_lines
        examples, _ = read_examples(args.data)
        if len(examples[0]) != 2:
            raise ValueError(f"{args.data}: {len(examples[0])} texts a line; mining needs (anchor, positive) pairs")
        corpus = [t for _, t in read_lines(args.corpus) if t.strip()] if args.corpus else None
        triplets = mine(examples, args.model, corpus, num_negatives=args.num_negatives, range_min=args.range_min,
                        range_max=args.range_max, max_score=args.max_score, min_score=args.min_score,
                        absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
                        sampling=args.sampling, seed=args.seed, batch_size=args.batch_size,
                        progress=False if args.quiet else None)
        out = pathlib.Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for a, pos, neg in triplets:
                f.write(json.dumps({"anchor": a, "positive": pos, "negative": neg}, ensure_ascii=False) + "\n")
        tmp.replace(out)
    except (ValueError, OSError) as e:
        print(f"minilm.tools.mine: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(triplets):,} triplets from {len(examples):,} pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
