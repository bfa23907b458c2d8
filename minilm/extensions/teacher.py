"""The teacher's sentence embeddings for distill.py's embedding loss: cached on disk (--teacher-cache), so that the
teacher's forward runs once and not every step, and projected onto a narrower student's width (PCA).
tests/test_distill.py checks a cached run equal to one that runs the teacher, and the projection against an SVD."""
import hashlib
import pathlib
import shutil

import jax
import numpy as np
import safetensors
import safetensors.numpy

from minilm.checkpoint import flatten
from minilm.run.atomic import usual_mode
from minilm.st.folder import Model


PCA_TEXTS = 10_000  # teacher embeddings the projection is fitted on
PART_TEXTS = 8192  # texts a cache saves at a time, so that an interrupted cache continues where it stopped


def fingerprint(texts: list[str], teacher: Model, max_length: int) -> str:
    """What a cache of teacher embeddings depends on: the texts, the teacher's weights and head, the truncation."""
    h = hashlib.sha256(f"{max_length} {teacher.pooling} {teacher.normalize} {teacher.activations}\n".encode())
    for name, x in sorted(flatten(teacher.params).items()):
        h.update(name.encode()), h.update(np.ascontiguousarray(x).tobytes())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


def teacher_cache(path: str, texts: list[str], teacher: Model, max_length: int) -> dict[str, np.ndarray]:
    """{text: the teacher's embedding} of every distinct text, read from `path` (a safetensors file) or computed with
    the fast embedder and written there (to a temporary name, then renamed). A file made from other texts, another
    teacher or another --max-length is an error, never silently used."""
    from minilm.fast.embedding import embed
    distinct = list(dict.fromkeys(texts))
    key = fingerprint(distinct, teacher, max_length)
    file = pathlib.Path(path)
    if file.exists():
        with safetensors.safe_open(file, "np") as f:
            if (f.metadata() or {}).get("fingerprint") != key:
                raise ValueError(f"{file}: these teacher embeddings were made from other texts, another teacher or "
                                 f"another --max-length; delete the file or name another --teacher-cache")
            emb_ND = f.get_tensor("embeddings")
        print(f"teacher embeddings of {len(distinct):,} texts read from {file}", flush=True)
    else:
        print(f"embedding {len(distinct):,} texts with the teacher once, for {file}", flush=True)
        parts = file.with_name(f".{file.name}.parts-{key[:16]}")  # these texts' parts, whatever run made them
        emb_ND = embed_in_parts(distinct, teacher, max_length, parts if jax.process_index() == 0 else None)
        if jax.process_index() == 0:
            save_atomic(file, emb_ND, key)
            shutil.rmtree(parts, ignore_errors=True)
    return dict(zip(distinct, emb_ND))


def embed_in_parts(texts: list[str], teacher: Model, max_length: int, folder: pathlib.Path | None) -> np.ndarray:
    """The teacher's embeddings of `texts`, PART_TEXTS at a time, each part saved in `folder` as it finishes and
    read back instead of computed when it is there (a run stopped by Ctrl-C or the end of a session loses at most
    one part). folder None: nothing saved."""
    from minilm.fast.embedding import embed
    out, starts = [], range(0, len(texts), PART_TEXTS)
    for i, start in enumerate(starts):
        part = None if folder is None else folder / f"{i:05d}.safetensors"
        if part is not None and part.is_file():
            with safetensors.safe_open(part, "np") as f:
                out.append(f.get_tensor("embeddings"))
            continue
        if len(starts) > 1:
            print(f"part {i + 1} of {len(starts)}", flush=True)
        out.append(embed(texts[start:start + PART_TEXTS], teacher, max_length=max_length, progress=True))
        if part is not None:
            save_atomic(part, out[-1], "")
    return np.concatenate(out)


def save_atomic(file: pathlib.Path, emb_ND: np.ndarray, fingerprint: str) -> None:
    """Written to a temporary name, then renamed: a crash never leaves a half-written file under the real name."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{np.random.randint(1 << 30)}")
    safetensors.numpy.save_file({"embeddings": emb_ND}, tmp, metadata={"fingerprint": fingerprint})
    usual_mode(tmp)
    tmp.replace(file)


def pca_projection(emb_ND: np.ndarray, dim: int) -> np.ndarray:
    """[D, dim]: the top `dim` principal directions of the teacher's embeddings (eigenvectors of their covariance,
    largest eigenvalue first). Applied without centering, as sentence-transformers' distillation example applies
    its PCA Dense layer: a narrower student learns the teacher's embedding in the subspace where it varies most."""
    x_ND = emb_ND.astype(np.float64)
    cov_DD = np.cov(x_ND, rowvar=False)
    eigenvalues, vectors_DD = np.linalg.eigh(cov_DD)  # ascending
    return vectors_DD[:, ::-1][:, :dim].astype(np.float32)


def projection_for(teacher: Model, student: Model, texts: list[str], cache, *, embedding_loss: str, seed: int,
                   max_length: int) -> np.ndarray | None:
    """None when the widths agree (or there is no --embedding-loss); else the PCA projection of the teacher's
    embeddings of PCA_TEXTS texts, drawn with the run's seed (the same on resume)."""
    D_t, D_s = teacher.dim, student.dim  # the embeddings' widths (a Dense module may change the hidden size)
    if embedding_loss == "none" or D_t == D_s:
        return None
    if D_s > D_t:
        raise ValueError(f"--embedding-loss needs a student no wider than its teacher: student {D_s}, teacher {D_t}")
    rng = np.random.default_rng([seed, 1])
    texts = [texts[i] for i in rng.permutation(len(texts))[:PCA_TEXTS]]
    if cache is not None:
        emb_ND = np.stack([cache[t] for t in texts])
    else:
        from minilm.fast.embedding import embed
        emb_ND = embed(texts, teacher, max_length=max_length)
    if len(emb_ND) < D_s:
        raise ValueError(f"PCA to {D_s} dimensions needs at least {D_s} texts; --data has {len(emb_ND)}")
    return pca_projection(emb_ND, D_s)
