"""A tiny random sentence-transformers model with its own WordPiece vocabulary, and tiny training data, for fast
checkpoint and CLI tests."""
import gzip
import json

import jax
import numpy as np
import tokenizers

from minilm.checkpoint import flatten, init_params, unflatten
from minilm.config import Config
from minilm.st.folder import Model, save
from minilm.st.folder import wordpiece_from_vocab
from minilm.tokenizer import Tokenizer

WORDS = ("the a cat dog sat on mat is eating food man woman riding horse play ##s ##ing ##ed , . ! ? "
         "music guitar plays outside new movie awesome").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
TEXTS = ["the cat sat on the mat.", "a man is eating food!", "the woman plays guitar outside", "",
         "dog dogs dogged", "a new movie is awesome? the music plays"]


def tiny_model(tmp_path, seed: int = 0, max_length: int = 24, **config) -> Model:
    vocab = tmp_path / "tiny-vocab.txt"
    vocab.write_text("".join(w + "\n" for w in VOCAB), encoding="utf-8")
    cfg = Config(**{"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 48, "max_position_embeddings": 40, **config})
    # HF init leaves biases 0 and LayerNorm 1; perturb every tensor so no bug can hide behind a constant.
    flat = flatten(init_params(cfg, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    flat = {k: np.asarray(v) + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in flat.items()}
    tok = Tokenizer(wordpiece_from_vocab(vocab), max_length=max_length)
    assert isinstance(tok.tok, tokenizers.Tokenizer)
    return Model(cfg, unflatten(flat), tok)


DATA_WORDS = ["the", "cat", "dog", "sat", "on", "mat", "man", "woman", "is", "eating", "food", "music", "plays"]


def train_folder(tmp):
    """tmp/model: a tiny model; tmp/pairs.jsonl: 64 pairs with distinct texts. For train.py."""
    save(tiny_model(tmp), tmp / "model")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(64):
        a, p = (" ".join(rng.choice(DATA_WORDS, rng.integers(2, 8))) for _ in range(2))
        lines.append(json.dumps({"anchor": f"{a} {i}", "positive": f"{p} {i} !"}))
    (tmp / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp


def distill_folder(tmp):
    """tmp/teacher: a tiny model (2 layers, width 32, 4 heads); tmp/text.txt.gz: 200 lines. For distill.py."""
    save(tiny_model(tmp, seed=3), tmp / "teacher")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(DATA_WORDS, rng.integers(1, 12))) for _ in range(200)]
    with gzip.open(tmp / "text.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    return tmp
