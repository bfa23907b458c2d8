"""A model object for everyday use, as sentence-transformers users know it:

    model = SentenceModel.load()                  # all-MiniLM-L6-v2 (or SentenceModel.load("folder"))
    emb = model.encode(["A man is eating food.", "A man is riding a horse."], batch_size=64)
    model.similarity(emb, emb)                    # [2, 2] similarities by the folder's function (cosine here)

It holds a loaded Model (st/folder.py) and calls the functions: encode is minilm.embed (the fast path; fast=False
takes the plain one), similarity is tools/similarity.py's with the folder's similarity_fn_name.
"""
import dataclasses

import numpy as np

from minilm.fast.embedding import embed
from minilm.st.folder import default_model_dir, load, Model
from minilm.tools.similarity import similarity


@dataclasses.dataclass(eq=False)
class SentenceModel:
    model: Model

    @classmethod
    def load(cls, folder=None) -> "SentenceModel":
        """A model folder (HF / sentence-transformers layout), or all-MiniLM-L6-v2 when None."""
        return cls(load(default_model_dir() if folder is None else folder))

    @property
    def dim(self) -> int:
        return self.model.dim

    def __repr__(self) -> str:
        return f"SentenceModel({self.model!r})"

    def encode(self, texts, batch_size: int = 32, normalize: bool | None = None, **options) -> np.ndarray:
        """float32 [N, dim] for a list of texts, or [dim] for one string (as sentence-transformers' encode).
        options: those of minilm.embed (prompt, prompt_name, max_length, num_layers, dim, pack, dtype, progress,
        fast)."""
        if isinstance(texts, str):
            return self.encode([texts], batch_size, normalize, **options)[0]
        return embed(texts, self.model, batch_size=batch_size, normalize=normalize, **options)

    def encode_query(self, texts, **options) -> np.ndarray:
        """encode with the folder's 'query' prompt (none if it has none), as sentence-transformers' encode_query."""
        return self.encode(texts, **{"prompt_name": "query", **options})

    def encode_document(self, texts, **options) -> np.ndarray:
        """encode with the folder's 'document' (or 'passage', 'corpus') prompt, as encode_document."""
        return self.encode(texts, **{"prompt_name": "document", **options})

    def similarity(self, a: np.ndarray, b: np.ndarray, fn: str | None = None) -> np.ndarray:
        """Scores [N, M] of two sets of embeddings ([N] and [M] for single vectors) by the folder's similarity
        function (config_sentence_transformers.json similarity_fn_name), or fn: cosine, dot, euclidean, manhattan."""
        scores = similarity(np.atleast_2d(a), np.atleast_2d(b), fn or self.model.similarity_fn)
        return scores.reshape(np.shape(a)[:-1] + np.shape(b)[:-1])
