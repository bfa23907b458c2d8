"""A tiny random sentence-transformers model with its own WordPiece vocabulary, for fast checkpoint and CLI tests."""
import jax
import numpy as np
import tokenizers

from minilm.checkpoint import Model
from minilm.config import Config
from minilm.model import flatten, init_params, unflatten
from minilm.tokenizer import Tokenizer, wordpiece_from_vocab

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
