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
    gather.png       docs/parallelism.md   a batch split over 4 devices: each scores its rows against every
                                           device's positives (all_gather), its targets offset by d x b
    training.png     docs/contrastive.md   a real train.py run's loss and STS-b dev Spearman, step by step
    relation-losses.png docs/distillation.md  the Q-Q, K-K, V-V KL of the relations figure's distillation run
    retrieval.png    docs/evaluation.md    one Reuters title, the top bodies by the teacher and by a student
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

FIGURES = ("relations", "contrastive", "packing", "truncation", "pooling", "attention", "gather", "training",
           "relation-losses", "retrieval")
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
    last layer, `steps` steps of 32 Wikipedia sentences (never STS-b text). Run once into `out` (two figures read
    it: the relations, and the losses in its metrics.jsonl)."""
    import distill
    from minilm.st.folder import load
    if (out / "student" / f"step-{steps:07d}" / "config.json").is_file():
        return load(out / "student" / f"step-{steps:07d}")
    with gzip.open(DATA / "unlabeled_text" / "wiki_sentences.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(20_000)]
    (out / "wiki.txt").write_text("".join(lines), encoding="utf-8")
    argv = ["--data", str(out / "wiki.txt"), "--teacher", str(teacher_dir), "--student-layers", layers,
            "--num-relation-heads", str(heads), "--steps", str(steps), "--batch-size", "32", "--max-length", max_length,
            "--lr", "2e-4", "--warmup", "10", "--save-every", str(steps), "--log-every", str(max(1, steps // 30)),
            "--seed", "0", "--out", str(out / "student")]
    if distill.main(argv) != 0:
        raise RuntimeError("the distillation run for the figure failed")
    return load(out / "student" / f"step-{steps:07d}")


def student_layers(cfg) -> tuple[int, ...]:
    """The kept layers of the figures' students: 0, 3, 5 of all-MiniLM-L6-v2 (the first of a tiny test model)."""
    return (0, 3, 5) if cfg.num_hidden_layers == 6 else (0,)


def relation_heads_of(cfg) -> int:
    return 48 if cfg.hidden_size % 48 == 0 else cfg.num_attention_heads


def figure_relations(teacher, teacher_dir, out, steps: int, work: pathlib.Path):
    import matplotlib.pyplot as plt

    from minilm.checkpoint import keep_layers
    from minilm.relations import relation_kl
    cfg = teacher.config
    layers, R = student_layers(cfg), relation_heads_of(cfg)
    params, s_cfg = keep_layers(teacher.params, cfg, layers)
    before = dataclasses.replace(teacher, config=s_cfg, params=params)
    after = distilled_student(teacher_dir, ",".join(map(str, layers)), R, steps, work,
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
                im = ax.imshow(probs / top, cmap="viridis", vmin=0, vmax=1)
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
        axes[i, 5].text(1.06, 0.5, f"all {R} heads:\nKL before {kl_all[0]:.3f}\nKL after  {kl_all[1]:.3f}",
                        transform=axes[i, 5].transAxes, fontsize=7, va="center")
    fig.suptitle(f"Last-layer relations on \"{text}\": row t is softmax over the tokens s of "
                 f"x_t . x_s / sqrt(d)\nteacher (6 layers) | student of layers {layers} before and after "
                 f"{steps} distillation steps", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.colorbar(im, cax=fig.add_axes((0.925, 0.15, 0.01, 0.7)),
                 label="probability / the teacher's largest in that head")
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


def loss_bars(ax, values: list[float], xlabel: str, labels: list[str] | None = None) -> None:
    """A horizontal bar per value, top to bottom beside a matrix's rows, each with its value written on it."""
    ax.barh(range(len(values)), values, color=TEXT)
    ax.set_ylim(len(values) - 0.5, -0.5)
    ax.set_yticks(range(len(values)), labels, fontsize=7) if labels else ax.set_yticks([])
    ax.set_xlabel(xlabel, fontsize=8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    ax.margins(x=0.4)


def figure_contrastive(model, out):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from minilm.model import embed
    from minilm.losses import contrastive_loss, cos_sim, ranking_loss
    triplets = snli_triplets(8)
    N = len(triplets)
    a, p, n = (jnp.asarray(embed([t[c] for t in triplets], model.params, model.config, model.tokenizer))
               for c in range(3))
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
    ax.set_yticks(range(N), [f"a{i}  {short(t[0])}" for i, t in enumerate(triplets)], fontsize=6)
    ax.set_xticks(range(2 * N), [f"p{j}" for j in range(N)] + [f"n{j}" for j in range(N)], fontsize=6)
    ax.set_xlabel("candidates: the batch's positives p, then its hard negatives n (green box: the row's target)",
                  fontsize=8)
    ax.set_ylabel("anchors a0..a7 (row i's target: p_i)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, label="20 x cosine")
    loss_bars(bar, rows, "row loss: lse - target")
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
    # which text each token belongs to: slot s of row r is text t where where_CB[0, t] = r * N + s - 1
    slots = {int(w): t for t, w in enumerate(np.asarray(packed.where_CB)[0])}
    text_of = np.array([[slots[r * (L // 4) + s - 1] + 1 if s else 0 for s in seg[r]] for r in range(R)])
    fig, (ax, mask_ax) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    colours = ListedColormap([PAD] + [plt.get_cmap("tab20")(i % 20) for i in range(len(texts))])
    ax.imshow(text_of[used], cmap=colours, vmin=0, vmax=len(texts), aspect="auto", interpolation="nearest")
    ids = np.asarray(packed.ids_RL)
    for y, r in enumerate(used):
        for s in range(1, int(seg[r].max()) + 1):
            cols = np.flatnonzero(seg[r] == s)
            ax.add_patch(plt.Rectangle((cols[0] - 0.5, y - 0.5), len(cols), 1, fill=False, edgecolor="white",
                                       linewidth=1.5))  # each text's own box
            if len(cols) >= 6:
                ax.text(cols.mean(), y, f"{len(cols)}", ha="center", va="center", fontsize=6, color="black")
    ax.set_yticks(range(len(used)), [f"row {r}" for r in used], fontsize=7)
    ax.set_xlabel(f"token position in a packed row of {L} (one colour and box per text, its token count on it; grey: "
                  f"padding)", fontsize=8)
    real = int((seg > 0).sum())
    ax.set_title(f"{len(texts)} texts, {real} real tokens: padded to the longest, {len(texts)} x "
                 f"{padded_length(max(lengths))} = {padded_tokens} tokens;\npacked, {len(used)} rows x {L} = "
                 f"{len(used) * L} tokens ({100 * (1 - real / (len(used) * L)):.0f}% padding against "
                 f"{100 * (1 - real / padded_tokens):.0f}%)", fontsize=8)
    row = used[0]
    n = int(np.flatnonzero(seg[row])[-1]) + 1
    allowed = np.asarray(same_text(seg[row:row + 1]))[0, 0, :n, :n]
    mask_ax.imshow(np.where(allowed, text_of[row, :n][:, None], 0), cmap=colours, vmin=0, vmax=len(texts),
                   interpolation="nearest")
    mask_ax.set_xlabel("key s (the token attended to)", fontsize=7)
    mask_ax.set_ylabel("query t (the token attending)", fontsize=7)
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

    from minilm.tools import truncation
    tok = model.tokenizer
    pairs = sts_sentences("dev")
    # both texts longer than half the budget, so that longest_first cuts both and each strategy cuts elsewhere
    a, b = next(((x, y) for x, y in pairs if 16 <= len(tok.word_pieces([x])[0]) <= 20
                 and 12 <= len(tok.word_pieces([y])[0]) <= 14), pairs[0])
    pieces_a, pieces_b = tok.word_pieces([a, b])
    cases = [("longest_first", "right"), ("only_first", "right"), ("only_second", "right"), ("longest_first", "left")]
    fig, axes = plt.subplots(len(cases), 1, figsize=(12, 1.2 + 1.25 * len(cases)))
    width = len(pieces_a) + len(pieces_b) + 3
    for ax, (strategy, direction) in zip(axes, cases):
        try:
            row = truncation.encode(tok, a, b, max_length=max_length, strategy=strategy, direction=direction)
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
            ax.add_patch(plt.Rectangle((x, 0), 1, 1, facecolor=colour, edgecolor="white", linewidth=1.5))
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
        im = ax.imshow(np.ma.masked_invalid(shown), cmap="coolwarm", vmin=-1.5, vmax=1.5, aspect="auto",
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
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    fig.colorbar(im, cax=fig.add_axes((0.905, 0.15, 0.012, 0.7)), label="feature value (colours clipped at +-1.5)")
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
            im = ax.imshow(probs[0, h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"layer {layer}, head {h}", fontsize=7)
            if h % cols == 0:
                ax.set_yticks(range(T), tokens, fontsize=5)
    for ax in axes[-1]:
        ax.set_xticks(range(T), tokens, fontsize=5, rotation=90)
    fig.suptitle(f"Attention of every head on \"{text}\" (row: a query token; columns: the keys it attends to)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(im, cax=fig.add_axes((0.915, 0.15, 0.012, 0.7)), label="attention probability")
    return save(fig, out, "attention")


# ----------------------------------------------------------------------------------------------------------------
# Data parallelism: the gather that makes every device's positives everyone's candidates.


def figure_gather(model, out, devices: int = 4, rows: int = 2):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from minilm.losses import contrastive_loss, cos_sim, ranking_loss
    from minilm.model import embed
    pairs = [(a, p) for a, p, _ in snli_triplets(devices * rows)]
    a, p = (jnp.asarray(embed([x[c] for x in pairs], model.params, model.config, model.tokenizer)) for c in range(2))
    S = np.asarray(20.0 * cos_sim(a, p))
    # what each device computes inside train.py's shard_map: its b anchors against the all_gather of every
    # device's positives, targets d * b + i; the mean of the devices' losses is the loss of the whole batch
    per_device = [float(ranking_loss(a[d * rows:(d + 1) * rows], p, d * rows + jnp.arange(rows)))
                  for d in range(devices)]
    whole = float(contrastive_loss(a, p))
    assert abs(np.mean(per_device) - whole) < 1e-5
    n = devices * rows
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [4, 1]})
    im = ax.imshow(S, cmap="magma", aspect="auto")
    for d in range(devices):
        ax.add_patch(plt.Rectangle((-0.5, d * rows - 0.5), n, rows, fill=False, edgecolor="white", linewidth=2))
        for i in range(rows):
            t = d * rows + i
            ax.add_patch(plt.Rectangle((t - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="#00FF66", linewidth=2))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{S[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if S[i, j] > S.max() - 4 else "white")
    ax.set_xticks(range(n), [f"p{j}\n(dev {j // rows})" for j in range(n)], fontsize=6)
    ax.set_yticks(range(n), [f"a{d * rows + i} = device {d}, row {i}" for d in range(devices) for i in range(rows)],
                  fontsize=6)
    ax.set_xlabel("candidates: all_gather of every device's positives, device 0's first", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, label="20 x cosine")
    loss_bars(bar, per_device, "device loss: mean of its rows", [f"device {d}" for d in range(devices)])
    fig.suptitle(f"{n} SNLI pairs split over {devices} devices, {rows} rows each: device d scores its own anchors "
                 f"against all {n} positives,\nthe target of its row i is column d x {rows} + i (green); the mean of "
                 f"the devices' losses, {np.mean(per_device):.4f}, is the loss of the whole batch, {whole:.4f}",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, out, "gather")


# ----------------------------------------------------------------------------------------------------------------
# A training run, step by step.


def figure_training(model, model_dir, out, steps: int, work: pathlib.Path):
    """train.py itself, from the teacher's kept layers 0, 2, 4 (a student that starts far below the teacher), on
    Flickr30k caption pairs, scored on 500 STS-b dev pairs as it goes; the curve is its metrics.jsonl."""
    import matplotlib.pyplot as plt

    import train
    layers = (0, 2, 4) if model.config.num_hidden_layers == 6 else (0,)
    with open(DATA / "stsb" / "stsb-en-dev.csv", encoding="utf-8") as f:
        (work / "sts-dev-500.csv").write_text("".join(f.readline() for _ in range(500)), encoding="utf-8")
    run = work / "train"
    argv = ["--model", str(model_dir), "--keep-layers", ",".join(map(str, layers)), "--data",
            str(DATA / "flickr30k_captions" / "flickr30k_caption_pairs.jsonl.gz"), "--steps", str(steps),
            "--batch-size", "32", "--lr", "1e-4", "--warmup", str(max(1, steps // 10)), "--max-length",
            str(min(64, model.tokenizer.max_length)), "--eval-sts", str(work / "sts-dev-500.csv"), "--eval-every",
            str(max(1, steps // 6)), "--log-every", str(max(1, steps // 30)), "--save-every", str(steps), "--seed",
            "0", "--out", str(run)]
    if train.main(argv) != 0:
        raise RuntimeError("the training run for the figure failed")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    sts = [(r["step"], r[k]) for r in records for k in r if k.startswith("sts") and k.endswith("spearman")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(*zip(*losses), color=TEXT, marker=".", label="training loss (logged every few steps)")
    ax.set_xlabel("step (32 caption pairs each)")
    ax.set_ylabel("multiple-negatives ranking loss", color=TEXT)
    right = ax.twinx()
    right.plot(*zip(*sts), color=PAIR, marker="o", label="STS-b dev Spearman x 100 (500 pairs)")
    right.set_ylabel("STS-b dev Spearman x 100", color=PAIR)
    for x, y in sts:
        right.annotate(f"{y:.1f}", (x, y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7,
                       color=PAIR)
    fig.legend(loc="upper center", fontsize=7, ncol=2, bbox_to_anchor=(0.5, 0.93))
    ax.set_title(f"train.py from the teacher's layers {layers}, {steps} steps: the loss falls as STS-b rises "
                 f"(its metrics.jsonl)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, out, "training")


def figure_relation_losses(teacher, teacher_dir, out, steps: int, work: pathlib.Path):
    """The relations figure's distillation run (distill.py, its metrics.jsonl): each relation's KL over the steps."""
    import matplotlib.pyplot as plt
    layers, R = student_layers(teacher.config), relation_heads_of(teacher.config)
    distilled_student(teacher_dir, ",".join(map(str, layers)), R, steps, work,
                      str(min(64, teacher.tokenizer.max_length)))
    records = [json.loads(line) for line in (work / "student" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "qq" in r]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for name, colour in (("qq", TEXT), ("kk", PAIR), ("vv", SPECIAL)):
        ax.plot([r["step"] for r in logged], [r[name] for r in logged], marker=".", color=colour,
                label=f"{name[0].upper()}-{name[1].upper()} relation KL")
    ax.plot([r["step"] for r in logged], [r["loss"] for r in logged], color="0.4", ls="--", label="loss (their sum)")
    ax.set_xlabel("distillation step (32 Wikipedia sentences each)")
    ax.set_ylabel("KL(teacher || student), per text")
    ax.set_title(f"distill.py, the teacher's layers {layers} learning its last layer's relations ({R} relation "
                 f"heads): each relation's KL", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out, "relation-losses")


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: one query, what each model ranks first.


def figure_retrieval(teacher, out, corpus_size: int = 400, shown: int = 4):
    """A title of the Reuters development articles (the last 2,000 lines of the title/body file) as the query, the
    first `corpus_size` development bodies as the corpus: the teacher's and the cut student's best bodies."""
    import matplotlib.pyplot as plt

    from minilm.checkpoint import keep_layers
    from minilm.fast.embedding import embed
    with gzip.open(DATA / "reuters21578" / "reuters21578_title_body.jsonl.gz", "rt", encoding="utf-8") as f:
        articles = [json.loads(line) for line in f][-2000:][:corpus_size]
    titles, bodies = [a["anchor"] for a in articles], [a["positive"] for a in articles]
    params, cfg = keep_layers(teacher.params, teacher.config, student_layers(teacher.config))
    student = dataclasses.replace(teacher, config=cfg, params=params)
    ranked = {}
    for name, m in (("teacher", teacher), ("student", student)):
        q, d = embed(titles, m, progress=False), embed(bodies, m, progress=False)
        ranked[name] = np.argsort(-(q @ d.T), axis=1, kind="stable")
    # the first query the teacher ranks right and the cut student does not, so the picture shows a difference
    k = next((i for i in range(len(titles)) if ranked["teacher"][i, 0] == i and ranked["student"][i, 0] != i), 0)
    hits = {name: float(np.mean(r[:, 0] == np.arange(len(titles)))) for name, r in ranked.items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    short = lambda t: t if len(t) <= 230 else t[:228] + "..."
    import textwrap
    for ax, name in zip(axes, ("teacher", "student")):
        ax.axis("off")
        label = ("teacher: all-MiniLM-L6-v2, 6 layers" if name == "teacher" else
                 f"student: the teacher's layers {student_layers(teacher.config)}, nothing trained")
        ax.set_title(f"{label}\nRecall@1 over these {len(titles)} titles: {100 * hits[name]:.1f}", fontsize=8)
        for rank, doc in enumerate(ranked[name][k, :shown]):
            right = doc == k
            y = 1 - rank / shown
            ax.text(0, y, f"{rank + 1}.", fontsize=8, va="top", weight="bold", color=SPECIAL if right else "0.2")
            ax.text(0.05, y, textwrap.fill(short(bodies[doc]), 80), fontsize=6.5, va="top",
                    color=SPECIAL if right else "0.2")
    fig.suptitle(f"Query (a Reuters title): \"{titles[k]}\"; its own body in green, the corpus {len(titles)} "
                 f"bodies of the development set", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "retrieval")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="teacher model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--out", default=str(DOCS), help="folder for the PNGs (default: docs/)")
    p.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    p.add_argument("--steps", type=int, default=150, help="steps of the runs the figures draw: the relations "
                   "figure's distillation, and the training curve's train.py run")
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
    with tempfile.TemporaryDirectory() as tmp:  # the runs the figures draw (one distillation serves two)
        work = pathlib.Path(tmp)
        draw = {"relations": lambda: figure_relations(model, model_dir, out, a.steps, work),
                "contrastive": lambda: figure_contrastive(model, out), "packing": lambda: figure_packing(model, out),
                "truncation": lambda: figure_truncation(model, out), "pooling": lambda: figure_pooling(model, out),
                "attention": lambda: figure_attention(model, out), "gather": lambda: figure_gather(model, out),
                "training": lambda: figure_training(model, model_dir, out, a.steps, work),
                "relation-losses": lambda: figure_relation_losses(model, model_dir, out, a.steps, work),
                "retrieval": lambda: figure_retrieval(model, out)}
        for name in a.only:
            draw[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
