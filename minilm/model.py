"""The BERT encoder in pure JAX, plus mean pooling and L2 normalisation: a sentence-transformers model.

Matches transformers' `modeling_bert.py` (BertModel, eager attention) to float32 rounding, and the
sentence-transformers modules Transformer -> Pooling(mean) -> Normalize. The math, the traps and the tolerances:
docs/encoder.md.

Params are a plain nested dict whose '.'-joined paths are the HF safetensors keys, e.g.
params["encoder"]["layer"][0]["attention"]["self"]["query"]["weight"] is `encoder.layer.0.attention.self.query.weight`.
Weights keep torch's [out, in] layout, so loading a checkpoint is `unflatten` and saving is `flatten`.

Shape legend: B batch, T query tokens, S key tokens (= T), D hidden, H heads, K head size (D/H),
F intermediate (FFN) size, V vocab, P max positions, N sentences.
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from minilm.config import Config

# ----------------------------------------------------------------------------------------------------------------
# Parameters: one table of HF names and shapes drives init, checkpoint validation and tests.


def layer_param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    D, F = cfg.hidden_size, cfg.intermediate_size
    return {
        "attention.self.query.weight": (D, D), "attention.self.query.bias": (D,),
        "attention.self.key.weight": (D, D), "attention.self.key.bias": (D,),
        "attention.self.value.weight": (D, D), "attention.self.value.bias": (D,),
        "attention.output.dense.weight": (D, D), "attention.output.dense.bias": (D,),
        "attention.output.LayerNorm.weight": (D,), "attention.output.LayerNorm.bias": (D,),
        "intermediate.dense.weight": (F, D), "intermediate.dense.bias": (F,),
        "output.dense.weight": (D, F), "output.dense.bias": (D,),
        "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,),
    }


def param_shapes(cfg: Config, pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """Every learnable tensor of BertModel, by its HF safetensors key. The pooler is unused by mean pooling
    but kept so that a Hub checkpoint round-trips; BertModel(add_pooling_layer=False) files lack it."""
    D = cfg.hidden_size
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, D),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, D),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, D),
        "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,),
    }
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"encoder.layer.{i}.{k}": s for k, s in layer_param_shapes(cfg).items()})
    if pooler:
        shapes.update({"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,)})
    return shapes


def flatten(params: dict, prefix: str = "") -> dict:
    """Nested dict (lists for `encoder.layer`) -> {HF key: array}."""
    items = enumerate(params) if isinstance(params, list) else params.items()
    flat = {}
    for k, v in items:
        key = f"{prefix}{k}"
        flat.update(flatten(v, key + ".") if isinstance(v, (dict, list)) else {key: v})
    return flat


def unflatten(flat: dict) -> dict:
    """{HF key: array} -> nested dict; a level whose keys are 0..n-1 becomes a list (encoder.layer)."""
    tree = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node) and sorted(map(int, node)) == list(range(len(node))):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(tree)


def init_params(cfg: Config, key: jax.Array, pooler: bool = True) -> dict:
    """Random init as HF `BertPreTrainedModel._init_weights`: weights N(0, initializer_range), biases 0,
    LayerNorm weight 1 / bias 0, and the padding_idx row of the word embeddings zeroed."""
    shapes = param_shapes(cfg, pooler)
    keys = jax.random.split(key, len(shapes))
    flat = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        if "LayerNorm" in name:
            flat[name] = jnp.ones(shape) if name.endswith("weight") else jnp.zeros(shape)
        elif name.endswith("bias"):
            flat[name] = jnp.zeros(shape)
        else:
            flat[name] = cfg.initializer_range * jax.random.normal(k, shape, jnp.float32)
    word = "embeddings.word_embeddings.weight"
    flat[word] = flat[word].at[cfg.pad_token_id].set(0.0)
    return unflatten(flat)


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


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout, as torch: active only when a PRNG key is passed (training), identity when key is None."""
    if key is None or rate == 0.0:
        return x
    keep = keep_mask(key, x.shape, 1.0 - rate)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep: float) -> jax.Array:
    """True with probability `keep`, independently for every element: jax.random.bernoulli(key, keep, shape), made
    cheap. Threefry, JAX's generator, costs about 8 ns an element on a CPU, which made dropout a quarter of a
    training step (mostly the [rows, heads, T, T] attention probabilities). Here threefry draws only two 32-bit
    seeds; each element's bits are its index through a counter-based hash (the murmur3 finaliser of a Weyl
    sequence, as in SplitMix, mixed twice with one seed each), about 0.5 ns an element. Every mask is a fixed function
    of (key, shape), so the same key gives the same mask (GradCache's replay relies on that)."""
    s1, s2 = jax.random.bits(key, (2,), jnp.uint32)
    z = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    z = _mix32(_mix32(z * jnp.uint32(0x9E3779B9) + s1) ^ s2)
    return z < jnp.uint32(min(round(keep * 2**32), 2**32 - 1))


def _mix32(z: jax.Array) -> jax.Array:
    """The murmur3 finaliser: every input bit flips each output bit with probability about 1/2."""
    z = (z ^ (z >> 16)) * jnp.uint32(0x85EBCA6B)
    z = (z ^ (z >> 13)) * jnp.uint32(0xC2B2AE35)
    return z ^ (z >> 16)


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


def attention_bias(mask_BT: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Additive key mask: 0 where attended, the dtype's minimum where padded (finfo.min, as HF since v4.21;
    -inf would make a fully padded row NaN)."""
    return jnp.where(mask_BT[:, None, None, :] > 0, 0.0, jnp.finfo(dtype).min).astype(dtype)  # B11S


def same_text(segments_BT: jax.Array) -> jax.Array:
    """[B,1,T,S] bool, the block-diagonal mask of packed rows: key s is a real token of query t's text. Several texts
    share a row as segments 1, 2, ... (0 = padding); a padded batch passes its mask (one text a row). A padding
    query sees no key at all. Packed attention and the relation KL (relations.py) both mask with it."""
    return (segments_BT[:, None, :, None] == segments_BT[:, None, None, :]) & (segments_BT[:, None, None, :] > 0)


def packed_attention_bias(segments_BT: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Sequence packing: a token attends only to keys of its own text (`same_text`), so each text sees exactly what
    it would see alone."""
    return jnp.where(same_text(segments_BT), 0.0, jnp.finfo(dtype).min).astype(dtype)


def layer(p: dict, h_BTD: jax.Array, bias_B11S: jax.Array, cfg: Config, key=None) -> jax.Array:
    """One post-LN transformer layer: a = LN(x + attn(x)); x' = LN(a + W2 gelu(W1 a)). The bias is B11S (padding)
    or B1TS (packed rows)."""
    B, T, D = h_BTD.shape
    q_BTHK, k_BSHK, v_BSHK = attention_qkv(p, h_BTD, cfg)
    K = q_BTHK.shape[-1]
    scores_BHTS = jnp.einsum("BTHK,BSHK->BHTS", q_BTHK, k_BSHK) * K**-0.5 + bias_B11S
    probs_BHTS = jax.nn.softmax(scores_BHTS.astype(jnp.float32), axis=-1).astype(h_BTD.dtype)  # float32 softmax
    probs_BHTS = dropout(probs_BHTS, cfg.attention_probs_dropout_prob, fold(key, 0))
    # Heads-major product, then heads back beside each other: the same sums as asking the einsum for BTHK, which
    # XLA:CPU computes slower (it transposes inside the dot; docs/fast-path.md has the measurement).
    ctx_BTD = jnp.einsum("BHTS,BSHK->BHTK", probs_BHTS, v_BSHK).transpose(0, 2, 1, 3).reshape(B, T, D)
    attn_BTD = dropout(linear(p["attention"]["output"]["dense"], ctx_BTD), cfg.hidden_dropout_prob, fold(key, 1))
    a_BTD = layer_norm(p["attention"]["output"]["LayerNorm"], h_BTD + attn_BTD, cfg.layer_norm_eps)
    f_BTF = activation(cfg.hidden_act, linear(p["intermediate"]["dense"], a_BTD))
    out_BTD = dropout(linear(p["output"]["dense"], f_BTF), cfg.hidden_dropout_prob, fold(key, 2))
    return layer_norm(p["output"]["LayerNorm"], a_BTD + out_BTD, cfg.layer_norm_eps)


class Encoded(NamedTuple):
    last_hidden_state: jax.Array  # BTD
    hidden_states: tuple  # L+1 arrays BTD: the embedding output, then each layer's output (as HF hidden_states)


def encode(params: dict, ids_BT: jax.Array, mask_BT: jax.Array, cfg: Config, type_ids_BT: jax.Array | None = None,
           key: jax.Array | None = None, num_layers: int | None = None, positions_BT: jax.Array | None = None,
           segments_BT: jax.Array | None = None) -> Encoded:
    """BertModel forward. Dropout runs only when `key` is given. `num_layers` runs only the first N layers
    (adaptive-layer training and `embed.py --layers N`). Packed rows pass `segments_BT` (which text each token
    belongs to, 0 for padding; mask_BT is then unused) and `positions_BT` (restarting at 0 for each text)."""
    if type_ids_BT is None:
        type_ids_BT = jnp.zeros_like(ids_BT)
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    if not 1 <= n <= cfg.num_hidden_layers:
        raise ValueError(f"num_layers {n} is outside 1..{cfg.num_hidden_layers}")
    h_BTD = embed_tokens(params["embeddings"], ids_BT, type_ids_BT, cfg, fold(key, cfg.num_hidden_layers),
                         positions_BT)
    bias_B11S = attention_bias(mask_BT, h_BTD.dtype) if segments_BT is None else \
        packed_attention_bias(segments_BT, h_BTD.dtype)
    hiddens = [h_BTD]
    for i, p in enumerate(params["encoder"]["layer"][:n]):
        h_BTD = layer(p, h_BTD, bias_B11S, cfg, fold(key, i))
        hiddens.append(h_BTD)
    return Encoded(h_BTD, tuple(hiddens))


# ----------------------------------------------------------------------------------------------------------------
# Sentence embeddings (sentence-transformers Pooling and Normalize modules).

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


def pool(h_BTD: jax.Array, mask_BT: jax.Array, mode: str = "mean") -> jax.Array:
    """Token states -> one vector per sentence. mean: average over real tokens (count clamped at 1e-9, as ST); cls:
    the first real token ([CLS], or the first after a prompt that pooling leaves out)."""
    m_BT1 = mask_BT[..., None].astype(h_BTD.dtype)
    if mode == "cls":
        first_B = jnp.argmax(mask_BT, axis=1)
        return jnp.take_along_axis(h_BTD, first_B[:, None, None], axis=1)[:, 0]
    if mode == "max":  # ST sets padded positions to -1e9 before the max
        return jnp.where(m_BT1 > 0, h_BTD, -1e9).max(axis=1)
    count_B1 = jnp.maximum(m_BT1.sum(axis=1), 1e-9)
    summed_BD = (h_BTD * m_BT1).sum(axis=1)
    if mode == "mean":
        return summed_BD / count_B1
    if mode == "mean_sqrt_len":
        return summed_BD / jnp.sqrt(count_B1)
    raise ValueError(f"pooling mode {mode!r} is not supported; expected one of {POOLING_MODES}")


def skip_prompt(mask_BT: jax.Array, skip: int) -> jax.Array:
    """The pooling mask without the first `skip` tokens ([CLS] and a prompt that pooling leaves out, as
    sentence-transformers' include_prompt=False); the encoder still attends to them."""
    return mask_BT * (jnp.arange(mask_BT.shape[1]) >= skip).astype(mask_BT.dtype) if skip else mask_BT


PACKED_POOLING_MODES = ("mean", "cls", "mean_sqrt_len")


def pool_segments(h_BTD: jax.Array, segments_BT: jax.Array, positions_BT: jax.Array, num_segments: int,
                  mode: str = "mean", skip: int = 0) -> jax.Array:
    """Packed rows -> one vector per text: emb_BND[b, n] pools the tokens of segment n+1 of row b (zeros for an
    empty slot), leaving out each text's first `skip` tokens (skip_prompt). The same sums as `pool`, as a [B, T, N]
    one-hot matmul."""
    if mode not in PACKED_POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} cannot pool packed rows; expected one of {PACKED_POOLING_MODES}")
    member_BTN = (segments_BT[..., None] == jnp.arange(1, num_segments + 1)) & (positions_BT[..., None] >= skip)
    if mode == "cls":
        member_BTN = member_BTN & (positions_BT[..., None] == skip)
    member_BTN = member_BTN.astype(h_BTD.dtype)
    summed_BND = jnp.einsum("BTN,BTD->BND", member_BTN, h_BTD)
    count_BN1 = jnp.maximum(member_BTN.sum(axis=1), 1e-9)[..., None]
    if mode == "cls":
        return summed_BND
    return summed_BND / (count_BN1 if mode == "mean" else jnp.sqrt(count_BN1))


def mean_pool(h_BTD: jax.Array, mask_BT: jax.Array) -> jax.Array:
    return pool(h_BTD, mask_BT, "mean")


def l2_normalize(x_ND: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    return x_ND / jnp.maximum(jnp.linalg.norm(x_ND, axis=-1, keepdims=True), eps)


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


def sentence_embedding(params: dict, ids_BT, mask_BT, cfg: Config, type_ids_BT=None, key=None,
                       pooling: str = "mean", normalize: bool = True, num_layers: int | None = None,
                       dim: int | None = None, skip: int = 0, dense: tuple = (),
                       activations: tuple[str, ...] = ()) -> jax.Array:
    """Ids -> sentence embeddings emb_BD: encode, pool over the attention mask (less the first `skip` tokens:
    skip_prompt), the Dense modules if any (dense_head), optionally L2-normalise. `dim` keeps the first D dimensions
    (Matryoshka models), cut before the normalisation so the shorter vector has unit length."""
    h_BTD = encode(params, ids_BT, mask_BT, cfg, type_ids_BT, key, num_layers).last_hidden_state
    emb_BD = dense_head(pool(h_BTD, skip_prompt(mask_BT, skip), pooling), dense, activations)[:, :dim]
    return l2_normalize(emb_BD) if normalize else emb_BD


def keep_layers(params: dict, cfg: Config, layers: tuple[int, ...]) -> tuple[dict, Config]:
    """A smaller student made by keeping some layers of a model (e.g. (0, 2, 4) of six), renumbered from 0:
    how nreimers/MiniLM-L6-H384-uncased was cut from the 12-layer MiniLM (docs/distillation.md)."""
    if not layers or any(not 0 <= i < cfg.num_hidden_layers for i in layers):
        raise ValueError(f"layers {layers} must be indices in 0..{cfg.num_hidden_layers - 1}")
    kept = [params["encoder"]["layer"][i] for i in layers]
    return {**params, "encoder": {**params["encoder"], "layer": kept}}, \
        dataclasses.replace(cfg, num_hidden_layers=len(layers))
