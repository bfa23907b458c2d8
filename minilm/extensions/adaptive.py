"""Adaptive layers (sentence-transformers' AdaptiveLayerLoss, docs/contrastive.md), for train.py --adaptive-layers:
the loss on the last layer's embeddings, plus the same loss on one earlier layer drawn at random each step, plus a
KL term pulling that layer's similarity distribution toward the last layer's, so that a model cut to its first
layers still embeds well. tests/test_train_step.py checks it on 8 devices against one, packed against padded."""
import jax

from minilm.losses import layer_kl


def adaptive_layers_loss(emb_CbD, layers_LCbD, key, loss, *, prior_layers_weight: float = 1.0,
                         kl_weight: float = 1.0, kl_temperature: float = 0.3, axis_name=None):
    """emb_CbD: the last layer's embeddings; layers_LCbD: every layer's (index 0 the embedding layer); loss(emb) ->
    the ranking loss. The layer is drawn uniformly from 0..L-1 with the step key (before any per-device fold, so the
    same on every device)."""
    layer = jax.random.randint(jax.random.fold_in(key, 1) if key is not None else jax.random.key(0),
                               (), 0, layers_LCbD.shape[0] - 1)
    emb_i_CbD = layers_LCbD[layer]
    D = emb_CbD.shape[-1]
    return (loss(emb_CbD) + prior_layers_weight * loss(emb_i_CbD)
            + kl_weight * layer_kl(emb_CbD.reshape(-1, D), emb_i_CbD.reshape(-1, D), kl_temperature, axis_name))
