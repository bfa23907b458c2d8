"""MiniLM self-attention relation distillation: masked, vectorised relation KL in float32 (docs/distillation.md).

v1 (MiniLM, arXiv 2002.10957): per attention head a, attention transfer AT = softmax(Q_a K_a^T / sqrt(K)) and value
relation VR = softmax(V_a V_a^T / sqrt(K)); loss = L_AT + L_VR, so teacher and student need the same head count H.
v2 (MiniLMv2, arXiv 2012.15828): concatenate the heads, split D into R relation heads of d_r = D/R features and
transfer Q-Q, K-K, V-V relations softmax(A_r A_r^T / sqrt(d_r)), each side scaled by its own sqrt(D/R); the T x T
relations then match whatever the two widths and head counts are.
Each relation: per query row KL(teacher || student), padded keys masked, padded query rows dropped, per example
sum / (R n_b), mean over examples (the Bloomberg minilmv2.bb reduction). PaddleNLP instead sums
padded query rows too and divides by R * T_pad * B, which differs whenever a batch has padding. Packed rows
(several texts a row, batch.py) work alike: keys outside a query's text are masked, each text is normalised by
its own length.
Shape legend as model.py, plus R relation heads and S key tokens (= T).
"""
import math

import jax
import jax.numpy as jnp

from minilm.batch import same_text
from minilm.model import attention_qkv

RELATIONS = {"qk": ("query", "key"), "vv": ("value", "value"), "qq": ("query", "query"), "kk": ("key", "key")}


def layer_qkv(params, hidden_states, layer: int, cfg) -> dict[str, jax.Array]:
    """{"query","key","value"} -> [B,T,D] projections of layer `layer` (0-based, negative counts from the end, -1 =
    last layer), computed from hidden_states[layer] (that layer's input) with that layer's Linear weights via
    model.attention_qkv, reshaped back to [B,T,D] (heads contiguous along D)."""
    L = cfg.num_hidden_layers
    if not -L <= layer < L:
        raise ValueError(f"layer {layer} is outside the model's layers {-L}..{L - 1}")
    layer %= L
    if layer >= len(hidden_states):  # hidden_states[l] is the input of layer l: encode must have run l layers
        raise ValueError(f"layer {layer} needs hidden_states[{layer}], but only {len(hidden_states)} were given")
    h_BTD = hidden_states[layer]
    q_BTHK, k_BTHK, v_BTHK = attention_qkv(params["encoder"]["layer"][layer], h_BTD, cfg)
    return {name: x.reshape(h_BTD.shape[:2] + (-1,))  # Q, K, V include the bias and exclude the 1/sqrt(K) scale
            for name, x in (("query", q_BTHK), ("key", k_BTHK), ("value", v_BTHK))}


def relation_logits(x_BTD, y_BTD, num_heads: int, segments_BT) -> jax.Array:
    """[B,R,T,T] float32: split D into R=num_heads contiguous chunks of d=D/R (ValueError naming D and R if it does not
    divide), logits = x_r y_r^T / sqrt(d), keys outside the query's text (padding, other packed texts) set to a large
    finite negative (finfo(float32).min)."""
    B, T, D = x_BTD.shape
    R = num_heads
    if R < 1 or D % R:
        raise ValueError(f"hidden size D={D} is not divisible by R={R} relation heads")
    split = lambda z_BTD: z_BTD.astype(jnp.float32).reshape(B, T, R, D // R)  # head r = features r*d..r*d+d-1
    logits_BRTS = jnp.einsum("BTRd,BSRd->BRTS", split(x_BTD), split(y_BTD)) / math.sqrt(D // R)
    # where, not +bias: adding finfo.min to a negative logit would overflow to -inf.
    return jnp.where(same_text(segments_BT), logits_BRTS, jnp.finfo(jnp.float32).min)


def relation_kl(teacher_BRTT, student_BRTT, segments_BT, num_texts=None) -> jax.Array:
    """Scalar: KL(softmax(teacher) || softmax(student)) per query row, computed as
    sum_j p_T (log p_T - log_softmax(student)) with 0*log 0 = 0 (no NaN on masked keys, including a fully padded row);
    rows of padded QUERIES excluded; per text, the sum over heads and its rows divided by (R * n) with n the text's
    number of tokens; then the sum over texts divided by num_texts (the Bloomberg minilmv2.bb
    reduction). num_texts defaults to the rows B: a padded batch, one text per row, where an empty row still counts
    in the mean. The teacher side is wrapped in jax.lax.stop_gradient."""
    log_p_BRTS = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_BRTT).astype(jnp.float32), axis=-1)
    log_q_BRTS = jax.nn.log_softmax(student_BRTT.astype(jnp.float32), axis=-1)
    p_BRTS = jnp.exp(log_p_BRTS)
    # Masked keys have p = 0 exactly; `where` keeps 0 * (finfo.min - finfo.min or -inf) from turning into NaN.
    kl_BRT = jnp.where(p_BRTS > 0, p_BRTS * (log_p_BRTS - log_q_BRTS), 0.0).sum(-1)
    n_B1T = text_lengths(segments_BT)
    kl_B1T = jnp.where(n_B1T > 0, kl_BRT, 0.0).sum(1, keepdims=True) / jnp.maximum(n_B1T, 1)
    num_texts = teacher_BRTT.shape[0] if num_texts is None else num_texts
    return kl_B1T.sum() / (teacher_BRTT.shape[1] * num_texts)


def text_lengths(segments_BT) -> jax.Array:
    """[B,1,T]: each token's text length (0 for padding)."""
    return same_text(segments_BT).sum(-1)


def count_texts(segments_BT) -> jax.Array:
    """The number of texts in a batch of rows (padded or packed): each token adds 1 / its text's length."""
    n_B1T = text_lengths(segments_BT)
    return jnp.round(jnp.where(n_B1T > 0, 1.0 / jnp.maximum(n_B1T, 1), 0.0).sum())


def relation_heads(t_cfg, s_cfg, num_relation_heads: int | None) -> tuple[int, int]:
    """(teacher heads, student heads) to split into. num_relation_heads None = MiniLM v1: per attention head, which
    needs t_cfg.num_attention_heads == s_cfg.num_attention_heads, else ValueError with a clear message naming both head
    counts and suggesting --num-relation-heads R (MiniLMv2). Given R: both hidden sizes must divide by R, else
    ValueError naming both sizes and R. Returns (R, R) or (H, H)."""
    if num_relation_heads is None:
        H_t, H_s = t_cfg.num_attention_heads, s_cfg.num_attention_heads
        if H_t != H_s:
            raise ValueError(f"MiniLM v1 relations are per attention head and need equal head counts, but the teacher "
                             f"has {H_t} heads and the student {H_s}; pass --num-relation-heads R (MiniLMv2) with R "
                             f"dividing both hidden sizes ({t_cfg.hidden_size} and {s_cfg.hidden_size})")
        return H_t, H_s
    R, D_t, D_s = num_relation_heads, t_cfg.hidden_size, s_cfg.hidden_size
    if R < 1 or D_t % R or D_s % R:
        raise ValueError(f"{R} relation heads must divide both hidden sizes: teacher {D_t}, student {D_s}")
    return R, R


def distill_loss(t_qkv: dict, s_qkv: dict, segments_BT, relations: tuple[tuple[str, float], ...],
                 heads: tuple[int, int], num_texts=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum over (name, weight) in relations of
    weight * relation_kl(relation_logits(teacher X,Y), relation_logits(student X,Y)), names from RELATIONS (as
    parse_relations checks them); returns (total, {name: value}), the values unweighted.
    segments_BT: a padded batch's mask, or a packed batch's segments (then pass num_texts, e.g. count_texts)."""
    total, parts = jnp.zeros((), jnp.float32), {}
    for name, weight in relations:
        x, y = RELATIONS[name]
        t_BRTT = relation_logits(t_qkv[x], t_qkv[y], heads[0], segments_BT)
        s_BRTT = relation_logits(s_qkv[x], s_qkv[y], heads[1], segments_BT)
        parts[name] = relation_kl(t_BRTT, s_BRTT, segments_BT, num_texts)
        total = total + weight * parts[name]
    return total, parts


def parse_relations(spec: str) -> tuple[tuple[str, float], ...]:
    """'qk,vv' or 'qq:1,kk:1,vv:2' -> (("qq",1.0),...). Errors name the bad part."""
    out = []
    for part in spec.split(","):
        name, sep, weight = (s.strip() for s in part.partition(":"))
        if name not in RELATIONS:
            raise ValueError(f"relation {part.strip()!r} in {spec!r}: unknown name; valid relations are "
                             f"{', '.join(RELATIONS)}, optionally with a weight (qq:1,kk:1,vv:2)")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            w = float("nan")
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"relation {part.strip()!r} in {spec!r}: the weight must be a finite number >= 0")
        if name in (n for n, _ in out):
            raise ValueError(f"relation {name!r} appears twice in {spec!r}")
        out.append((name, w))
    return tuple(out)
