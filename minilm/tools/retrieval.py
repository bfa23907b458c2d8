"""Retrieval evaluation on a BEIR-layout folder: embed the queries and the corpus, rank the corpus for each query,
score the ranking against the relevance judgements (docs/evaluation.md).

    folder/corpus.jsonl      {"_id": ..., "title": ..., "text": ...}   documents, embedded as title + " " + text
    folder/queries.jsonl     {"_id": ..., "text": ...}
    folder/qrels/test.tsv    query-id <tab> corpus-id <tab> score      (a header line; score > 0 is relevant)

The metrics are sentence-transformers' InformationRetrievalEvaluator's, with binary relevance: for each query with
at least one relevant document, the corpus ranked by similarity (ties by ascending corpus id), then

    nDCG@k    sum_{i<=k} rel_i / log2(i + 1), over the same for a ranking of all relevant documents first
    MRR@k     1 / rank of the first relevant document in the top k (0 if none)
    MAP@k     sum over relevant hits in the top k of (hits so far / rank), over min(k, #relevant)
    Recall@k  relevant documents in the top k / #relevant

averaged over queries. Queries and documents are embedded with the fast path (progress shown for long corpora).
"""
import dataclasses
import math
import pathlib

import numpy as np

from minilm.data import json_object, read_lines
from minilm.tools.similarity import similarity

CUTOFFS = {"ndcg": (10,), "mrr": (10,), "map": (100,), "recall": (1, 10, 100)}


@dataclasses.dataclass(frozen=True)
class Beir:
    queries: dict[str, str]  # query id -> text
    corpus: dict[str, str]  # document id -> title + " " + text
    relevant: dict[str, set[str]]  # query id -> relevant document ids


def read_jsonl(path: pathlib.Path, keys: tuple[str, ...]) -> list[dict]:
    return [json_object(path, number, line, keys) for number, line in read_lines(path) if line.strip()]


def read_beir(folder, split: str = "test") -> Beir:
    """A BEIR-layout folder -> Beir. Errors name the file and line."""
    folder = pathlib.Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing (a BEIR folder holds corpus.jsonl, queries.jsonl and "
                                    f"qrels/{split}.tsv)")
    corpus = {str(r["_id"]): (str(r.get("title") or "") + " " + str(r["text"])).strip()
              for r in read_jsonl(folder / "corpus.jsonl", ("_id", "text"))}
    queries = {str(r["_id"]): str(r["text"]) for r in read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    relevant: dict[str, set[str]] = {}
    qrels = folder / "qrels" / f"{split}.tsv"
    for number, line in read_lines(qrels):
        columns = line.split("\t")
        if not line.strip() or (number == 1 and columns[0] == "query-id"):
            continue
        if len(columns) != 3:
            raise ValueError(f"{qrels}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score)")
        try:
            score = float(columns[2])
        except ValueError:
            raise ValueError(f"{qrels}:{number}: score {columns[2]!r} is not a number") from None
        if score > 0:
            relevant.setdefault(columns[0], set()).add(columns[1])
    return Beir(queries, corpus, relevant)


def id_order(corpus_ids: list[str]) -> np.ndarray:
    """[N] each document's place when the ids are sorted ascending: the tie-break of equal scores."""
    order = np.empty(len(corpus_ids), np.int64)
    order[np.argsort(np.array(corpus_ids, dtype=object), kind="stable")] = np.arange(len(corpus_ids))
    return order


def rank(query_QD, corpus_ND, corpus_ids: list[str], k: int, fn: str = "cosine",
         chunk: int = 50_000) -> list[list[str]]:
    """For each query, the ids of its top k documents by similarity, ties by ascending corpus id (as
    sentence-transformers ranks), the corpus scored chunk by chunk."""
    id_rank = id_order(corpus_ids)
    best = [np.zeros(0, np.int64) for _ in range(len(query_QD))]
    best_scores = [np.zeros(0, np.float32) for _ in range(len(query_QD))]
    for start in range(0, len(corpus_ids), chunk):
        scores_QC = similarity(query_QD, corpus_ND[start:start + chunk], fn)
        for q in range(len(query_QD)):
            index = np.concatenate([best[q], start + np.arange(scores_QC.shape[1])])
            scores = np.concatenate([best_scores[q], scores_QC[q]])
            order = np.lexsort((id_rank[index], -scores))[:k]
            best[q], best_scores[q] = index[order], scores[order]
    return [[corpus_ids[i] for i in row] for row in best]


def dcg(relevances) -> float:
    return sum(r / math.log2(i + 2) for i, r in enumerate(relevances))


def ranking_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """The CUTOFFS metrics x 100, averaged over the queries (see the module docstring)."""
    out = {f"{name}@{k}": 0.0 for name, ks in CUTOFFS.items() for k in ks}
    for hits, rel in zip(ranked, relevant):
        is_rel = [doc in rel for doc in hits]
        for k in CUTOFFS["ndcg"]:
            out[f"ndcg@{k}"] += dcg(is_rel[:k]) / dcg([1] * min(len(rel), k))
        for k in CUTOFFS["mrr"]:
            out[f"mrr@{k}"] += next((1 / (i + 1) for i, r in enumerate(is_rel[:k]) if r), 0.0)
        for k in CUTOFFS["map"]:
            found, precisions = 0, 0.0
            for i, r in enumerate(is_rel[:k]):
                if r:
                    found += 1
                    precisions += found / (i + 1)
            out[f"map@{k}"] += precisions / min(k, len(rel))
        for k in CUTOFFS["recall"]:
            out[f"recall@{k}"] += sum(is_rel[:k]) / len(rel)
    return {name: 100 * value / len(ranked) for name, value in out.items()}


def evaluate_ir(beir: Beir, model=None, fn: str | None = None, **embed_options) -> dict[str, float]:
    """{metric: value x 100, "queries": Q, "documents": N} of a model on a Beir set; fn: the similarity function
    (default: the model folder's)."""
    from minilm.fast.embedding import embed
    from minilm.st.folder import get_model

    m = get_model(model)
    query_ids = [q for q in beir.queries if beir.relevant.get(q)]  # queries without a relevant document are skipped
    if not query_ids:
        raise ValueError("no query has a relevant document in the qrels")
    corpus_ids = list(beir.corpus)
    query_QD = embed([beir.queries[q] for q in query_ids], m, **{**embed_options, "progress": False})
    corpus_ND = embed([beir.corpus[c] for c in corpus_ids], m, **embed_options)
    k = max(k for ks in CUTOFFS.values() for k in ks)
    ranked = rank(query_QD, corpus_ND, corpus_ids, k, fn or m.similarity_fn)
    metrics = ranking_metrics(ranked, [beir.relevant[q] for q in query_ids])
    return {**metrics, "queries": len(query_ids), "documents": len(corpus_ids)}
