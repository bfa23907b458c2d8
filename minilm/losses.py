"""Losses of sentence embeddings: pure functions of embeddings, in float32. The contrastive losses of train.py, and
the embedding-distillation losses of distill.py.

The multiple-negatives ranking loss (sentence-transformers' MultipleNegativesRankingLoss, the loss that trained
all-MiniLM-L6-v2; docs/contrastive.md): each anchor must pick its own positive among all candidates of the batch,

    S_ij = scale * cos(a_i, c_j),   candidates c = [p_1 .. p_N, n_1 .. n_N],   loss = mean_i [ lse_j S_ij - S_i,i ].

Symmetric (MultipleNegativesSymmetricRankingLoss, "as in CLIP", what all-MiniLM-L6-v2 used for pairs) averages it
with the positives picking their anchors: 1/2 [ loss(a -> [p; n]) + loss(p -> a) ].

`ranking_loss` scores some rows against candidates with explicit targets, so the data-parallel step (train.py)
can score only its own rows against candidates gathered from every device: targets = device offset + row.

Embedding distillation (distill.py; docs/distillation.md): the student's sentence embedding s learns the teacher's t
on unlabeled text, per text either

    mse:    mean_d (s_d - t_d)^2      (sentence-transformers' MSELoss: torch's MSELoss, the mean over all N x D)
    cosine: 1 - cos(s, t).

Score distillation (distill.py --ranking-weight): over (query, passage) pairs, each query's softmax over every
passage of the global batch, P_ij = softmax_j(scale * cos(q_i, p_j)), learns the teacher's by KL(P_teacher ||
P_student), the in-batch KL of TCT-ColBERT (Lin et al. 2021): where the embedding loss teaches each text's position,
this teaches the order in which the teacher ranks passages for a query.
"""
import jax
import jax.numpy as jnp

from minilm.model import l2_normalize


def cos_sim(a_ND: jax.Array, b_MD: jax.Array) -> jax.Array:
    """[N, M] cosine similarities; each vector is normalised with max(|x|, 1e-12), as sentence-transformers does."""
    return l2_normalize(a_ND.astype(jnp.float32)) @ l2_normalize(b_MD.astype(jnp.float32)).T


def ranking_loss(q_ND: jax.Array, cand_MD: jax.Array, targets_N: jax.Array, scale: float = 20.0) -> jax.Array:
    """Mean cross-entropy of softmax(scale * cos(q_i, cand)) against the candidate index targets_N[i]."""
    logits_NM = scale * cos_sim(q_ND, cand_MD)
    true_N = jnp.take_along_axis(logits_NM, targets_N[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits_NM, axis=1) - true_N)


def contrastive_loss(a_bD: jax.Array, p_bD: jax.Array, n_bD: jax.Array | None = None, *, scale: float = 20.0,
                     symmetric: bool = False, axis_name: str | None = None) -> jax.Array:
    """Multiple-negatives ranking loss over the global batch.

    Without axis_name the inputs are the whole batch (b = N). Inside a shard_map over `axis_name` they are this
    device's b rows: candidates are gathered from every device (all positives, then all negatives, the block
    order of the original script and of sentence-transformers' gathered MNRL), this device scores only its own
    rows, the target of local row i is device_index * b + i, and the per-device means are averaged, which with
    equal b per device is exactly the loss of the global batch."""
    b = a_bD.shape[0]
    if axis_name is None:
        gather, offset = (lambda x: x), 0
    else:
        gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # [b, D] -> [W*b, D]
        offset = jax.lax.axis_index(axis_name) * b
    targets_b = offset + jnp.arange(b)
    cand_MD = gather(p_bD) if n_bD is None else jnp.concatenate([gather(p_bD), gather(n_bD)])
    loss = ranking_loss(a_bD, cand_MD, targets_b, scale)
    if symmetric:  # positives pick their anchor among all anchors (negatives play no part in this direction)
        loss = 0.5 * (loss + ranking_loss(p_bD, gather(a_bD), targets_b, scale))
    return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def matryoshka_loss(columns: list[jax.Array], dims: tuple[int, ...], weights: tuple[float, ...] | None = None,
                    **loss_options) -> jax.Array:
    """Sum over d of w_d * contrastive_loss on the first d dimensions (MatryoshkaLoss, arXiv 2205.13147).
    Truncating then taking the cosine is truncating then L2-normalising, as sentence-transformers does."""
    weights = weights or (1.0,) * len(dims)
    return sum(w * contrastive_loss(*(c[:, :d] for c in columns), **loss_options) for d, w in zip(dims, weights))


def layer_kl(final_ND: jax.Array, layer_ND: jax.Array, temperature: float = 0.3,
             axis_name: str | None = None) -> jax.Array:
    """AdaptiveLayerLoss' KL term: T * KL(softmax(final/T) || softmax(layer/T)) over the embedding dimension,
    mean over rows (batchmean), the final layer's side held fixed (stop_gradient, as sentence-transformers v6).
    Inputs are the normalised sentence embeddings of all columns."""
    log_p = jax.nn.log_softmax(jax.lax.stop_gradient(final_ND).astype(jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(layer_ND.astype(jnp.float32) / temperature, axis=-1)
    kl = temperature * jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))
    return kl if axis_name is None else jax.lax.pmean(kl, axis_name)


def score_distill_loss(s_q_bD: jax.Array, s_p_bD: jax.Array, t_q_bD: jax.Array, t_p_bD: jax.Array, *,
                       scale: float = 20.0, axis_name: str | None = None) -> jax.Array:
    """[b]: for each of this device's queries, KL(P_t || P_s) between the teacher's and the student's softmax of
    scale * cos(q_i, p_j) over the passages p of the global batch (gathered from every device inside a shard_map,
    as contrastive_loss gathers its candidates). The teacher side is held fixed."""
    gather = (lambda x: x) if axis_name is None else (lambda x: jax.lax.all_gather(x, axis_name, tiled=True))
    t_q_bD, t_p_bD = jax.lax.stop_gradient(t_q_bD), jax.lax.stop_gradient(t_p_bD)
    log_t_bM = jax.nn.log_softmax(scale * cos_sim(t_q_bD, gather(t_p_bD)), axis=1)
    log_s_bM = jax.nn.log_softmax(scale * cos_sim(s_q_bD, gather(s_p_bD)), axis=1)
    return jnp.sum(jnp.exp(log_t_bM) * (log_t_bM - log_s_bM), axis=1)


EMBEDDING_LOSSES = ("mse", "cosine")


def embedding_distill_loss(student_ND: jax.Array, teacher_ND: jax.Array, kind: str = "mse") -> jax.Array:
    """[N]: each text's embedding-distillation loss (their mean is the batch loss). The teacher side is held fixed
    (stop_gradient): no gradient ever reaches the teacher."""
    s_ND = student_ND.astype(jnp.float32)
    t_ND = jax.lax.stop_gradient(teacher_ND).astype(jnp.float32)
    if kind == "mse":
        return jnp.mean(jnp.square(s_ND - t_ND), axis=-1)
    if kind == "cosine":
        return 1.0 - jnp.sum(l2_normalize(s_ND) * l2_normalize(t_ND), axis=-1)
    raise ValueError(f"embedding loss {kind!r} is not one of {', '.join(EMBEDDING_LOSSES)}")
