"""The training step's math: 8 virtual CPU devices against one device on the same global batch, and GradCache
against the plain step. Losses and gradients within atol 1e-5 (measured here: loss <= 1e-6, gradients <= 3.3e-6,
with gradient entries up to ~1); float32,
matmul precision 'highest'; dropout off, except in the replay test, which fixes the dropout keys."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from minilm import batch, parallel
from minilm.batch import pack_columns, Padded
from minilm.checkpoint import flatten
from tests.tiny import tiny_model

B = 16  # global rows: 2 per device on 8 devices


def make_examples(columns: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "dog", "sat", "on", "mat", "man", "woman", "is", "eating", "food", "music", "plays"]
    return [tuple(" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(columns)) for _ in range(B)]


def make_batch(model, columns: int, seed: int = 0):
    return batch.pad_columns(model.tokenizer, make_examples(columns, seed), 24)


OPTIONS = {
    "pairs": (2, train.Args()),
    "pairs-symmetric": (2, train.Args(symmetric=True, scale=10.0)),
    "triplets": (3, train.Args()),
    "triplets-symmetric": (3, train.Args(symmetric=True)),
    "matryoshka": (2, train.Args(matryoshka_dims=(32, 16, 8), matryoshka_weights=(1.0, 0.5, 0.25))),
    "adaptive-layers": (2, train.Args(adaptive_layers=True, symmetric=True)),
}


@functools.lru_cache
def single_device_fn(cfg, opts):
    return jax.jit(jax.value_and_grad(functools.partial(train.device_loss, cfg=cfg, args=opts, axis_name=None)))


def single_device(model, batch, opts, key=None):
    return single_device_fn(model.config, opts)(model.params, jax.tree.map(jnp.asarray, batch), key)


def sharded(model, batch, opts, n, mini=0, key=None):
    """train.py's own shard_map step (make_loss_and_grads) on n devices."""
    mesh = parallel.make_mesh(n)
    fn = train.make_loss_and_grads(mesh, model.config, dataclasses.replace(opts, mini_batch_size=mini))
    return jax.jit(fn)(parallel.replicate(model.params, mesh), parallel.shard_batch(batch, mesh), key)


def assert_same(a, b, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(float(loss_a) - float(loss_b)) <= atol, (float(loss_a), float(loss_b))
    ga, gb = flatten(grads_a), flatten(grads_b)
    assert ga.keys() == gb.keys()
    worst = max(float(jnp.abs(ga[k] - gb[k]).max()) for k in ga)
    print(f"max |loss diff| {abs(float(loss_a) - float(loss_b)):.1e}, max |grad diff| {worst:.1e}")
    assert worst <= atol, worst
    assert max(float(jnp.abs(g).max()) for g in ga.values()) > 1e-3  # the gradients are not all ~0


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.book) if n in ("pairs", "triplets-symmetric")
                                  else n for n in OPTIONS])
def test_eight_devices_equal_one_device(tmp_path, name):
    columns, opts = OPTIONS[name]
    model = tiny_model(tmp_path)
    batch = make_batch(model, columns)
    assert_same(sharded(model, batch, opts, 8), single_device(model, batch, opts))


@pytest.mark.book
def test_negatives_span_every_device(tmp_path):
    """Without the all_gather each device would see only its own 2 rows: the loss would differ."""
    model = tiny_model(tmp_path)
    batch = make_batch(model, 2)
    opts = train.Args()
    local_only = np.mean([float(single_device(model, train.Padded(*(x[:, i:i + 2] for x in batch)), opts)[0])
                          for i in range(0, B, 2)])
    assert abs(float(sharded(model, batch, opts, 8)[0]) - local_only) > 0.1


@pytest.mark.parametrize("name, n, mini", [("pairs-symmetric", 8, 1), ("triplets", 2, 4), ("matryoshka", 1, 8),
                                           ("pairs", 8, 2)])
def test_gradcache_equals_plain_step(tmp_path, name, n, mini):
    """Each loss and each (devices, chunk rows) once: one row a chunk on 8 devices, 4 on 2, all 8 on 1."""
    columns, opts = OPTIONS[name]
    model = tiny_model(tmp_path)
    batch = make_batch(model, columns)
    assert_same(sharded(model, batch, opts, n, mini=mini), single_device(model, batch, opts))


def test_gradcache_replays_the_same_dropout(tmp_path):
    """With dropout on, the cached gradient equals the ordinary gradient of the loss on chunk-wise embeddings
    computed with the same per-chunk keys: the replay saw exactly the dropout of the first pass."""
    model = tiny_model(tmp_path)
    batch = jax.tree.map(jnp.asarray, make_batch(model, 2))
    opts, mini = train.Args(symmetric=True), 4
    cached = jax.jit(functools.partial(train.cached_device_loss_and_grads, cfg=model.config, args=opts, mini=mini,
                                       axis_name=None))
    with_dropout = cached(model.params, batch, jax.random.key(7))

    def reference(params):  # chunk j (rows 4j..4j+3) embedded with dropout key fold_in(key, 1000 + j), end to end
        chunk = lambda s: Padded(*(x[:, s:s + mini] for x in batch))
        emb = jnp.concatenate([train.embed_columns(params, chunk(s), model.config,
                                                   jax.random.fold_in(jax.random.key(7), 1000 + s // mini))
                               for s in range(0, batch.ids_CBT.shape[1], mini)], axis=1)
        return train.column_loss(emb, opts, None)

    assert_same(with_dropout, jax.jit(jax.value_and_grad(reference))(model.params))
    without = cached(model.params, batch, None)
    assert abs(float(with_dropout[0]) - float(without[0])) > 1e-4  # dropout did change the loss


@pytest.mark.parametrize("name, n", [("pairs-symmetric", 8), pytest.param("triplets", 1, marks=pytest.mark.book),
                                     ("adaptive-layers", 8)])
def test_packed_equals_padded(tmp_path, name, n):
    """Sequence packing (train.py's default): texts share rows with a block-diagonal mask and restarting
    positions; loss and gradients equal the padded batch's on one device, whether packed for 1 or 8 devices."""
    columns, opts = OPTIONS[name]
    model = tiny_model(tmp_path)
    examples = make_examples(columns, seed=3)
    packed = pack_columns(model.tokenizer, examples, 24, parts=n)
    padded = batch.pad_columns(model.tokenizer, examples, 24)
    assert packed.segments_RL.max() >= 4  # rows do hold several texts
    assert_same(sharded(model, packed, opts, n), single_device(model, padded, opts))


def test_pack_columns_places_every_text_once(tmp_path):
    model = tiny_model(tmp_path)
    examples = [(" ".join(["word"] * k), " ".join(["cat"] * (3 * k % 40))) for k in range(1, B + 1)]
    parts = 4
    packed = pack_columns(model.tokenizer, examples, 48, parts=parts)
    R, L = packed.ids_RL.shape[0] // parts, packed.ids_RL.shape[1]
    assert R % 4 == 0 and L == 64
    b, N = B // parts, L // 4
    seen = set()
    for c in range(2):
        for r, ex in enumerate(examples):
            d = r // b
            row, slot = divmod(int(packed.where_CB[c, r]), N)
            seg = packed.segments_RL[d * R + row]
            tokens = packed.ids_RL[d * R + row][seg == slot + 1]
            assert tokens.tolist() == list(model.tokenizer.encode_batch([ex[c]], max_length=48)[0].ids)
            assert packed.positions_RL[d * R + row][seg == slot + 1].tolist() == list(range(len(tokens)))
            seen.add((d * R + row, slot))
    assert len(seen) == 2 * B  # no two texts share a slot
    assert int((packed.segments_RL > 0).sum()) == sum(
        len(e.ids) for c in range(2) for e in model.tokenizer.encode_batch([ex[c] for ex in examples], max_length=48))
