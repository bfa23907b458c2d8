"""The BERT encoder in pure JAX, then mean pooling and L2 normalisation: all-MiniLM-L6-v2's forward pass.

Matches transformers' `modeling_bert.py` (BertModel, eager attention) to float32 rounding, and the
sentence-transformers modules Transformer -> Pooling(mean) -> Normalize. The math, the traps and the tolerances:
docs/encoder.md. Other heads (CLS or max pooling, Dense modules, prompts) are in minilm/st/heads.py.

Params are a plain nested dict whose '.'-joined paths are the HF safetensors keys, e.g.
params["encoder"]["layer"][0]["attention"]["self"]["query"]["weight"] is `encoder.layer.0.attention.self.query.weight`
(checkpoint.py: their shapes, random init, reading and writing). Weights keep torch's [out, in] layout.

Shape legend: B batch, T query tokens, S key tokens (= T), D hidden, H heads, K head size (D/H),
F intermediate (FFN) size, V vocab, P max positions, N sentences.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from minilm.config import Config

# ----------------------------------------------------------------------------------------------------------------
# Building blocks.


def linear(p: dict, x_BTD: jax.Array) -> jax.Array:
    """torch.nn.Linear with its [out, in] weight: x W^T + b."""
    return jnp.einsum("...D,FD->...F", x_BTD, p["weight"]) + p["bias"]


def layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis with the biased variance, as torch; eps comes from the config (1e-12).
    Statistics in float32 also when x is bfloat16 (the --dtype bfloat16 path); a no-op cast for float32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * p["weight"] + p["bias"]).astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":  # HF "gelu" = exact erf GELU; jax.nn.gelu defaults to the tanh form, hence approximate=False
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"hidden_act {name!r} is not supported")


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep: float) -> jax.Array:
    """True with probability `keep`, independently for every element: the law of jax.random.bernoulli(key, keep,
    shape), drawn cheaply. Threefry, JAX's generator, spends tens of mixing rounds on each element (a quarter of a
    training step went to dropout's draws); here it draws two 32-bit seeds, and each element's bits are its index
    through a counter hash (a Weyl sequence through the murmur3 finaliser, twice, one seed each), as in SplitMix.
    The mask is a fixed function of (key, shape): the same key gives the same mask (GradCache's replay needs it)."""
    s1, s2 = jax.random.bits(key, (2,), jnp.uint32)
    z = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    z = _mix32(_mix32(z * jnp.uint32(0x9E3779B9) + s1) ^ s2)
    return z < jnp.uint32(min(round(keep * 2**32), 2**32 - 1))


def _mix32(z: jax.Array) -> jax.Array:
    """The murmur3 finaliser: every input bit flips each output bit with probability about 1/2."""
    z = (z ^ (z >> 16)) * jnp.uint32(0x85EBCA6B)
    z = (z ^ (z >> 13)) * jnp.uint32(0xC2B2AE35)
    return z ^ (z >> 16)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout, as torch: active only when a PRNG key is passed (training), identity when key is None."""
    if key is None or rate == 0.0:
        return x
    keep = keep_mask(key, x.shape, 1.0 - rate)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def fold(key: jax.Array | None, i: int) -> jax.Array | None:
    return None if key is None else jax.random.fold_in(key, i)


# ----------------------------------------------------------------------------------------------------------------
# The encoder.


def embed_tokens(p: dict, ids_BT: jax.Array, type_ids_BT: jax.Array, cfg: Config, key=None,
                 positions_BT: jax.Array | None = None) -> jax.Array:
    """x0 = LN(word[ids] + type[tt] + pos[t]) with positions 0..T-1 (right padding), or `positions_BT` (packed rows,
    where each text's positions restart at 0). HF adds word + type first, then position, and float32 addition
    order matters for bit-level agreement."""
    T = ids_BT.shape[1]
    if positions_BT is None and T > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}; "
                         "truncate the input (max_length) or use a model with more positions")
    x_BTD = p["word_embeddings"]["weight"][ids_BT] + p["token_type_embeddings"]["weight"][type_ids_BT]
    pos_table = p["position_embeddings"]["weight"]
    x_BTD = x_BTD + (pos_table[:T][None] if positions_BT is None else pos_table[positions_BT])
    x_BTD = layer_norm(p["LayerNorm"], x_BTD, cfg.layer_norm_eps)
    return dropout(x_BTD, cfg.hidden_dropout_prob, key)


def attention_qkv(p: dict, h_BTD: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One layer's Q, K, V from its input hidden state, split into heads: head h owns features h*K..h*K+K-1.
    Distillation (MiniLM) calls this on hidden_states[l] to get layer l's relations."""
    B, T, _ = h_BTD.shape
    H = cfg.num_attention_heads
    K = cfg.hidden_size // H
    sa = p["attention"]["self"]
    split = lambda x_BTD: x_BTD.reshape(B, T, H, K)
    return split(linear(sa["query"], h_BTD)), split(linear(sa["key"], h_BTD)), split(linear(sa["value"], h_BTD))


def attention_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Additive mask: 0 where attended, the dtype's minimum where not (finfo.min, as HF since v4.21; -inf would make
    a fully padded row NaN). mask_BS: which keys are real tokens (padding), B11S; or mask_B1TS: which keys query
    t may see (packed rows, batch.same_text), B1TS."""
    mask_B1TS = mask[:, None, None, :] if mask.ndim == 2 else mask
    return jnp.where(mask_B1TS > 0, 0.0, jnp.finfo(dtype).min).astype(dtype)


def layer(p: dict, h_BTD: jax.Array, bias_B1TS: jax.Array, cfg: Config, key=None) -> jax.Array:
    """One post-LN transformer layer: a = LN(x + attn(x)); x' = LN(a + W2 gelu(W1 a)). bias_B1TS: attention_bias's
    (its T axis is 1 for padding masks, which are the same for every query)."""
    drop = lambda x, rate, i: dropout(x, rate, fold(key, i))
    B, T, D = h_BTD.shape
    q_BTHK, k_BSHK, v_BSHK = attention_qkv(p, h_BTD, cfg)
    K = q_BTHK.shape[-1]
    # softmax(Q K^T / sqrt(K) + bias) V, with two identities that keep passes off the [T, S] scores:
    # (Q / sqrt(K)) K^T = Q K^T / sqrt(K), and softmax(s) V = (exp(s - max) V) / sum(exp(s - max)).
    # Dropout of a probability is dropout of its numerator. docs/fast-path.md measures what each saves.
    scores_BHTS = (jnp.einsum("BTHK,BSHK->BHTS", q_BTHK * K**-0.5, k_BSHK) + bias_B1TS).astype(jnp.float32)
    exp_BHTS = jnp.exp(scores_BHTS - jax.lax.stop_gradient(scores_BHTS.max(-1, keepdims=True)))
    sum_BHT1 = exp_BHTS.sum(-1, keepdims=True)
    exp_BHTS = drop(exp_BHTS.astype(h_BTD.dtype), cfg.attention_probs_dropout_prob, 0)
    # Heads-major product, then heads side by side again: XLA:CPU's BTHK product transposes inside the dot.
    ctx_BHTK = (jnp.einsum("BHTS,BSHK->BHTK", exp_BHTS, v_BSHK) / sum_BHT1).astype(h_BTD.dtype)
    ctx_BTD = ctx_BHTK.transpose(0, 2, 1, 3).reshape(B, T, D)
    attn_BTD = drop(linear(p["attention"]["output"]["dense"], ctx_BTD), cfg.hidden_dropout_prob, 1)
    a_BTD = layer_norm(p["attention"]["output"]["LayerNorm"], h_BTD + attn_BTD, cfg.layer_norm_eps)
    f_BTF = activation(cfg.hidden_act, linear(p["intermediate"]["dense"], a_BTD))
    out_BTD = drop(linear(p["output"]["dense"], f_BTF), cfg.hidden_dropout_prob, 2)
    return layer_norm(p["output"]["LayerNorm"], a_BTD + out_BTD, cfg.layer_norm_eps)


class Encoded(NamedTuple):
    last_hidden_state: jax.Array  # BTD
    hidden_states: tuple  # L+1 arrays BTD: the embedding output, then each layer's output (as HF hidden_states)


def encode(params: dict, ids_BT: jax.Array, mask: jax.Array, cfg: Config, type_ids_BT: jax.Array | None = None,
           key: jax.Array | None = None, num_layers: int | None = None,
           positions_BT: jax.Array | None = None) -> Encoded:
    """BertModel forward. mask: mask_BT (1 for real tokens, 0 for padding), or mask_B1TS with positions_BT for packed
    rows (batch.py: several texts a row, each with its own positions and block-diagonal attention). Dropout runs
    only when `key` is given. `num_layers` runs only the first N layers."""
    if type_ids_BT is None:
        type_ids_BT = jnp.zeros_like(ids_BT)
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    if not 1 <= n <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {n} is outside 1..{cfg.num_hidden_layers}")
    h_BTD = embed_tokens(params["embeddings"], ids_BT, type_ids_BT, cfg, fold(key, cfg.num_hidden_layers),
                         positions_BT)
    bias_B1TS = attention_bias(mask, h_BTD.dtype)
    hiddens = [h_BTD]
    for i, p in enumerate(params["encoder"]["layer"][:n]):
        h_BTD = layer(p, h_BTD, bias_B1TS, cfg, fold(key, i))
        hiddens.append(h_BTD)
    return Encoded(h_BTD, tuple(hiddens))


# ----------------------------------------------------------------------------------------------------------------
# The sentence embedding (sentence-transformers' Pooling(mean) and Normalize modules).


def mean_pool(h_BTD: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """Token states -> one vector per sentence: the average over its real tokens (the count clamped at 1e-9, as
    sentence-transformers), so padding never enters."""
    m_BT1 = mask_BT[..., None].astype(h_BTD.dtype)
    return (h_BTD * m_BT1).sum(axis=1) / jnp.maximum(m_BT1.sum(axis=1), 1e-9)


def l2_normalize(x_ND: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    return x_ND / jnp.maximum(jnp.linalg.norm(x_ND, axis=-1, keepdims=True), eps)


def sentence_embedding(params: dict, ids_BT: jax.Array, mask_BT: jax.Array, cfg: Config) -> jax.Array:
    """Token ids [B, T] and their mask -> unit-length sentence embeddings [B, D]."""
    h_BTD = encode(params, ids_BT, mask_BT, cfg).last_hidden_state
    return l2_normalize(mean_pool(h_BTD, mask_BT))


# ----------------------------------------------------------------------------------------------------------------
# The plain path from texts to embeddings: Tokenizer.batch (tokenizer.py: word pieces, [CLS] ... [SEP], truncation,
# padding), then sentence_embedding, batch by batch.

embed_batch = jax.jit(sentence_embedding, static_argnames="cfg")  # one compiled forward per batch shape


def embed(texts: list[str], params: dict, cfg: Config, tokenizer, *, batch_size: int = 32,
          max_length: int | None = None) -> np.ndarray:
    """Embed a list of strings -> float32 [N, D], row i for texts[i]. tokenizer: a tokenizer.Tokenizer; max_length:
    tokens including [CLS] and [SEP] (default: the tokenizer's, the folder's max_seq_length, 256 for
    all-MiniLM-L6-v2)."""
    out = []
    # Parity with torch needs full float32 matmuls (GPUs default to TF32 and TPUs to bfloat16 passes).
    with jax.default_matmul_precision("highest"):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.batch(texts[start:start + batch_size], max_length=max_length)  # padded [B, T]
            out.append(np.asarray(embed_batch(params, batch.ids_BT, batch.mask_BT, cfg=cfg), np.float32))
    return np.concatenate(out)
