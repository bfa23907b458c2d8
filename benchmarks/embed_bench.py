"""Embedding speed: minilm against sentence-transformers (torch) and ONNX Runtime, on the same texts, in one run.

    pip install -e ".[test,bench]"      # sentence-transformers (torch CPU) and onnxruntime are the peers
    python benchmarks/embed_bench.py      # STS-b test sentences at batch 32 and 128, wiki paragraphs at batch 32
    python benchmarks/embed_bench.py --no-paragraphs --no-cold-start --engines minilm,ort    # a quicker look

Short texts (the unique sentences of an STS file, or the lines of a file) and long ones (paragraphs of 10
consecutive Wikipedia sentences, about 250 tokens). For each engine and batch size: texts/s end to end and model
only, the largest difference from sentence-transformers' embeddings, the useful GFLOP/s against the best matmul
GFLOP/s any library here reaches on the model's shapes, the op time by class (op_profile.py), and the same packed
forwards with the six projections alone ("minilm, projections"); then minilm's first call and the whole-process
time of `python embed.py "one sentence"` against a sentence-transformers one-liner. Peers that are not installed
are skipped. Timings are wall-clock; run it on an otherwise idle machine. How to read it: docs/benchmarks.md.
"""
import argparse
import functools
import gzip
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import host  # noqa: E402
import op_profile  # noqa: E402
from host import timed  # noqa: E402
from minilm.fast import embedding as fast, xla  # noqa: E402
from minilm.fast.embedding import plan_packed, plan_padded  # noqa: E402
from minilm.model import linear  # noqa: E402
from minilm.st import folder  # noqa: E402
from minilm.tools.evaluate import read_sts  # noqa: E402


def read_texts(path, join: int = 1, limit: int | None = None) -> list[str]:
    """Texts of a file of one text per line (.gz read as gzip), `join` consecutive lines to a text (paragraphs
    from a file of sentences), the first `limit` texts."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return [" ".join(lines[i:i + join]) for i in range(0, len(lines) - join + 1, join)][:limit]


def useful_flops(lengths, cfg) -> float:
    """Multiply-adds x 2 of the real tokens: per layer and token the Q, K, V, output and two FFN matmuls, and per
    text n^2 D twice in attention (scores and the weighted sum of values)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    n = np.asarray(lengths, np.float64)
    return float(L * (2 * n.sum() * (4 * D * D + 2 * D * F) + 4 * (n * n).sum() * D))


def matmul_peaks(cfg, repeats: int = 20) -> dict[str, float]:
    """Best GFLOP/s of x @ w on the model's shapes ([M, D] x [D, D], [D, F], [F, D], M = 4,096) with each CPU matmul
    library XLA offers (minilm/fast/xla.py), and with torch where installed. The machine's peak is the best of
    them: the fastest matmul any engine on this machine could use."""
    matmuls = {}  # name: (matmul(x, w), ones(shape) making its inputs)
    for name, options in (xla.MATMUL_LIBRARIES if jax.default_backend() == "cpu" else {"default": {}}).items():
        f = jax.jit(lambda x, w: x @ w, compiler_options=options or None)
        matmuls[f"XLA {name}"] = (lambda x, w, f=f: f(x, w).block_until_ready(), lambda s: jnp.ones(s, jnp.float32))
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
        matmuls["torch"] = (lambda x, w: x @ w, torch.ones)
    except ImportError:
        pass
    D, F, M = cfg.hidden_size, cfg.intermediate_size, 4096

    def gflops(matmul, ones, k, n):
        x, w = ones((M, k)), ones((k, n))
        matmul(x, w)
        return 2 * M * k * n / min(timed(matmul, repeats, x, w)) / 1e9

    peaks = {}
    for name, (matmul, ones) in matmuls.items():
        try:
            peaks[name] = max(gflops(matmul, ones, k, n) for k, n in ((D, D), (D, F), (F, D)))
        except Exception as e:  # noqa: BLE001 - a jaxlib that does not know the option
            print(f"skipping {name}: {e}", file=sys.stderr)
    return peaks


class Minilm:
    def __init__(self, model, pack: bool):
        self.model, self.pack = model, pack
        self.name = "minilm packed" if pack else "minilm padded"

    def end_to_end(self, texts, batch_size):
        return fast.embed(texts, self.model, batch_size=batch_size, pack=self.pack, progress=False)

    def prepare(self, texts, batch_size):
        """Tokenize and plan once, so that model_only times the forwards alone."""
        ids = [e.ids for e in self.model.tokenizer.encode_batch(texts)]
        lengths = [len(x) for x in ids]
        plan = plan_packed(lengths, fast.packed_tokens(batch_size)) if self.pack else plan_padded(lengths, batch_size)
        return plan, [fwd.arrays(ids, self.model.tokenizer.pad_id) for fwd in plan]

    def model_only(self, prepared):
        m, forward = self.model, fast.compiled_embed_rows()
        with jax.default_matmul_precision("highest"):
            jax.block_until_ready([forward(m.params, *a, cfg=m.config, pooling=m.pooling, normalize=m.normalize,
                                           slots=fwd.slots) for fwd, a in zip(*prepared)])

    def projections(self, prepared):
        """The same forwards with nothing but the six projections of each layer (Q, K, V, attention output, the two
        feed-forward matmuls, with their biases): no attention, LayerNorm, GELU or pooling. Its time is the floor
        that XLA's matmul kernels set on this machine."""
        with jax.default_matmul_precision("highest"):
            jax.block_until_ready([projections_only()(self.model.params, a[0]) for a in prepared[1]])

    def profile(self, prepared):
        return op_profile.minilm_profile(self.model, prepared)


@functools.cache
def projections_only():
    return jax.jit(projections, compiler_options=xla.compiler_options())  # as the fast path compiles its forward


def projections(params, ids_BT):
    h = params["embeddings"]["word_embeddings"]["weight"][ids_BT]
    for p in params["encoder"]["layer"]:
        sa = p["attention"]["self"]
        qkv = linear(sa["query"], h) + linear(sa["key"], h) + linear(sa["value"], h)
        a = linear(p["attention"]["output"]["dense"], qkv) + h
        h = linear(p["output"]["dense"], linear(p["intermediate"]["dense"], a)) + a
    return h


class SentenceTransformers:
    name = "sentence-transformers"

    def __init__(self, model_dir):
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(os.cpu_count())
        self.model = SentenceTransformer(str(model_dir), device="cpu")

    def end_to_end(self, texts, batch_size):
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True)

    def prepare(self, texts, batch_size):  # the same length-sorted batches encode() makes, tokenized in advance
        order = np.argsort([-len(t) for t in texts], kind="stable")
        return [self.model.tokenize([texts[i] for i in order[b:b + batch_size]])
                for b in range(0, len(texts), batch_size)]

    def model_only(self, prepared):
        import torch
        with torch.inference_mode():
            for features in prepared:
                self.model(features)

    def profile(self, prepared):
        return op_profile.torch_profile(self, prepared)


class OnnxRuntime:
    """The model exported from transformers' BertModel to ONNX, fused by onnxruntime's BERT optimizer, on the CPU
    provider; tokenization by `tokenizers`, length-sorted batches padded to their longest text, mean pooling and
    L2 normalisation in numpy: the usual ONNX serving path."""
    name = "onnxruntime"

    def __init__(self, model_dir, work: pathlib.Path):
        import onnxruntime as ort
        import torch
        from tokenizers import Tokenizer
        from transformers import BertModel
        bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
        names = ["input_ids", "attention_mask", "token_type_ids"]
        path, ids = work / "model.onnx", torch.ones((2, 8), dtype=torch.long)

        class LastHidden(torch.nn.Module):  # by keyword: BertModel's positional order changes across versions
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, *inputs):
                return self.bert(**dict(zip(names, inputs))).last_hidden_state

        with torch.no_grad():
            torch.onnx.export(LastHidden().eval(), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=False,
                              opset_version=17, input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]})
        try:
            from onnxruntime.transformers.optimizer import optimize_model
            cfg = bert.config
            optimized = optimize_model(str(path), model_type="bert", num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size)
            path = work / "model.opt.onnx"
            optimized.save_model_to_file(str(path))
            self.name = "onnxruntime (fused)"
        except Exception as e:  # an older onnxruntime without the optimizer: the plain graph, ORT_ENABLE_ALL
            print(f"onnxruntime transformer optimizer unavailable ({e}); using the plain graph", file=sys.stderr)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = os.cpu_count()
        self.dim = bert.config.hidden_size
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path  # op_profile.ort_profile opens a second session of it
        self.tokenizer = Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
        self.tokenizer.enable_truncation(256)
        self.tokenizer.no_padding()

    def prepare(self, texts, batch_size):
        """(text indices, ids, mask) of each length-sorted batch, padded to its longest text ([PAD] is id 0)."""
        enc = self.tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in enc], kind="stable")
        batches = []
        for idx in (order[b:b + batch_size] for b in range(0, len(texts), batch_size)):
            ids = np.zeros((len(idx), len(enc[idx[0]].ids)), np.int64)
            for r, i in enumerate(idx):
                ids[r, :len(enc[i].ids)] = enc[i].ids
            batches.append((idx, ids, (ids != 0).astype(np.int64)))
        return batches

    def run(self, ids, mask):
        h = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        emb = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def end_to_end(self, texts, batch_size):
        out = np.zeros((len(texts), self.dim), np.float32)
        for idx, ids, mask in self.prepare(texts, batch_size):
            out[idx] = self.run(ids, mask)
        return out

    def model_only(self, prepared):
        for _, ids, mask in prepared:
            self.run(ids, mask)

    def profile(self, prepared):
        return op_profile.ort_profile(self, prepared)


def cold_start(model_dir, repeats: int) -> list[tuple[str, float]]:
    """Whole-process seconds, alternated `repeats` times: `python embed.py "A man is eating food."` with an empty
    compilation cache (a new user's first run), the same again with that cache warm, and the sentence-transformers
    one-liner (which has no cache of its own to fill)."""
    sentence = "A man is eating food."
    one_liner = ("from sentence_transformers import SentenceTransformer; "
                 f"print(SentenceTransformer({str(model_dir)!r}, device='cpu').encode([{sentence!r}])[0][:3])")
    ours = [sys.executable, str(REPO / "embed.py"), "--model", str(model_dir), sentence]
    seconds = lambda argv, env: timed(lambda: subprocess.run(argv, env=env, check=True, capture_output=True), 1)[0]
    results = []
    for i in range(1, repeats + 1):
        cache = tempfile.mkdtemp(prefix="minilm-cache-")
        env = {k: v for k, v in os.environ.items() if k != "MINILM_CPU_MATMULS"} | {"MINILM_COMPILE_CACHE": cache}
        results.append((f"{i}: embed.py, empty cache", seconds(ours, env)))
        results.append((f"{i}: embed.py, cache warm", seconds(ours, env)))
        shutil.rmtree(cache, ignore_errors=True)
        try:
            results.append((f"{i}: sentence-transformers one-liner", seconds(
                [sys.executable, "-c", one_liner], {**os.environ, "HF_HUB_OFFLINE": "1"})))
        except subprocess.CalledProcessError as e:
            print(f"sentence-transformers one-liner failed: {e.stderr.decode()[-300:]}", file=sys.stderr)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sts", default=str(REPO.parent / "shared/data/stsb/stsb-en-test.csv"),
                   help="short texts: the unique sentences of this STS file (default: the STS-b test split)")
    p.add_argument("--texts", default=None, help="instead of --sts: a file of one text per line (.gz too)")
    p.add_argument("--join", type=int, default=1, help="with --texts: join this many lines into one text")
    p.add_argument("--limit", type=int, default=None, help="with --texts: the first N texts")
    p.add_argument("--batch-sizes", default="32,128", help="batch sizes for the short texts")
    p.add_argument("--paragraphs", default=str(REPO.parent / "shared/data/unlabeled_text/wiki_sentences.txt.gz"),
                   help="long texts in the same run: 10 consecutive lines of this file joined into one paragraph "
                        "(about 250 tokens), the first --paragraph-limit of them")
    p.add_argument("--paragraph-limit", type=int, default=256)
    p.add_argument("--paragraph-batch-sizes", default="32")
    p.add_argument("--no-paragraphs", action="store_true", help="the short texts only")
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engines", default="minilm,st,ort", help="any of minilm,st,ort")
    p.add_argument("--no-cold-start", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="skip the op-time split by class")
    p.add_argument("--json", metavar="FILE", help="also append each engine's median end-to-end texts/s to FILE "
                   "(JSON lines: model, layers, hidden, engine, batch, texts_per_s)")
    args = p.parse_args(argv)

    model_dir = pathlib.Path(args.model) if args.model else folder.default_model_dir()
    model = folder.get_model(model_dir)
    if args.texts:
        short = read_texts(args.texts, args.join, args.limit)
    else:
        sts = read_sts(args.sts)
        short = list(dict.fromkeys(t for pair in zip(sts.sentences1, sts.sentences2) for t in pair))
    sets = [("short texts: " + (args.texts or args.sts), short, args.batch_sizes)]
    if not args.no_paragraphs:
        sets.append((f"paragraphs: {args.paragraphs}, 10 lines each",
                     read_texts(args.paragraphs, 10, args.paragraph_limit), args.paragraph_batch_sizes))
    print(f"{host.cpu_name()}, {os.cpu_count()} CPU cores; jax {jax.__version__} on {jax.devices()[0].platform}")
    peaks = matmul_peaks(model.config)
    peak = max(peaks.values())
    print("matmul on the model's shapes, best GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + f"; peak {peak:.0f} (minilm's matmuls here: XLA {xla.matmul_library()})")

    engines, names = [], args.engines.split(",")
    if "minilm" in names:
        first = timed(lambda: fast.embed(short, model, batch_size=32, progress=False), 1)[0]
        print(f"minilm first call (tokenize, compile {len(fast.TRACES)} shapes, run): {first:.2f} s")
        engines += [Minilm(model, pack=True), Minilm(model, pack=False)]
    work = pathlib.Path(tempfile.mkdtemp(prefix="embed-bench-"))
    for name, make in (("st", lambda: SentenceTransformers(model_dir)), ("ort", lambda: OnnxRuntime(model_dir, work))):
        if name in names:
            try:
                engines.append(make())
            except ImportError as e:
                print(f"skipping {name}: {e}", file=sys.stderr)
    for label, texts, batch_sizes in sets:
        measure(label, texts, [int(b) for b in batch_sizes.split(",")], engines, model, model_dir, peak, args)
    shutil.rmtree(work, ignore_errors=True)
    if not args.no_cold_start:
        print("\ncold start, whole process, seconds (alternated):")
        for k, v in cold_start(model_dir, 3):
            print(f"  {k:<40} {v:.2f}")


def measure(label, texts, batch_sizes, engines, model, model_dir, peak, args) -> None:
    """Every engine at every batch size on these texts: the table, the op-time split and the ratios."""
    lengths = [len(e.ids) for e in model.tokenizer.encode_batch(texts)]
    flops = useful_flops(lengths, model.config)
    print(f"\n== {label}\n{len(texts)} texts, {sum(lengths):,} tokens (mean {np.mean(lengths):.1f}), useful work "
          f"{flops / 1e9:.0f} GFLOP")
    reference, rows, floors = {}, [], []
    for bs in batch_sizes:
        for eng in engines:
            emb = eng.end_to_end(texts, bs)  # also the warm-up (compiles any new shape)
            if eng.name == "sentence-transformers":
                reference[bs] = emb
            before = host.cpu_times()
            e2e = timed(eng.end_to_end, args.repeats, texts, bs)
            prepared = eng.prepare(texts, bs)
            eng.model_only(prepared)
            only = timed(eng.model_only, args.repeats, prepared)
            steal = host.steal_share(before, host.cpu_times())
            rows.append((bs, eng.name, e2e, only, emb, None if args.no_profile else eng.profile(prepared), steal))
            if eng.name == "minilm packed":
                eng.projections(prepared)
                floors.append((bs, statistics.median(timed(eng.projections, args.repeats, prepared))))

    print(f"\n{'batch':>5}  {'engine':<22} {'end to end, texts/s (min / median / max)':>44}  "
          f"{'model only, median':>18}  {'max |diff| vs ST':>16}  useful GFLOP/s (% of peak)  host steal")
    rate = lambda t: len(texts) / t
    for bs, name, e2e, only, emb, _, steal in rows:
        diff = f"{np.abs(emb - reference[bs]).max():.1e}" if bs in reference else "-"
        med = statistics.median(only)
        useful = f"{flops / med / 1e9:.0f} ({100 * flops / med / 1e9 / peak:.0f}%)"
        print(f"{bs:>5}  {name:<22} {rate(max(e2e)):>14.0f} / {rate(statistics.median(e2e)):>6.0f} / "
              f"{rate(min(e2e)):>6.0f}            {rate(med):>12.0f}        {diff:>16}  {useful:<28}"
              f"{host.percent(steal):>10}")
    for bs, seconds in floors:
        print(f"{bs:>5}  {'minilm, projections':<22} {'(the same packed forwards, the six projections alone)':>44}"
              f"  {rate(seconds):>12.0f}")
    if not args.no_profile:
        print("\nop time by class, model only (op_profile.py says how each engine is measured):")
        for bs, name, _, _, _, shares, _ in rows:
            print(f"  batch {bs:>3}  {name:<22} {op_profile.shares_line(shares)}")
    if args.json:
        with open(args.json, "a") as f:
            for bs, name, e2e, _, _, _, _ in rows:
                f.write(json.dumps({"model": str(model_dir), "layers": model.config.num_hidden_layers,
                                    "hidden": model.config.hidden_size, "engine": name, "batch": bs,
                                    "texts": len(texts), "texts_per_s": round(rate(statistics.median(e2e)), 1),
                                    "date": time.strftime("%Y-%m-%d")}) + "\n")
    print("\nratios of median end-to-end throughput (minilm / peer):")
    for bs in sorted({r[0] for r in rows}):
        by = {name: rate(statistics.median(e2e)) for b, name, e2e, _, _, _, _ in rows if b == bs}
        for ours in [n for n in by if n.startswith("minilm")]:
            print(f"  batch {bs}: {ours}: " + ", ".join(f"{by[ours] / v:.2f}x {n}" for n, v in by.items()
                                                         if not n.startswith("minilm")))


if __name__ == "__main__":
    main()
