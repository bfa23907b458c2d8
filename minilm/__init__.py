"""minilm: the all-MiniLM-L6-v2 recipe in pure JAX.

Reading order. The algorithm: config, model, tokenizer, checkpoint, embedding (the plain path from text to
embeddings), then losses, optim, data, parallel and train.py; relations and distill.py. Making it fast: fast/
(packing, embedding, xla). docs/ has the math.
"""
from minilm.config import Config
from minilm.fast.embedding import embed  # the fast path; embed(texts, fast=False): the plain path
from minilm.st.folder import load, Model, save
from minilm.tools.sentence_model import SentenceModel
from minilm.tools.similarity import cosine_similarity, search

__all__ = ["Config", "Model", "SentenceModel", "cosine_similarity", "embed", "load", "save", "search"]
