"""Where the time goes: each engine's profiled op time split into matmuls, attention and elementwise passes.

    python benchmarks/op_profile.py                      # minilm, rows of 128, 256 and 512 tokens, 4,096 per forward
    python benchmarks/op_profile.py --lengths 256 --top 15   # and the 15 slowest ops
    python benchmarks/op_profile.py --train              # train.py's step: its parts, and its op time by class

embed_bench.py prints the same split for every engine on its own texts (minilm_profile, torch_profile, ort_profile).
The classes (matmul: the projections; attention: the per-head scores, mask, softmax and weighted sum; elementwise:
GELU, LayerNorm and the rest) and how each engine is timed: docs/benchmarks.md. minilm's ops are classified from the
compiled HLO (hlo_op_classes). Times are summed op times: where ops run side by side (XLA runs independent ops on
several threads) the sum exceeds the wall time, and the shares are of the sum.
"""
import argparse
import collections
import functools
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

import jax  # noqa: E402

from host import timed  # noqa: E402
from minilm.fast import embedding as fast, xla  # noqa: E402
from minilm.st import folder  # noqa: E402

CLASSES = ("matmul", "attention", "gelu", "layernorm", "other")


def hlo_op_classes(hlo: str) -> dict[str, str]:
    """{name of each top-level op of a compiled HLO module: its class}, from the op's own line and the bodies of the
    computations it calls (fusions)."""
    bodies, name, lines = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            name, lines = head.group(1), []
        elif line.startswith("}") and name:
            bodies[name], name = lines, None
        elif name:
            lines.append(line)
    entry = next(k for k in bodies if k.startswith("main"))

    def text_of(line: str, seen=()) -> list[str]:
        out = [line]
        for callee in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line):
            if callee not in seen:
                out += [t for body_line in bodies.get(callee, []) for t in text_of(body_line, (*seen, callee))]
        return out

    classes = {}
    for line in bodies[entry]:
        m = re.match(r"^\s*(?:ROOT )?%(\S+) = ", line)
        if not m:
            continue
        text = text_of(line)
        dots = [t for t in text if re.search(r"\bdot\(", t)]
        out = re.search(r"= \w+\[([\d,]*)\]", line)  # the op's output shape; [rows, heads, T, T]: attention
        dims = [int(x) for x in out.group(1).split(",") if x] if out else []
        square = len(dims) == 4 and dims[-1] == dims[-2]
        if any("lhs_batch_dims" in d for d in dots) or square or any("exponential(" in t for t in text):
            classes[m.group(1)] = "attention"
        elif dots or "custom-call" in line and "matmul" in line.lower():
            classes[m.group(1)] = "matmul"
        elif any(re.search(r"\berf\(", t) for t in text):
            classes[m.group(1)] = "gelu"
        elif any(re.search(r"\brsqrt\(", t) for t in text):
            classes[m.group(1)] = "layernorm"
        else:
            classes[m.group(1)] = "other"
    return classes


@functools.cache
def profiled_forward():
    """fast.embed_rows compiled for the profiler: with the chosen CPU matmul library, unless that is XLA's own
    (Eigen), whose matmuls run on the thread pool after their op has returned, so that the profiler sees a dot end
    at its dispatch and their time falls to nobody. Then the matmuls alone go to YNNPACK, which runs them inside
    their op; the graph and every other op stay the same."""
    if jax.default_backend() == "cpu" and xla.matmul_library() == "xla":
        print("  (minilm profiled with its matmuls in YNNPACK: the profiler cannot time XLA's own, which run "
              "asynchronously)")
        return jax.jit(fast.embed_rows, compiler_options=xla.MATMUL_LIBRARIES["ynnpack"], static_argnames=fast.STATIC)
    return fast.compiled_embed_rows()


def traced_op_seconds(jitted, calls: list[tuple], label: str = "", **kwargs) -> tuple[collections.Counter, ...]:
    """jitted(*args, **kwargs) for each args in `calls` (the first already run once: compiled and warm) under JAX's
    profiler -> (seconds per class, seconds per op named 'class op label'), each op classified from the compiled
    HLO (hlo_op_classes)."""
    classes = hlo_op_classes(jitted.lower(*calls[0], **kwargs).compile().as_text())
    with tempfile.TemporaryDirectory() as trace:
        jax.profiler.start_trace(trace, create_perfetto_trace=True)
        jax.block_until_ready([jitted(*args, **kwargs) for args in calls])
        jax.profiler.stop_trace()
        events = json.load(gzip.open(glob.glob(f"{trace}/**/*.json.gz", recursive=True)[0]))["traceEvents"]
    seconds, ops = collections.Counter(), collections.Counter()
    for e in events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") == "X" and op in classes:
            seconds[classes[op]] += e["dur"] / 1e6
            ops[f"{classes[op]:9s} {op}{label}"] += e["dur"] / 1e6
    return seconds, ops


def minilm_profile(m, prepared, top: int = 0) -> dict[str, float]:
    """Seconds per class of model m's forwards in `prepared` (embed_bench.Minilm.prepare), one trace per shape."""
    plan, arrays = prepared
    forward = profiled_forward()
    by_shape = collections.defaultdict(list)
    for fwd, a in zip(plan, arrays):
        by_shape[(a[0].shape, fwd.slots)].append(a)
    seconds, ops = collections.Counter(), collections.Counter()
    with jax.default_matmul_precision("highest"):
        for (shape, slots), batches in by_shape.items():
            options = dict(cfg=m.config, pooling=m.pooling, normalize=m.normalize, slots=slots)
            jax.block_until_ready(forward(m.params, *batches[0], **options))  # compiled and warm
            shape_seconds, shape_ops = traced_op_seconds(forward, [(m.params, *a) for a in batches], f" {shape}",
                                                         **options)
            seconds.update(shape_seconds)
            ops.update(shape_ops)
    print_top(ops, top)
    return dict(seconds)


def torch_profile(engine, prepared, top: int = 0) -> dict[str, float]:
    """Seconds per class of sentence-transformers' forwards (self CPU time of each aten op); embed_bench has run
    them already, so they are warm."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.model_only(prepared)
    seconds, ops = collections.Counter(), collections.Counter()
    for avg in prof.key_averages():
        name = avg.key
        if "scaled_dot_product" in name or "softmax" in name or name in ("aten::bmm", "aten::baddbmm"):
            kind = "attention"
        elif name in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"):
            kind = "matmul"
        elif "gelu" in name:
            kind = "gelu"
        elif "layer_norm" in name:
            kind = "layernorm"
        else:
            kind = "other"
        seconds[kind] += avg.self_cpu_time_total / 1e6
        ops[f"{kind:9s} {name}"] += avg.self_cpu_time_total / 1e6
    print_top(ops, top)
    return dict(seconds)


ORT_CLASSES = {"MatMul": "matmul", "Gemm": "matmul", "FusedMatMul": "matmul", "Attention": "attention",
               "MultiHeadAttention": "attention", "Softmax": "attention", "Gelu": "gelu", "BiasGelu": "gelu",
               "FastGelu": "gelu", "Erf": "gelu", "LayerNormalization": "layernorm",
               "SkipLayerNormalization": "layernorm", "EmbedLayerNormalization": "layernorm"}


def ort_profile(engine, prepared, top: int = 0) -> dict[str, float]:
    """Seconds per class of ONNX Runtime's nodes, from a second session of the same model with profiling on. A
    MatMul of the unfused graph's attention (scores, weighted sum) counts as attention."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = engine.session.get_session_options().intra_op_num_threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as work:
        options.profile_file_prefix = str(pathlib.Path(work) / "ort")
        session = ort.InferenceSession(str(engine.path), options, providers=["CPUExecutionProvider"])
        run = lambda: [session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)}) for _, ids, mask in prepared]
        run()
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    seconds, ops = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, node = e["args"].get("op_name", ""), e["name"]
        kind = ORT_CLASSES.get(op, "other")
        if op == "MatMul" and re.search(r"/self/MatMul(_\d+)?_kernel_time$", node):
            kind = "attention"
        seconds[kind] += e["dur"] / 1e6
        ops[f"{kind:9s} {op}"] += e["dur"] / 1e6
    print_top(ops, top)
    return dict(seconds)


def print_top(ops: collections.Counter, top: int) -> None:
    total = sum(ops.values())
    for name, s in ops.most_common(top):
        print(f"    {100 * s / total:5.1f}%  {s * 1e3:9.1f} ms  {name}")


def shares_line(seconds: dict[str, float]) -> str:
    """'matmul 61%  attention 17%  elementwise 22% (GELU 7%, LayerNorm 5%, other 10%)  of 1.23 s op time'."""
    total = sum(seconds.values()) or 1.0
    pct = {k: 100 * seconds.get(k, 0.0) / total for k in CLASSES}
    elementwise = pct["gelu"] + pct["layernorm"] + pct["other"]
    return (f"matmul {pct['matmul']:3.0f}%  attention {pct['attention']:3.0f}%  elementwise {elementwise:3.0f}% "
            f"(GELU {pct['gelu']:.0f}%, LayerNorm {pct['layernorm']:.0f}%, other {pct['other']:.0f}%)  "
            f"of {total:.2f} s op time")


def train_step_profile(model_dir, batch_size: int = 64, repeats: int = 3) -> None:
    """train.py's step on flickr30k pairs, packed as train.py packs them, on one device: the wall time of its parts
    (forward and loss, with and without dropout; forward and backward; AdamW), best of `repeats` passes over the
    batches of the most common shape, then the op time of forward and backward by class."""
    import train
    from minilm import optim, parallel
    from minilm.run import runs
    from minilm.st.heads import Head
    m = folder.load(model_dir)
    with gzip.open(REPO.parent / "shared/data/flickr30k_captions/flickr30k_caption_pairs.jsonl.gz", "rt") as f:
        pairs = [(r["anchor"], r["positive"]) for r in map(json.loads, f)][:12 * batch_size]
    mesh = parallel.make_mesh(1)
    t = time.perf_counter()
    batches = [runs.make_batch(m.tokenizer, pairs[i:i + batch_size], 128, mesh, True)[0]
               for i in range(0, len(pairs), batch_size)]
    host_ms = 1e3 * (time.perf_counter() - t) / len(batches)
    shape = collections.Counter(b.ids_RL.shape for b in batches).most_common(1)[0][0]
    batches = [b for b in batches if b.ids_RL.shape == shape]
    args, head = train.Args(), Head.of(m)
    jit = functools.partial(jax.jit, compiler_options=xla.compiler_options())
    loss = jit(lambda p, b, k: train.device_loss(p, parallel.on_one_device(b, mesh), k, cfg=m.config, args=args,
                                                 head=head, axis_name=None))
    loss_and_grads = train.make_loss_and_grads(mesh, m.config, args, head)
    grads = jit(loss_and_grads)
    adam = optim.AdamWConfig(lr=5e-5, warmup=5, total_steps=100)
    update = jit(functools.partial(optim.update, cfg=adam))
    params, state, key = m.params, optim.init(m.params), jax.random.key(0)
    g = grads(params, batches[0], key)[1]
    one = {"forward and loss, dropout": lambda b: loss(params, b, key),
           "forward and loss, no dropout": lambda b: loss(params, b, None),
           "forward and backward, dropout": lambda b: grads(params, b, key),
           "forward and backward, no dropout": lambda b: grads(params, b, None),
           "AdamW (clipping included)": lambda b: update(params, g, state)}
    print(f"train.py's step, {batch_size} flickr30k pairs packed into {shape[0]} rows of {shape[1]} tokens, "
          f"{len(batches)} batches of that shape; tokenize and pack on the host: {host_ms:.0f} ms a batch")
    for name, f in one.items():
        jax.block_until_ready(f(batches[0]))
        best = min(timed(lambda: jax.block_until_ready([f(b) for b in batches]), repeats)) / len(batches)
        print(f"  {name:<34} {1e3 * best:8.0f} ms")
    # Op time by class, matmuls in YNNPACK so that the profiler sees them (profiled_forward says why).
    profiled = jax.jit(loss_and_grads, compiler_options=xla.MATMUL_LIBRARIES["ynnpack"])
    jax.block_until_ready(profiled(params, batches[0], key))
    seconds, ops = traced_op_seconds(profiled, [(params, b, key) for b in batches])
    per_batch = lambda c: collections.Counter({k: v / len(batches) for k, v in c.items()})
    print(f"  forward and backward, dropout, op time a batch: {shares_line(per_batch(seconds))}")
    print_top(per_batch(ops), 10)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--lengths", default="128,256,512", help="row lengths T: rows of one text of T tokens each")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per forward (rows = tokens // T)")
    p.add_argument("--forwards", type=int, default=4, help="forwards profiled per length")
    p.add_argument("--top", type=int, default=0, help="also print the N slowest ops of each length")
    p.add_argument("--train", action="store_true", help="profile train.py's step instead (train_bench's batch)")
    args = p.parse_args(argv)
    if args.train:
        return train_step_profile(args.model or folder.default_model_dir())

    model = folder.get_model(args.model or folder.default_model_dir())
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    print(f"minilm on {jax.devices()[0].platform}, {args.tokens} tokens per forward, one text per row")
    for T in map(int, args.lengths.split(",")):
        R = args.tokens // T
        ids = rng.integers(1000, vocab, (R, T)).astype(np.int32)
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), (R, T)).copy()
        segments = np.ones((R, T), np.int32)
        plan = [type("Fwd", (), {"slots": 1})()] * args.forwards
        seconds = minilm_profile(model, (plan, [(ids, positions, segments)] * args.forwards), args.top)
        per_forward = sum(seconds.values()) / args.forwards
        print(f"T {T:>4} x {R:>3} rows: {shares_line(seconds)}; {R * T / per_forward:,.0f} tokens/s by op time")


if __name__ == "__main__":
    main()
