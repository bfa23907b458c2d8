"""Embedding speed: minilm against sentence-transformers (torch) and ONNX Runtime, on the same texts, in one run.

    pip install -e ".[test,bench]"      # sentence-transformers (torch CPU) and onnxruntime are the peers
    python benchmarks/embed_bench.py      # STS-b test sentences at batch 32 and 128, wiki paragraphs at batch 32
    python benchmarks/embed_bench.py --no-paragraphs --no-cold-start --engines minilm,ort    # a quicker look

Texts, in one run: short ones, the unique sentences of an STS file (the STS-b test split: 2,552) or the lines of a
file, and long ones, paragraphs of 10 consecutive Wikipedia sentences (about 250 tokens). For each engine
and batch size: texts/s end to end (tokenization included) and model only (pre-tokenized), min / median / max over
--repeats runs, and the largest difference from sentence-transformers' embeddings. Then: the useful GFLOP/s (the
matmuls and attention of real tokens only, no padding) as a fraction of the matmul peak, the best GFLOP/s that any
matmul library here (XLA's, torch's) reaches on the model's shapes; each engine's op time split into matmuls,
attention and elementwise passes (benchmarks/op_profile.py); minilm's first-call time (compilation); and the
whole-process time of `python embed.py "one sentence"` (empty compilation cache, then warm) against a
sentence-transformers one-liner, alternated three times. A row "minilm, projections" times the same packed forwards
with nothing but the six matmuls of each layer: the floor XLA's matmul kernels set here. Peers that are
not installed are skipped. Timings are wall-clock; run it on an otherwise idle machine.
"""
import argparse
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
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from minilm.fast import embedding as fast, xla  # noqa: E402
from minilm.fast.packing import plan_packed, plan_padded  # noqa: E402
from minilm.model import linear  # noqa: E402
from minilm.st import folder  # noqa: E402
from minilm.tools.evaluate import read_sts  # noqa: E402
from benchmarks import host, op_profile  # noqa: E402


def unique_sentences(path) -> list[str]:
    pairs = read_sts(path)
    return list(dict.fromkeys(t for pair in zip(pairs.sentences1, pairs.sentences2) for t in pair))


def timed(fn, repeats: int, *args) -> list[float]:
    """Seconds of each of `repeats` calls fn(*args)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return times


def useful_flops(lengths, cfg) -> float:
    """Multiply-adds x 2 of the real tokens: per layer and token the Q, K, V, output and two FFN matmuls, and per
    text n^2 D twice in attention (scores and the weighted sum of values)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    n = np.asarray(lengths, np.float64)
    return float(L * (2 * n.sum() * (4 * D * D + 2 * D * F) + 4 * (n * n).sum() * D))


def matmul_gflops(matmul, ones, cfg, repeats: int) -> float:
    """Best GFLOP/s of matmul(x, w) on the model's shapes ([M, D] x [D, D], [D, F], [F, D], M = 4,096); ones(shape)
    makes the inputs."""
    D, F, M = cfg.hidden_size, cfg.intermediate_size, 4096
    gflops = []
    for k, n in ((D, D), (D, F), (F, D)):
        x, w = ones((M, k)), ones((k, n))
        matmul(x, w)
        gflops.append(2 * M * k * n / min(timed(matmul, repeats, x, w)) / 1e9)
    return max(gflops)


def matmul_peaks(cfg, repeats: int = 20) -> dict[str, float]:
    """matmul_gflops with each CPU matmul library XLA offers (minilm/fast/xla.py) and with torch where installed. The
    machine's peak here is the best of them: the fastest matmul any engine on this machine could use."""
    libraries = xla.MATMUL_LIBRARIES if jax.default_backend() == "cpu" else {"default": {}}
    peaks = {}
    for name, options in libraries.items():
        jitted = jax.jit(lambda x, w: x @ w, compiler_options=options or None)
        try:
            peaks[f"XLA {name}"] = matmul_gflops(lambda x, w, f=jitted: f(x, w).block_until_ready(),
                                                 lambda shape: jnp.ones(shape, jnp.float32), cfg, repeats)
        except Exception as e:  # noqa: BLE001 - a jaxlib that does not know the option
            print(f"skipping XLA {name}: {e}", file=sys.stderr)
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
        peaks["torch"] = matmul_gflops(lambda x, w: x @ w, torch.ones, cfg, repeats)
    except ImportError:
        pass
    return peaks


def read_texts(path, join: int = 1, limit: int | None = None) -> list[str]:
    """Texts of a file of one text per line (.gz read as gzip), `join` consecutive lines to a text (paragraphs
    from a file of sentences), the first `limit` texts."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    texts = [" ".join(lines[i:i + join]) for i in range(0, len(lines) - join + 1, join)]
    return texts[:limit]


class Minilm:
    name = "minilm"

    def __init__(self, model_dir, pack: bool):
        self.model = folder.get_model(model_dir)
        self.pack = pack
        self.name = "minilm packed" if pack else "minilm padded"

    def end_to_end(self, texts, batch_size):
        return fast.embed(texts, self.model, batch_size=batch_size, pack=self.pack, progress=False)

    def prepare(self, texts, batch_size):
        """Tokenize and plan once, so that model_only times the forwards alone."""
        m = self.model
        ids = [e.ids for e in m.tokenizer.encode_batch(texts)]
        lengths = [len(x) for x in ids]
        plan = plan_packed(lengths, fast.packed_tokens(batch_size)) if self.pack else \
            plan_padded(lengths, batch_size)
        arrays = [fwd.arrays(ids, m.tokenizer.pad_id) for fwd in plan]
        return plan, arrays

    def model_only(self, prepared):
        plan, arrays = prepared
        m = self.model
        with jax.default_matmul_precision("highest"):
            outs = [fast.embed_rows(m.params, *a, cfg=m.config, pooling=m.pooling, normalize=m.normalize,
                                         slots=fwd.slots) for fwd, a in zip(plan, arrays)]
        jax.block_until_ready(outs)

    def profile(self, prepared):
        return op_profile.minilm_profile(self, prepared)

    def matmuls_alone(self, prepared):
        """The same forwards with nothing but the six projections of each layer (Q, K, V, attention output, the two
        feed-forward matmuls, with their biases): no attention, LayerNorm, GELU or pooling. Its time is the floor
        that XLA's matmul kernels set on this machine."""
        plan, arrays = prepared
        m = self.model
        with jax.default_matmul_precision("highest"):
            outs = [projections_only(m.params, a[0]) for a in arrays]
        jax.block_until_ready(outs)


@xla.jit
def projections_only(params, ids_BT):
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
        path = work / "model.onnx"
        ids = torch.ones((2, 8), dtype=torch.long)
        class LastHidden(torch.nn.Module):  # keyword arguments: BertModel's positional order changes across versions
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        with torch.no_grad():
            torch.onnx.export(LastHidden().eval(), (ids, ids, torch.zeros_like(ids)), str(path), dynamo=False,
                              opset_version=17, input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"],
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                                            ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})
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

    def batches(self, texts, batch_size):
        enc = self.tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in enc], kind="stable")
        for b in range(0, len(texts), batch_size):
            idx = order[b:b + batch_size]
            T = len(enc[idx[0]].ids)
            ids = np.zeros((len(idx), T), np.int64)
            mask = np.zeros((len(idx), T), np.int64)
            for r, i in enumerate(idx):
                n = len(enc[i].ids)
                ids[r, :n], mask[r, :n] = enc[i].ids, 1
            yield idx, ids, mask

    def run(self, ids, mask):
        h = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        emb = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def end_to_end(self, texts, batch_size):
        out = np.zeros((len(texts), self.dim), np.float32)
        for idx, ids, mask in self.batches(texts, batch_size):
            out[idx] = self.run(ids, mask)
        return out

    def prepare(self, texts, batch_size):
        return list(self.batches(texts, batch_size))

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
    st_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = lambda argv, env: subprocess.run(argv, env=env, check=True, capture_output=True)
    results = []
    for i in range(repeats):
        cache = tempfile.mkdtemp(prefix="minilm-cache-")
        env = {**os.environ, "MINILM_COMPILE_CACHE": cache}
        env.pop("MINILM_CPU_MATMULS", None)
        results.append((f"{i + 1}: embed.py, empty cache", timed(lambda: run(ours, env), 1)[0]))
        results.append((f"{i + 1}: embed.py, cache warm", timed(lambda: run(ours, env), 1)[0]))
        shutil.rmtree(cache, ignore_errors=True)
        try:
            results.append((f"{i + 1}: sentence-transformers one-liner", timed(lambda: run(
                [sys.executable, "-c", one_liner], st_env), 1)[0]))
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
    sets = [("short texts: " + (args.texts or args.sts),
             read_texts(args.texts, args.join, args.limit) if args.texts else unique_sentences(args.sts),
             args.batch_sizes)]
    if not args.no_paragraphs:
        sets.append((f"paragraphs: {args.paragraphs}, 10 lines each",
                     read_texts(args.paragraphs, 10, args.paragraph_limit), args.paragraph_batch_sizes))
    print(f"{host.cpu_name()}, {os.cpu_count()} CPU cores; jax {jax.__version__} on {jax.devices()[0].platform}")
    peaks = matmul_peaks(model.config)
    peak = max(peaks.values())
    print("matmul on the model's shapes, best GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + f"; peak {peak:.0f} (minilm's matmuls here: XLA {xla.matmul_library()})")

    engines = []
    names = args.engines.split(",")
    if "minilm" in names:
        t = time.perf_counter()
        fast.embed(sets[0][1], model, batch_size=32, progress=False)
        first = time.perf_counter() - t
        print(f"minilm first call (tokenize, compile {len(fast.TRACES)} shapes, run): {first:.2f} s")
        engines += [Minilm(model_dir, pack=True), Minilm(model_dir, pack=False)]
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
    reference = {}
    rows, floors = [], []
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
            shares = None if args.no_profile else eng.profile(prepared)
            rows.append((bs, eng.name, e2e, only, emb, shares, steal))
            if eng.name == "minilm packed":
                eng.matmuls_alone(prepared)
                floors.append((bs, statistics.median(timed(eng.matmuls_alone, args.repeats, prepared))))

    print(f"\n{'batch':>5}  {'engine':<22} {'end to end, texts/s (min / median / max)':>44}  "
          f"{'model only, median':>18}  {'max |diff| vs ST':>16}  useful GFLOP/s (% of peak)  host steal")
    for bs, name, e2e, only, emb, _, steal in rows:
        rate = lambda t: len(texts) / t
        diff = f"{np.abs(emb - reference[bs]).max():.1e}" if bs in reference else "-"
        med = statistics.median(only)
        useful = f"{flops / med / 1e9:.0f} ({100 * flops / med / 1e9 / peak:.0f}%)"
        print(f"{bs:>5}  {name:<22} {rate(max(e2e)):>14.0f} / {rate(statistics.median(e2e)):>6.0f} / "
              f"{rate(min(e2e)):>6.0f}            {rate(med):>12.0f}        {diff:>16}  {useful:<28}"
              f"{host.percent(steal):>10}")
    for bs, seconds in floors:
        print(f"{bs:>5}  {'minilm, projections':<22} {'(the same packed forwards, the six projections alone)':>44}"
              f"  {len(texts) / seconds:>12.0f}")
    if not args.no_profile:
        print("\nop time by class, model only (op_profile.py says how each engine is measured):")
        for bs, name, _, _, _, shares, _ in rows:
            print(f"  batch {bs:>3}  {name:<22} {op_profile.shares_line(shares)}")
    if args.json:
        with open(args.json, "a") as f:
            for bs, name, e2e, _, _, _, _ in rows:
                f.write(json.dumps({"model": str(model_dir), "layers": model.config.num_hidden_layers,
                                    "hidden": model.config.hidden_size, "engine": name, "batch": bs,
                                    "texts": len(texts), "texts_per_s": round(len(texts) / statistics.median(e2e), 1),
                                    "date": time.strftime("%Y-%m-%d")}) + "\n")
    print("\nratios of median end-to-end throughput (minilm / peer):")
    for bs in sorted({r[0] for r in rows}):
        by = {name: len(texts) / statistics.median(e2e) for b, name, e2e, _, _, _, _ in rows if b == bs}
        for ours in [n for n in by if n.startswith("minilm")]:
            print(f"  batch {bs}: {ours}: " + ", ".join(f"{by[ours] / v:.2f}x {n}" for n, v in by.items()
                                                         if not n.startswith("minilm")))


if __name__ == "__main__":
    main()
