"""Quality against speed: the students of experiments/distill_experiment.py on STS-b test Spearman and (those scored
on it) Reuters retrieval nDCG@10, against their embedding throughput. Writes docs/distill.png.

    python experiments/distill_experiment.py          # the scores: experiments/results/distill-experiment.jsonl
    python benchmarks/embed_bench.py --model DIR --engines minilm --batch-sizes 32 --no-cold-start \
        --json experiments/results/student-throughput.jsonl      # once per student shape (layers x hidden)
    python experiments/distill_plot.py                # needs matplotlib (the bench extra)

One point per row of the experiment (its last stage), plus the teacher and the public 3-layer model: filled for a
distilled student, hollow for a control (the same student without the distillation), coloured by what it saw besides
the teacher (general text, a corpus's unlabeled text, in-domain pairs), each labelled with its row. The teacher's
score is a dashed line. Speeds come from the newest run in the throughput file (one machine, one day), matched by
shape (layers x hidden): the weights do not change the speed. Also prints the table of the points.
"""
import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

import distill_experiment as de  # noqa: E402

RESULTS = REPO / "experiments" / "results"
# Rows that are controls: the same students with the usual fine-tuning, or with title -> body pairs, and nothing
# distilled.
CONTROLS = {"l3-ft", "l3-ft-seed1", "l4-ft", "l2-ft", "s4-ft", "l3-ftr", "l4-ftr"}
COLOURS = {"general": "C0", "corpus": "C1", "in-domain pairs": "C2", "teacher": "black", "public": "C4"}


def points(results: dict, speed: dict) -> list[dict]:
    """The last stage of each row, with its speed and what it saw; the public model at the 3 x 384 speed."""
    out = []
    for row, stages in de.ROWS.items():
        r = results.get(stages[-1].name)
        if r and (r["layers"], r["hidden"]) in speed:
            out.append({**r, "row": row, "speed": speed[r["layers"], r["hidden"]], "saw": de.saw(row, stages[-1]),
                        "control": row in CONTROLS})
    if "paraphrase-MiniLM-L3-v2" in results and (3, 384) in speed:
        out.append({**results["paraphrase-MiniLM-L3-v2"], "row": "public-l3", "speed": speed[3, 384],
                    "saw": "public", "control": False})
    return out


def spread(ys: list[float], gap: float) -> list[float]:
    """Label heights near ys (sorted ascending) at least `gap` apart."""
    out = []
    for y in ys:
        out.append(max(y, out[-1] + gap) if out else y)
    shift = (out[-1] - ys[-1]) / 2 if len(out) > 1 else 0.0  # centre the block on the points
    return [y - shift for y in out]


def draw(ax, shown: list[dict], key: str, ylabel: str, floor: float | None) -> None:
    teacher = next((p for p in shown if p["saw"] == "teacher"), None)
    if teacher:
        ax.axhline(teacher[key], color="black", lw=0.8, ls="--", zorder=0)
    below = [p for p in shown if floor is not None and p[key] < floor]
    visible = [p for p in shown if p not in below]
    for p in visible:
        c = COLOURS[p["saw"]]
        marker = "*" if p["saw"] == "teacher" else "D" if p["saw"] == "public" else "o"
        ax.scatter(p["speed"], p[key], s=60 if marker == "*" else 26, marker=marker, zorder=3,
                   facecolors="white" if p["control"] else c, edgecolors=c, linewidths=1.2)
    lo = min(p[key] for p in visible)
    hi = max(p[key] for p in visible)
    gap = (hi - lo) / 22
    for x in sorted({p["speed"] for p in visible}):  # the labels of one speed, right of it, apart
        column = sorted((p for p in visible if p["speed"] == x), key=lambda p: p[key])
        for p, y in zip(column, spread([p[key] for p in column], gap)):
            y += 1.5 * gap if p["saw"] == "teacher" else 0.0  # above its own dashed line
            ax.annotate(f"{p['row']} {p[key]:.2f}", (x, p[key]), xytext=(x * 1.025, y), fontsize=6, va="center",
                        color=COLOURS[p["saw"]], arrowprops=dict(arrowstyle="-", lw=0.4, color="0.6"))
    if below:
        ax.text(0.99, 0.02, "below the axis: " + ", ".join(f"{p['row']} {p[key]:.2f}" for p in below),
                transform=ax.transAxes, fontsize=6, ha="right", va="bottom", color="0.3")
        ax.set_ylim(floor, hi + (hi - floor) * 0.05)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS / "distill-experiment.jsonl"))
    p.add_argument("--throughput", default=str(RESULTS / "student-throughput.jsonl"))
    p.add_argument("--batch", type=int, default=32, help="the batch size whose throughput is plotted")
    p.add_argument("--out", default=str(REPO / "docs" / "distill.png"))
    a = p.parse_args(argv)
    results = {}  # a stage scored again (with the retrieval columns) keeps its last line
    for r in map(json.loads, open(a.results)):
        results[r["stage"]] = r
    runs = [r for r in map(json.loads, open(a.throughput)) if r["batch"] == a.batch and r["engine"] == "minilm packed"]
    newest = max(r["date"] for r in runs)
    run = [r for r in runs if r["date"] == newest]
    speed = {(r["layers"], r["hidden"]): r["texts_per_s"] for r in run}
    machine = run[0].get("cpu", "2-core CPU")
    shown = points(results, speed)
    print("| row | saw | shape | STS-b test | Reuters nDCG@10 | sentences/s |\n|---|---|---|---|---|---|")
    for q in shown:
        ir = f"{q['reuters_ndcg10']:.2f}" if "reuters_ndcg10" in q else "-"
        print(f"| {q['row']} | {q['saw']}{' (control)' if q['control'] else ''} | {q['layers']} x {q['hidden']} | "
              f"{q['test']:.2f} | {ir} | {q['speed']:,.0f} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4), dpi=100)
    draw(axes[0], shown, "test", "STS-b test Spearman x 100", floor=77.0)
    draw(axes[1], [q for q in shown if "reuters_ndcg10" in q], "reuters_ndcg10",
         "Reuters development set, nDCG@10 x 100", floor=None)
    axes[0].set_title("Sentence similarity against speed", fontsize=10)
    axes[1].set_title("Search (titles -> bodies, never trained on) against speed", fontsize=10)
    for ax in axes:
        ax.set_xlabel(f"sentences/s, STS-b test, batch {a.batch} ({machine}, {newest})", fontsize=8)
        ax.set_xlim(min(speed.values()) * 0.9, max(speed.values()) * 1.25)
    legend = [Line2D([], [], marker="*", ls="", color="black", ms=9, label="teacher (dashed: its score)"),
              Line2D([], [], marker="D", ls="", color=COLOURS["public"], label="public paraphrase-MiniLM-L3-v2"),
              *[Line2D([], [], marker="o", ls="", color=COLOURS[k], label=f"student, saw {k}")
                for k in ("general", "corpus", "in-domain pairs")],
              Line2D([], [], marker="o", ls="", markerfacecolor="white", markeredgecolor="0.3",
                     label="control (nothing distilled)")]
    axes[0].legend(handles=legend, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(a.out, metadata={"Software": None})
    print(f"wrote {a.out} ({pathlib.Path(a.out).stat().st_size:,} bytes, {len(shown)} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
