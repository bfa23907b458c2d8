"""sentence-transformers' heads beyond mean pooling and L2 normalisation, and the plain path with all of them.

A sentence-transformers folder may pool by its first token (CLS), the maximum or the mean over the square root of the
length, add Dense modules after the pooling, put a prompt before each text (and leave its tokens out of the pooling),
keep only the first layers or dimensions (adaptive-layer and Matryoshka models). model.py does none of that;
`embed` here is the plain path (model.embed's loop) with the folder's own head, the reference the fast path
(minilm.embed) is proven equal to (tests/test_fast_path.py, tests/test_dense.py, tests/test_prompts.py).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from minilm import batch as B
from minilm.config import Config
from minilm.model import encode, l2_normalize, linear, mean_pool

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
PACKED_POOLING_MODES = ("mean", "cls", "mean_sqrt_len")  # the pooling modes that pool packed rows


def pool(h_BTD: jax.Array, mask_BT: jax.Array, mode: str = "mean") -> jax.Array:
    """Token states -> one vector per sentence. mean: average over real tokens (count clamped at 1e-9, as ST); cls:
    the first real token ([CLS], or the first after a prompt that pooling leaves out)."""
    m_BT1 = mask_BT[..., None].astype(h_BTD.dtype)
    if mode == "cls":
        first_B = jnp.argmax(mask_BT, axis=1)
        return jnp.take_along_axis(h_BTD, first_B[:, None, None], axis=1)[:, 0]
    if mode == "max":  # ST sets padded positions to -1e9 before the max
        return jnp.where(m_BT1 > 0, h_BTD, -1e9).max(axis=1)
    if mode == "mean":
        return mean_pool(h_BTD, mask_BT)
    count_B1 = jnp.maximum(m_BT1.sum(axis=1), 1e-9)
    summed_BD = (h_BTD * m_BT1).sum(axis=1)
    if mode == "mean_sqrt_len":
        return summed_BD / jnp.sqrt(count_B1)
    raise ValueError(f"pooling mode {mode!r} is not supported; expected one of {POOLING_MODES}")


def pool_segments(h_BTD: jax.Array, segments_BT: jax.Array, positions_BT: jax.Array, num_segments: int,
                  mode: str = "mean", skip: int = 0) -> jax.Array:
    """batch.pool_segments with the pooling modes of packed rows, leaving out each text's first `skip` tokens (a
    prompt that pooling leaves out): cls takes a text's first token after them, mean_sqrt_len divides the sum by the
    square root of the count."""
    if mode not in PACKED_POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} cannot pool packed rows; expected one of {PACKED_POOLING_MODES}")
    if mode == "mean" and not skip:
        return B.pool_segments(h_BTD, segments_BT, num_segments)
    member_BTN = B.segment_members(segments_BT, num_segments) & (positions_BT[..., None] >= skip)
    if mode == "cls":
        member_BTN = member_BTN & (positions_BT[..., None] == skip)
    member_BTN = member_BTN.astype(h_BTD.dtype)
    summed_BND = jnp.einsum("BTN,BTD->BND", member_BTN, h_BTD)
    count_BN1 = jnp.maximum(member_BTN.sum(axis=1), 1e-9)[..., None]
    if mode == "cls":
        return summed_BND
    return summed_BND / (count_BN1 if mode == "mean" else jnp.sqrt(count_BN1))


def pool_columns(h_BTD, batch, pooling: str = "mean") -> jax.Array:
    """batch.pool_columns with every pooling mode: padded rows by `pool`, packed ones by `pool_segments`."""
    if pooling == "mean":
        return B.pool_columns(h_BTD, batch)
    if isinstance(batch, B.Padded):
        C, b, T = batch.ids_CBT.shape
        return pool(h_BTD, batch.mask_CBT.reshape(C * b, T), pooling).reshape(C, b, -1)
    L = batch.ids_RL.shape[1]
    return B.texts_of(pool_segments(h_BTD, batch.segments_RL, batch.positions_RL, L // 4, pooling), batch)


def skip_prompt(mask_BT: jax.Array, skip: int) -> jax.Array:
    """The pooling mask without the first `skip` tokens ([CLS] and a prompt that pooling leaves out, as
    sentence-transformers' include_prompt=False); the encoder still attends to them."""
    return mask_BT * (jnp.arange(mask_BT.shape[1]) >= skip).astype(mask_BT.dtype) if skip else mask_BT


ACTIVATIONS = {  # sentence-transformers Dense activation_function (a torch class path) -> the function
    "torch.nn.modules.activation.Tanh": jnp.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": jax.nn.relu,
    "torch.nn.modules.activation.GELU": lambda x: jax.nn.gelu(x, approximate=False),
    "torch.nn.modules.activation.Sigmoid": jax.nn.sigmoid,
    "torch.nn.modules.activation.SiLU": jax.nn.silu,
}


def dense_head(emb_BD: jax.Array, dense: tuple = (), activations: tuple[str, ...] = ()) -> jax.Array:
    """sentence-transformers' Dense modules after the pooling, in order: emb = activation(emb W^T + b)."""
    for p, name in zip(dense, activations):
        emb_BD = linear(p, emb_BD) if "bias" in p else emb_BD @ p["weight"].T
        emb_BD = ACTIVATIONS[name](emb_BD)
    return emb_BD


class Head(NamedTuple):
    """A model's head after the encoder: its pooling, whether it L2-normalises, its Dense modules' activations (their
    weights are params["dense"])."""
    pooling: str = "mean"
    normalize: bool = True
    activations: tuple[str, ...] = ()

    @classmethod
    def of(cls, model) -> "Head":
        return cls(model.pooling, model.normalize, model.activations)


def column_embeddings(params: dict, h_BTD, batch, head: Head) -> jax.Array:
    """[C, b, D]: each column's sentence embeddings from the last layer's token states of a training batch (Padded
    or Packed): pooled (pool_columns), through the Dense modules if any, normalised if the head normalises."""
    emb_CbD = dense_head(pool_columns(h_BTD, batch, head.pooling), params.get("dense", ()), head.activations)
    return l2_normalize(emb_CbD) if head.normalize else emb_CbD


def embedding_with_head(params: dict, ids_BT, mask_BT, cfg: Config, type_ids_BT=None, key=None,
                        pooling: str = "mean", normalize: bool = True, num_layers: int | None = None,
                        dim: int | None = None, skip: int = 0, dense: tuple = (),
                        activations: tuple[str, ...] = ()) -> jax.Array:
    """Ids -> sentence embeddings emb_BD, model.sentence_embedding with every head option: encode, pool over the
    mask (less the first `skip` tokens: skip_prompt), the Dense modules if any (dense_head), optionally
    L2-normalise. `dim` keeps the first D dimensions (Matryoshka models), cut before the normalisation so the shorter
    vector has unit length."""
    h_BTD = encode(params, ids_BT, mask_BT, cfg, type_ids_BT, key, num_layers).last_hidden_state
    emb_BD = pool(h_BTD, skip_prompt(mask_BT, skip), pooling)
    emb_BD = dense_head(emb_BD, dense, activations)
    emb_BD = emb_BD[:, :dim]  # Matryoshka: the first dimensions
    return l2_normalize(emb_BD) if normalize else emb_BD


# One compiled forward per batch shape; the options that change the program are static.
embed_batch = jax.jit(embedding_with_head,
                      static_argnames=("cfg", "pooling", "normalize", "num_layers", "dim", "skip", "activations"))


def embed(texts, model, *, batch_size: int = 32, max_length: int | None = None, normalize: bool | None = None,
          num_layers: int | None = None, dim: int | None = None, prompt: str | None = None,
          prompt_name: str | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, dim] by the plain path, with the model's own head.

    model: a loaded Model (st/folder.py). max_length: tokens including [CLS] and [SEP] (default: the folder's
    max_seq_length). normalize: None follows the folder (its Normalize module). num_layers: run only the first N
    layers; dim: keep the first D dimensions. prompt, prompt_name: text put before each text (with_prompt)."""
    texts = check_options(texts, model, batch_size, max_length, num_layers, dim)
    texts, skip = with_prompt(model, texts, prompt, prompt_name)
    forward = functools.partial(
        embed_batch, cfg=model.config, pooling=model.pooling, normalize=model.normalize if normalize is None else
        normalize, num_layers=num_layers, dim=dim, skip=skip, dense=model.dense, activations=model.activations)
    out = []
    with jax.default_matmul_precision("highest"):  # as model.embed: full float32 matmuls on every backend
        for start in range(0, len(texts), batch_size):
            batch = model.tokenizer.batch(texts[start:start + batch_size], max_length=max_length)
            out.append(np.asarray(forward(model.params, batch.ids_BT, batch.mask_BT), np.float32))
    return np.concatenate(out)


DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the names sentence-transformers' encode_document looks for


def resolve_prompt(m, prompt: str | None = None, prompt_name: str | None = None) -> str:
    """The text to put before each text: `prompt`; else the folder's prompts[prompt_name]; else the prompt of the
    folder's default_prompt_name; else none. prompt_name "query" / "document" fall back to no prompt (and
    "document" to "passage" or "corpus") when the folder lacks them, as encode_query / encode_document do."""
    if prompt is not None:
        return prompt
    if prompt_name in ("query", "document"):
        names = ("query",) if prompt_name == "query" else DOCUMENT_PROMPTS
        prompt_name = next((n for n in names if n in m.prompts), m.default_prompt_name)
    elif prompt_name is None:
        prompt_name = m.default_prompt_name
    if prompt_name is None:
        return ""
    if prompt_name not in m.prompts:
        names = ", ".join(m.prompts) or "none"
        raise ValueError(f"prompt name {prompt_name!r} is not one of the model's prompts ({names}; they are in "
                         f"config_sentence_transformers.json)")
    return m.prompts[prompt_name]


def with_prompt(m, texts: list[str], prompt: str | None = None,
                prompt_name: str | None = None) -> tuple[list[str], int]:
    """(texts with the prompt put before each, tokens that pooling skips). The skip is 0 unless the folder's
    Pooling has include_prompt false: then [CLS] and the prompt's tokens, the prompt tokenized alone less its
    trailing [SEP], as sentence-transformers measures it."""
    p = resolve_prompt(m, prompt, prompt_name)
    if not p:
        return texts, 0
    skip = 0 if m.include_prompt else len(m.tokenizer.encode(p).ids) - 1
    return [p + t for t in texts], skip


def check_options(texts, m, batch_size: int, max_length, num_layers, dim) -> list[str]:
    """The texts as a list, after checking them and the options against the model (one clear error each)."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of strings; wrap a single text in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg, specials = m.config, m.tokenizer.n_special(False)
    if max_length is not None and not specials < max_length <= cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} is outside {specials + 1}..{cfg.max_position_embeddings} "
                         f"(max_position_embeddings of the model)")
    if num_layers is not None and not 1 <= num_layers <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {num_layers} is outside 1..{cfg.num_hidden_layers}")
    if dim is not None and not 1 <= dim <= m.dim:
        raise ValueError(f"dim {dim} is outside 1..{m.dim}")
    return texts
