"""minilm: the all-MiniLM-L6-v2 recipe in pure JAX.

The book, in its reading order (the README's table): config, tokenizer, model (with checkpoint, the plain path from
text to embeddings), data, batch, losses, optim, parallel and train.py; relations and distill.py. The toolbox builds
on it: st/, tools/, run/, extensions/, fast/. docs/ has the math.

The names below are imported when first used, so `import minilm.model` loads the book's modules alone.
"""
import importlib

_WHERE = {"Config": "minilm.config", "embed": "minilm.fast.embedding", "load": "minilm.st.folder",
          "Model": "minilm.st.folder", "save": "minilm.st.folder", "SentenceModel": "minilm.tools.sentence_model",
          "cosine_similarity": "minilm.tools.similarity", "search": "minilm.tools.similarity"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'minilm' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
