"""minilm: the all-MiniLM-L6-v2 recipe in pure JAX.

The book, in its reading order (the README's table): config, tokenizer, model (with checkpoint, the plain path from
text to embeddings), data, batch, losses, optim, parallel and train.py; relations and distill.py. The toolbox builds
on it: st/, tools/, run/, extensions/, fast/. docs/ has the math.
"""
from minilm.config import Config
from minilm.fast.embedding import embed  # the fast path; embed(texts, fast=False): the plain path
from minilm.st.folder import load, Model, save
from minilm.tools.sentence_model import SentenceModel
from minilm.tools.similarity import cosine_similarity, search

__all__ = ["Config", "Model", "SentenceModel", "cosine_similarity", "embed", "load", "save", "search"]
