"""minilm: the all-MiniLM-L6-v2 recipe in pure JAX. Reading order: config, model, tokenizer, checkpoint,
inference, evaluate."""
from minilm.checkpoint import Model, load, save
from minilm.config import Config
from minilm.inference import cosine_similarity, embed, search

__all__ = ["Config", "Model", "cosine_similarity", "embed", "load", "save", "search"]
