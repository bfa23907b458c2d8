"""Quality against speed: each student of benchmarks/distill_experiment.py as STS-b test Spearman, and (for the stages
scored on it) Reuters retrieval nDCG@10, against its embedding throughput, one point per stage, the teacher among
them. Writes a small PNG (docs/distill.png).

    python benchmarks/distill_experiment.py          # the scores: benchmarks/results/distill-experiment.jsonl
    python benchmarks/embed_bench.py --model DIR --engines minilm --batch-sizes 32 --no-cold-start \
        --json benchmarks/results/student-throughput.jsonl      # once per student shape (layers x hidden)
    python benchmarks/distill_plot.py                # needs matplotlib (the bench extra)

A result is matched to the throughput of a model of the same shape (layers x hidden): the weights do not change
the speed. Also prints the table the README shows.
"""
import argparse
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS / "distill-experiment.jsonl"))
    p.add_argument("--throughput", default=str(RESULTS / "student-throughput.jsonl"))
    p.add_argument("--batch", type=int, default=32, help="the batch size whose throughput is plotted")
    p.add_argument("--out", default=str(REPO / "docs" / "distill.png"))
    a = p.parse_args(argv)
    latest = {}  # a stage scored again (with the retrieval column) keeps its last line
    for r in map(json.loads, open(a.results)):
        latest[r["stage"]] = r
    results = list(latest.values())
    speed = {}
    for r in map(json.loads, open(a.throughput)):
        if r["batch"] == a.batch and r["engine"] == "minilm packed":
            speed[(r["layers"], r["hidden"])] = r["texts_per_s"]
    points, ir_points = [], []
    print(f"| stage | shape | STS-b dev | STS-b test | Reuters nDCG@10 | R@1 | R@10 | sentences/s (batch {a.batch}) |"
          f"\n|---|---|---|---|---|---|---|---|")
    for r in results:
        L, D = r["layers"], r["hidden"]
        rate = speed.get((L, D))
        ir = [f"{r[k]:.2f}" if k in r else "-" for k in ("reuters_ndcg10", "reuters_r1", "reuters_r10")]
        print(f"| {r['stage']} | {L} x {D} | {r['dev']:.2f} | {r['test']:.2f} | {' | '.join(ir)} | {rate or '-'} |")
        if rate:
            points.append((r["stage"], rate, r["test"], L, D))
            if "reuters_ndcg10" in r:
                ir_points.append((r["stage"], rate, r["reuters_ndcg10"], L, D))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(points, "STS-b test Spearman", "sentence similarity")]
    if ir_points:
        panels.append((ir_points, "Reuters title -> body nDCG@10", "retrieval (development set)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.0), dpi=100, squeeze=False)
    colours = {}
    for ax, (shown, ylabel, title) in zip(axes[0], panels):
        labelled = set()  # one legend entry per shape and panel; a shape keeps its colour in both panels
        for name, rate, value, L, D in shown:
            c = colours.setdefault((L, D), f"C{len(colours)}")
            ax.scatter(rate, value, color=c, s=22, label=None if (L, D) in labelled else f"{L} layers x {D}")
            labelled.add((L, D))
        # One label block per shape, its rows best first: the rows of one shape share a speed, so labels at each
        # point would lie on top of each other. The block goes right of the shape's highest point, or, when a
        # faster shape is close enough for the two blocks to overlap, left of its lowest point.
        rates = {(L, D): rate for _, rate, _, L, D in shown}
        for L, D in rates:
            rows = sorted((p for p in shown if p[3:] == (L, D)), key=lambda p: -p[2])
            crowded = any(0 < rate - rates[L, D] < 150 for rate in rates.values())
            ax.annotate("\n".join(f"{name} {value:.2f}" for name, _, value, _, _ in rows),
                        rows[-1][1:3] if crowded else rows[0][1:3], fontsize=6,
                        xytext=(-6, 0) if crowded else (6, 3), textcoords="offset points", va="top",
                        ha="right" if crowded else "left")
        ax.set_xlabel(f"sentences/s, STS-b test sentences, batch {a.batch} (2-core CPU)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Students of all-MiniLM-L6-v2: {title} against speed", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.08)  # room for the labels
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(a.out, metadata={"Software": None})
    print(f"wrote {a.out} ({pathlib.Path(a.out).stat().st_size:,} bytes, {len(points)} + {len(ir_points)} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
