"""GradCache (Gao et al. 2021, docs/contrastive.md): the gradient of a contrastive loss over a big batch with the
activation memory of one chunk of rows, for train.py --mini-batch-size. tests/test_train_step.py checks it equal to
back-propagating through the whole batch at once, dropout included."""
import jax
import jax.numpy as jnp

from minilm.batch import Padded


def loss_and_grads(params, batch: Padded, key, *, embed, loss, mini: int):
    """loss(embed(params, batch)) and its gradient, chunk by chunk. embed(params, batch, key) -> [C, b, D];
    loss(emb_CbD) -> scalar (its collectives run here, so other devices' rows contribute).
    1. embed each chunk of `mini` rows without keeping activations; 2. the loss and its gradient with respect to
    the embeddings; 3. replay each chunk with the same dropout key and back-propagate its slice of that gradient
    into the params."""
    if not isinstance(batch, Padded):
        raise TypeError("GradCache chunks padded batches (one text per row); packed rows mix texts of many chunks")
    chunks = [slice(s, s + mini) for s in range(0, batch.ids_CBT.shape[1], mini)]

    def embed_chunk(params, j):  # chunk j with its own dropout key, so that the replay sees the first pass's dropout
        chunk_key = None if key is None else jax.random.fold_in(key, 1000 + j)
        return embed(params, Padded(*(x[:, chunks[j]] for x in batch)), chunk_key)

    emb_CbD = jnp.concatenate([jax.lax.stop_gradient(embed_chunk(params, j)) for j in range(len(chunks))], axis=1)
    value, g_CbD = jax.value_and_grad(loss)(emb_CbD)
    grads = jax.tree.map(jnp.zeros_like, params)
    for j, rows in enumerate(chunks):
        _, vjp = jax.vjp(lambda p, j=j: embed_chunk(p, j), params)
        grads = jax.tree.map(jnp.add, grads, vjp(g_CbD[:, rows])[0])
    return value, grads
