"""Training speed: train.py and distill.py steps/s and tokens/s at a fixed batch, against sentence-transformers'
training step with the same loss, batch, data and model (torch, CPU).

    python benchmarks/train_bench.py --steps 40 --batch-size 64
    python benchmarks/train_bench.py --steps 30 --runs train,st --rounds 3   # the ratio three times in a row

train.py and distill.py run as users run them (subprocesses, one device), with sequence packing (their default) and
with --no-pack; their own metrics.jsonl gives the throughput. The peer is the plainest sentence-transformers loop:
tokenize the batch (padded to its longest text), MultipleNegativesRankingLoss (cosine x 20, in-batch negatives),
backward, gradient clipping, AdamW. Throughput counts real (non-padding) tokens, so both sides are measured on the
same work, and both are the median over intervals of --steps/10 steps after the first --skip. "host steal": the
share of the machine's CPU time the virtual machine's host gave to other guests during each run (host.py).
"""
import argparse
import gzip
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

import host  # noqa: E402

DATA = REPO.parent / "shared" / "data"
PAIRS = DATA / "flickr30k_captions" / "flickr30k_caption_pairs.jsonl.gz"
TEXT = DATA / "unlabeled_text" / "wiki_sentences.txt.gz"
RUNS = {"train": "train.py", "train-nopack": "train.py --no-pack", "distill": "distill.py",
        "distill-nopack": "distill.py --no-pack", "st": "sentence-transformers"}


def script_throughput(argv: list[str], out: pathlib.Path, skip: int) -> dict:
    """Run a script; from its metrics.jsonl, the median steps/s, sentences/s and tokens/s of the log intervals
    after the first `skip` (compilation)."""
    subprocess.run([sys.executable, *argv, "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    logs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "tokens_per_s" in r][skip:]
    steps = [(b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"]) for a, b in zip(logs, logs[1:])]
    return {"steps_per_s": statistics.median(steps), "sentences_per_s": statistics.median(r["sentences_per_s"]
                                                                                        for r in logs),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in logs)}


def sentence_transformers_throughput(model_dir, pairs: list[tuple[str, str]], batch_size: int, steps: int,
                                     max_length: int, skip: int, interval: int) -> dict:
    """Steps timed one by one, grouped into intervals of `interval` steps as train.py logs them; the medians over
    the intervals after the first `skip` (the same statistic as script_throughput)."""
    import torch
    from sentence_transformers import SentenceTransformer, losses
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = max_length
    model.train()
    loss_fn = losses.MultipleNegativesRankingLoss(model)  # scale 20, cosine similarity
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    times, tokens = [], []
    for s in range(steps):
        batch = pairs[s * batch_size:(s + 1) * batch_size]
        t = time.perf_counter()
        features = [model.tokenize([p[c] for p in batch]) for c in range(2)]
        loss_fn(features, labels=None).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
        tokens.append(sum(int(f["attention_mask"].sum()) for f in features))
    cuts = range(skip * interval, len(times) - interval + 1, interval)
    seconds = [sum(times[i:i + interval]) for i in cuts]
    counts = [sum(tokens[i:i + interval]) for i in cuts]
    return {"steps_per_s": statistics.median(interval / t for t in seconds),
            "sentences_per_s": statistics.median(2 * batch_size * interval / t for t in seconds),
            "tokens_per_s": statistics.median(n / t for n, t in zip(counts, seconds))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--skip", type=int, default=2, help="log intervals / steps left out as warm-up")
    p.add_argument("--runs", default=",".join(RUNS), help=f"which runs, of {','.join(RUNS)}")
    p.add_argument("--rounds", type=int, default=1, help="run them all this many times in a row, one table each")
    args = p.parse_args(argv)
    runs = args.runs.split(",")
    if not set(runs) <= set(RUNS):
        p.error(f"--runs: unknown {sorted(set(runs) - set(RUNS))}; expected some of {','.join(RUNS)}")
    from minilm.st.folder import default_model_dir
    model_dir = pathlib.Path(args.model) if args.model else default_model_dir()
    log_every = max(1, args.steps // 10)
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--log-every", str(log_every), "--warmup", "5", "--lr", "5e-5"]
    scripts = {"train.py": ["--model", str(model_dir), "--data", str(PAIRS)],  # a script's own options, then common
               "distill.py": ["--teacher", str(model_dir), "--data", str(TEXT), "--student-layers", "0,2,4"]}
    with gzip.open(PAIRS, "rt", encoding="utf-8") as f:
        pairs = [(r["anchor"], r["positive"]) for r in map(json.loads, f)][: args.steps * args.batch_size]
    ratios = []
    for round_ in range(1, args.rounds + 1):
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for run in runs:
                before, name = host.cpu_times(), RUNS[run]
                if run == "st":
                    try:
                        results[name] = sentence_transformers_throughput(
                            model_dir, pairs, args.batch_size, args.steps, args.max_length, args.skip, log_every)
                    except ImportError as e:
                        print(f"skipping sentence-transformers: {e}", file=sys.stderr)
                else:
                    script, *flags = name.split()
                    results[name] = script_throughput([script, *scripts[script], *flags, *common],
                                                      pathlib.Path(tmp) / run, args.skip)
                if name in results:
                    results[name]["steal"] = host.steal_share(before, host.cpu_times())
        print(f"{'round ' + str(round_) + ': ' if args.rounds > 1 else ''}batch {args.batch_size} pairs (train.py, "
              f"sentence-transformers; 2 x {args.batch_size} texts a step) or texts (distill.py: teacher 6 layers + "
              f"student 3 layers), max_length {args.max_length}, {args.steps} steps, {os.cpu_count()} CPU cores")
        print(f"{'':<24}{'steps/s':>9}{'sentences/s':>13}{'tokens/s':>10}{'host steal':>12}")
        for name, r in results.items():
            print(f"{name:<24}{r['steps_per_s']:>9.2f}{r['sentences_per_s']:>13.1f}{r['tokens_per_s']:>10.0f}"
                  f"{host.percent(r['steal']):>12}")
        if "sentence-transformers" in results and "train.py" in results:
            ratios.append(results["train.py"]["tokens_per_s"] / results["sentence-transformers"]["tokens_per_s"])
            print(f"train.py / sentence-transformers tokens/s: {ratios[-1]:.2f}x", flush=True)
    if len(ratios) > 1:
        print("train.py / sentence-transformers, each round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
