"""The pictures of docs/: each drawn from the real all-MiniLM-L6-v2 and real sentences, through minilm's own
functions (the same code the recipe runs, nothing re-implemented for the picture).

    python docs/figures.py                 # every figure into docs/ (a 150-step distillation inside: minutes)
    python docs/figures.py --only packing  # one of: relations contrastive packing truncation pooling attention

Needs matplotlib (`pip install -e ".[bench]"`), never at run time. Everything is seeded: run it again on the same
machine and the PNGs come out byte for byte the same (tests/test_figures.py draws them with a tiny model).

    relations.png    docs/distillation.md  the teacher's Q-Q, K-K, V-V relations beside a 3-layer student's, before
                                           and after distillation (distill.py, 150 steps on Wikipedia sentences)
    contrastive.png  docs/contrastive.md   a batch of SNLI triplets: scaled cosines, each row's target, its loss
    packing.png      docs/fast-path.md     texts packed into rows, and one row's block-diagonal attention mask
    truncation.png   docs/tokenizer.md     a pair cut to 24 tokens by longest_first, only_first, only_second
    pooling.png      docs/encoder.md       token states, the mask, and their mean: the sentence embedding
    attention.png    docs/encoder.md       where each head of the first and last layer looks, on one sentence
"""
import argparse
import csv
import dataclasses
import gzip
import json
import pathlib
import sys
import tempfile

import numpy as np

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

FIGURES = ("relations", "contrastive", "packing", "truncation", "pooling", "attention")
TEXT, PAIR, SPECIAL, CUT, PAD = "#4C72B0", "#DD8452", "#55A868", "#D9D9D9", "#F2F2F2"


def sts_sentences(split: str = "dev") -> list[tuple[str, str]]:
    with open(DATA / "stsb" / f"stsb-en-{split}.csv", encoding="utf-8") as f:
        return [(row[0], row[1]) for row in csv.reader(f)]


def token_strings(tokenizer, ids) -> list[str]:
    return [tokenizer.tok.id_to_token(int(i)) or "?" for i in ids]


def first_with_length(model, texts, low: int, high: int) -> str:
    """The first text whose token count (with [CLS] and [SEP]) lies in [low, high]; else the first text."""
    for t in texts:
        if low <= len(model.tokenizer.encode(t).ids) <= high:
            return t
    return texts[0]


def save(fig, out: pathlib.Path, name: str) -> pathlib.Path:
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: the same bytes on every run
    import matplotlib.pyplot as plt
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)", flush=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Distillation: the relations a student copies.


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64 (the picture's probabilities; the KL printed beside it is relations.py's)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def relation_maps(model, text: str, heads: int):
    """{"qq","kk","vv"} -> [R, T, T] relation logits of the last layer, and the [1, T] mask (relations.py)."""
    import jax.numpy as jnp

    from minilm.model import encode
    from minilm.relations import layer_qkv, relation_logits, RELATIONS
    batch = model.tokenizer.batch([text])
    mask = jnp.asarray(batch.mask_BT)
    enc = encode(model.params, jnp.asarray(batch.ids_BT), mask, model.config)
    qkv = layer_qkv(model.params, enc.hidden_states, -1, model.config)
    return {name: relation_logits(qkv[x], qkv[y], heads, mask) for name, (x, y) in RELATIONS.items()
            if name != "qk"}, mask


def distilled_student(teacher_dir, layers: str, heads: int, steps: int, out: pathlib.Path, max_length: str):
    """A student made and distilled by distill.py itself: the teacher's `layers`, the Q-Q/K-K/V-V relations of the
    last layer, `steps` steps of 32 Wikipedia sentences (never STS-b text)."""
    import distill
    from minilm.st.folder import load
    with gzip.open(DATA / "unlabeled_text" / "wiki_sentences.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(20_000)]
    (out / "wiki.txt").write_text("".join(lines), encoding="utf-8")
    argv = ["--data", str(out / "wiki.txt"), "--teacher", str(teacher_dir), "--student-layers", layers,
            "--num-relation-heads", str(heads), "--steps", str(steps), "--batch-size", "32", "--max-length", max_length,
            "--lr", "2e-4", "--warmup", "10", "--save-every", str(steps), "--log-every", str(max(1, steps // 3)),
            "--seed", "0", "--out", str(out / "student")]
    if distill.main(argv) != 0:
        raise RuntimeError("the distillation run for the figure failed")
    return load(out / "student" / f"step-{steps:07d}")


def figure_relations(teacher, teacher_dir, out, steps: int):
    import matplotlib.pyplot as plt

    from minilm.extensions.students import keep_layers
    from minilm.relations import relation_kl
    cfg = teacher.config
    layers = (0, 3, 5) if cfg.num_hidden_layers == 6 else (0,)
    R = 48 if cfg.hidden_size % 48 == 0 else cfg.num_attention_heads
    params, s_cfg = keep_layers(teacher.params, cfg, layers)
    before = dataclasses.replace(teacher, config=s_cfg, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        after = distilled_student(teacher_dir, ",".join(map(str, layers)), R, steps, pathlib.Path(tmp),
                                  str(min(64, teacher.tokenizer.max_length)))
    text = first_with_length(teacher, [s for pair in sts_sentences("dev") for s in pair], 10, 13)
    maps = {name: relation_maps(m, text, R) for name, m in
            (("teacher", teacher), ("before", before), ("after", after))}
    mask = maps["teacher"][1]
    T = int(mask.sum())
    tokens = token_strings(teacher.tokenizer, teacher.tokenizer.encode(text).ids)
    shown = (0, R // 2)
    fig, axes = plt.subplots(3, 6, figsize=(11, 6.2))
    for i, rel in enumerate(("qq", "kk", "vv")):
        t_logits = maps["teacher"][0][rel]
        for j, head in enumerate(shown):
            top = softmax(t_logits[0, head, :T, :T]).max()  # one colour scale per head
            for k, who in enumerate(("teacher", "before", "after")):
                ax = axes[i, 3 * j + k]
                logits = maps[who][0][rel]
                probs = softmax(logits[0, head, :T, :T])
                ax.imshow(probs, cmap="viridis", vmin=0, vmax=top)
                if who == "teacher":
                    label = f"teacher, head {head}"
                else:
                    kl = float(relation_kl(t_logits[:, head:head + 1], logits[:, head:head + 1], mask))
                    label = f"student {who}\nKL {kl:.3f}"
                ax.set_title(label, fontsize=7)
                ax.set_xticks([]), ax.set_yticks([])
                if 3 * j + k == 0:
                    ax.set_ylabel(f"{rel[0].upper()}-{rel[1].upper()}", fontsize=9)
                    ax.set_yticks(range(T), tokens, fontsize=5)
                if i == 2:
                    ax.set_xticks(range(T), tokens, fontsize=5, rotation=90)
        kl_all = [float(relation_kl(t_logits, maps[w][0][rel], mask)) for w in ("before", "after")]
        axes[i, 5].text(1.05, 0.5, f"all {R} heads:\nKL before {kl_all[0]:.3f}\nKL after  {kl_all[1]:.3f}",
                        transform=axes[i, 5].transAxes, fontsize=7, va="center")
    fig.suptitle(f"Last-layer relations on \"{text}\": row t is softmax over the tokens s of "
                 f"x_t . x_s / sqrt(d)\nteacher (6 layers) | student of layers {layers} before and after "
                 f"{steps} distillation steps", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    return save(fig, out, "relations")


# ----------------------------------------------------------------------------------------------------------------
# Contrastive training: what the loss sees in a batch.


def snli_triplets(n: int) -> list[tuple[str, str, str]]:
    out = []
    with gzip.open(DATA / "snli_devtest" / "snli_devtest_triplets.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("negative") and len(row["anchor"]) < 60:
                out.append((row["anchor"], row["positive"], row["negative"]))
            if len(out) == n:
                return out
    return out


def figure_contrastive(model, out):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from minilm.model import embed
    from minilm.losses import contrastive_loss, cos_sim, ranking_loss
    triplets = snli_triplets(8)
    N = len(triplets)
    a, p, n = (jnp.asarray(embed([t[c] for t in triplets], model)) for c in range(3))
    cand = jnp.concatenate([p, n])
    S = np.asarray(20.0 * cos_sim(a, cand))
    rows = [float(ranking_loss(a[i:i + 1], cand, jnp.asarray([i]))) for i in range(N)]
    total = float(contrastive_loss(a, p, n))
    assert abs(total - np.mean(rows)) < 1e-5  # the batch loss is the mean of the rows shown
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [5, 1]})
    im = ax.imshow(S, cmap="magma", aspect="auto")
    for i in range(N):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#00FF66", linewidth=2))
        for j in range(2 * N):
            ax.text(j, i, f"{S[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if S[i, j] > S.max() - 4 else "white")
    ax.axvline(N - 0.5, color="white", linewidth=2)
    short = lambda s: s if len(s) <= 42 else s[:40] + "..."
    ax.set_yticks(range(N), [short(t[0]) for t in triplets], fontsize=6)
    ax.set_xticks(range(2 * N), [f"p{j}" for j in range(N)] + [f"n{j}" for j in range(N)], fontsize=6)
    ax.set_xlabel("candidates: the batch's positives p, then its hard negatives n (green box: the row's target)",
                  fontsize=8)
    ax.set_ylabel("anchors", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, label="20 x cosine")
    bar.barh(range(N), rows, color=TEXT)
    bar.set_ylim(N - 0.5, -0.5)
    bar.set_yticks([])
    bar.set_xlabel("row loss: logsumexp - target", fontsize=8)
    for i, v in enumerate(rows):
        bar.text(v, i, f" {v:.2f}", va="center", fontsize=6)
    bar.margins(x=0.35)
    fig.suptitle(f"{N} SNLI (anchor, positive, contradiction) triplets through the model: each anchor must pick its "
                 f"own positive among {2 * N} candidates\n(softmax over the row, cross-entropy against the green box); "
                 f"batch loss = mean of the rows = {total:.3f}",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, out, "contrastive")


# ----------------------------------------------------------------------------------------------------------------
# Packing: several texts a row, attention kept inside each text.


def figure_packing(model, out):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from minilm.batch import pack_columns, same_text
    from minilm.tokenizer import padded_length
    sentences = [s for pair in sts_sentences("train")[:40] for s in pair]
    rng = np.random.default_rng(0)
    texts = [sentences[i] for i in rng.choice(len(sentences), 16, replace=False)]
    with gzip.open(DATA / "unlabeled_text" / "wiki_sentences.txt.gz", "rt", encoding="utf-8") as f:
        texts += [next(f).strip() for _ in range(2)]  # two longer texts among the short ones
    max_length = min(128, model.tokenizer.max_length)
    packed = pack_columns(model.tokenizer, [(t,) for t in texts], max_length, parts=1)
    seg = np.asarray(packed.segments_RL)
    R, L = seg.shape
    lengths = [len(e.ids) for e in model.tokenizer.encode_batch(texts, max_length=max_length)]
    padded_tokens = len(texts) * padded_length(max(lengths))
    used = [r for r in range(R) if seg[r].any()]
    fig, (ax, mask_ax) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    colours = ListedColormap([PAD] + [f"C{i % 10}" for i in range(int(seg.max()))])
    ax.imshow(seg[used], cmap=colours, vmin=0, vmax=seg.max(), aspect="auto", interpolation="nearest")
    ids = np.asarray(packed.ids_RL)
    for y, r in enumerate(used):
        for s in range(1, int(seg[r].max()) + 1):
            cols = np.flatnonzero(seg[r] == s)
            if len(cols) >= 6:
                ax.text(cols.mean(), y, f"{len(cols)}", ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(range(len(used)), [f"row {r}" for r in used], fontsize=7)
    ax.set_xlabel(f"token position in a packed row of {L} (grey: padding; numbers: each text's tokens)", fontsize=8)
    real = int((seg > 0).sum())
    ax.set_title(f"{len(texts)} texts, {real} real tokens: padded to the longest, {len(texts)} x "
                 f"{padded_length(max(lengths))} = {padded_tokens} tokens;\npacked, {len(used)} rows x {L} = "
                 f"{len(used) * L} tokens ({100 * (1 - real / (len(used) * L)):.0f}% padding against "
                 f"{100 * (1 - real / padded_tokens):.0f}%)", fontsize=8)
    row = used[0]
    n = int(np.flatnonzero(seg[row])[-1]) + 1
    allowed = np.asarray(same_text(seg[row:row + 1]))[0, 0, :n, :n]
    mask_ax.imshow(np.where(allowed, seg[row, :n][:, None], 0), cmap=colours, vmin=0, vmax=seg.max(),
                   interpolation="nearest")
    tokens = token_strings(model.tokenizer, ids[row, :n])
    if n <= 48:
        mask_ax.set_xticks(range(n), tokens, fontsize=4, rotation=90)
        mask_ax.set_yticks(range(n), tokens, fontsize=4)
    mask_ax.set_title(f"row {row}'s attention mask (batch.same_text): query t may see key s\nonly inside its own "
                      f"text, so each text is computed as if alone", fontsize=8)
    fig.tight_layout()
    return save(fig, out, "packing")


# ----------------------------------------------------------------------------------------------------------------
# Truncation: where each strategy cuts a pair.


def figure_truncation(model, out, max_length: int = 24):
    import matplotlib.pyplot as plt
    tok = model.tokenizer
    pairs = sts_sentences("dev")
    # both texts longer than half the budget, so that longest_first cuts both and each strategy cuts elsewhere
    a, b = next(((x, y) for x, y in pairs if 16 <= len(tok.word_pieces([x])[0]) <= 20
                 and 12 <= len(tok.word_pieces([y])[0]) <= 14), pairs[0])
    pieces_a, pieces_b = tok.word_pieces([a, b])
    cases = [("longest_first", "right"), ("only_first", "right"), ("only_second", "right"), ("longest_first", "left")]
    fig, axes = plt.subplots(len(cases), 1, figsize=(11, 1.0 + 1.05 * len(cases)))
    width = len(pieces_a) + len(pieces_b) + 3
    for ax, (strategy, direction) in zip(axes, cases):
        try:
            row = tok.encode(a, b, max_length=max_length, strategy=strategy, direction=direction)
            kept_a = row.ids.index(tok.sep_id) - 1
            kept_b = len(row.ids) - kept_a - 3
            note = f"{len(row.ids)} tokens"
        except ValueError as e:  # a strategy that cannot fit the pair says so
            kept_a, kept_b, note = len(pieces_a), len(pieces_b), f"error: {e}"[:90]
        cells = [("[CLS]", SPECIAL)]
        for pieces, kept, colour in ((pieces_a, kept_a, TEXT), (pieces_b, kept_b, PAIR)):
            keep = range(len(pieces) - kept, len(pieces)) if direction == "left" else range(kept)
            cells += [(p, colour if i in keep else CUT) for i, p in enumerate(token_strings(tok, pieces))]
            cells.append(("[SEP]", SPECIAL))
        for x, (text, colour) in enumerate(cells):
            ax.add_patch(plt.Rectangle((x, 0), 0.95, 1, color=colour))
            ax.text(x + 0.47, 0.5, text, ha="center", va="center", fontsize=6, rotation=90 if len(text) > 4 else 0,
                    color="black" if colour == CUT else "white")
        ax.set_xlim(0, width), ax.set_ylim(0, 1), ax.axis("off")
        ax.set_title(f"strategy={strategy}, direction={direction}: keeps {kept_a} + {kept_b} word pieces "
                     f"({note})", fontsize=8, loc="left")
    fig.suptitle(f"max_length={max_length} counts [CLS] and both [SEP]: {max_length - 3} word pieces for a pair of "
                 f"{len(pieces_a)} + {len(pieces_b)}. Blue: first text, orange: second, grey: cut", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "truncation")


# ----------------------------------------------------------------------------------------------------------------
# The encoder: mean pooling, and attention.


def figure_pooling(model, out, dims: int = 48):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from minilm.model import encode, l2_normalize, mean_pool
    # a pair that people scored as near paraphrases (4 of 5 or more), of unequal lengths
    with open(DATA / "stsb" / "stsb-en-dev.csv", encoding="utf-8") as f:
        pairs = [(r[0], r[1]) for r in csv.reader(f) if float(r[2]) >= 4.0]
    count = lambda t: len(model.tokenizer.encode(t).ids)
    texts = list(next((p for p in pairs if 7 <= count(p[0]) <= 10 and count(p[1]) >= count(p[0]) + 4), pairs[0]))
    batch = model.tokenizer.batch(texts)
    ids, mask = jnp.asarray(batch.ids_BT), jnp.asarray(batch.mask_BT)
    h = encode(model.params, ids, mask, model.config).last_hidden_state
    pooled = mean_pool(h, mask)
    emb = np.asarray(l2_normalize(pooled))
    T, d = h.shape[1], min(dims, h.shape[2])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, k in zip(axes, range(2)):
        states = np.asarray(h[k, :, :d])
        shown = np.vstack([states, np.full((1, d), np.nan), np.asarray(pooled[k, :d])[None]])
        ax.imshow(np.ma.masked_invalid(shown), cmap="coolwarm", vmin=-1.5, vmax=1.5, aspect="auto",
                  interpolation="nearest")
        n = int(batch.mask_BT[k].sum())
        ax.axhspan(n - 0.5, T - 0.5, color="black", alpha=0.55)
        labels = token_strings(model.tokenizer, batch.ids_BT[k])
        ax.set_yticks([*range(T), T + 1], [*(f"{t} ({int(m)})" for t, m in zip(labels, batch.mask_BT[k])),
                                          "mean"], fontsize=6)
        ax.set_xlabel(f"the first {d} of {h.shape[2]} features", fontsize=8)
        ax.set_title(f"\"{texts[k]}\"\ntoken states (mask in brackets; dark: padding), their mean over the "
                     f"{n} real tokens", fontsize=7)
    cos = float(emb[0] @ emb[1])
    fig.suptitle(f"Mean pooling: padding never enters the sum (model.mean_pool). After L2 normalisation the two "
                 f"sentence embeddings have cosine {cos:.3f}", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "pooling")


def figure_attention(model, out):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from minilm.model import encode
    from minilm.relations import layer_qkv, relation_logits
    sentences = [s for pair in sts_sentences("dev") for s in pair]
    text = first_with_length(model, sentences, 11, 13)
    ids = model.tokenizer.encode(text).ids  # one text, no padding
    ids_BT, mask = jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32)
    enc = encode(model.params, ids_BT, mask, model.config)
    H, L = model.config.num_attention_heads, model.config.num_hidden_layers
    tokens = token_strings(model.tokenizer, ids)
    T = len(tokens)
    shown_layers = sorted({0, L - 1})
    cols = min(H, 6)
    rows_per_layer = -(-H // cols)
    fig, axes = plt.subplots(len(shown_layers) * rows_per_layer, cols,
                             figsize=(1.7 * cols + 0.8, 1.85 * len(shown_layers) * rows_per_layer + 0.6),
                             squeeze=False)
    for i, layer in enumerate(shown_layers):
        qkv = layer_qkv(model.params, enc.hidden_states, layer, model.config)
        # per attention head, Q K^T / sqrt(K): the scores the layer's softmax turns into attention (MiniLM v1's
        # attention transfer distils exactly these)
        probs = np.asarray(jax.nn.softmax(relation_logits(qkv["query"], qkv["key"], H, mask), axis=-1))
        for h in range(H):
            ax = axes[i * rows_per_layer + h // cols, h % cols]
            ax.imshow(probs[0, h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"layer {layer}, head {h}", fontsize=7)
            if h % cols == 0:
                ax.set_yticks(range(T), tokens, fontsize=5)
    for ax in axes[-1]:
        ax.set_xticks(range(T), tokens, fontsize=5, rotation=90)
    fig.suptitle(f"Attention of every head on \"{text}\" (row: a query token; columns: the keys it attends to)",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, out, "attention")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="teacher model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--out", default=str(DOCS), help="folder for the PNGs (default: docs/)")
    p.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    p.add_argument("--steps", type=int, default=150, help="distillation steps of the relations figure's student")
    a = p.parse_args(argv)
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    import matplotlib
    matplotlib.use("Agg")
    from minilm.st.folder import default_model_dir, load
    model_dir = pathlib.Path(a.model) if a.model else default_model_dir()
    model = load(model_dir)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    draw = {"relations": lambda: figure_relations(model, model_dir, out, a.steps),
            "contrastive": lambda: figure_contrastive(model, out), "packing": lambda: figure_packing(model, out),
            "truncation": lambda: figure_truncation(model, out), "pooling": lambda: figure_pooling(model, out),
            "attention": lambda: figure_attention(model, out)}
    for name in a.only:
        draw[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
