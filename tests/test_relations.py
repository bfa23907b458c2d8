"""MiniLM relation losses against a slow per-example numpy loop written from the papers (docs/distillation.md).

Tolerances: 1e-5 relative against the float64 oracle; |KL| < 1e-6 when student == teacher; the "qk" relation equals
the model's own attention probabilities within 1e-6 absolute; jit equals eager within 1e-6 relative; the gradient
into the teacher is exactly 0.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm import relations as rel
from minilm.checkpoint import param_shapes, unflatten
from minilm.config import Config
from minilm.model import attention_bias, encode

pytestmark = pytest.mark.book  # the learner's tier: the relation KL against a per-example oracle

PAIRS = {"qk": ("query", "key"), "vv": ("value", "value"), "qq": ("query", "query"), "kk": ("key", "key")}


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_relation_loss(t, s, lengths, relations, heads):
    """One example, one relation head, one query row at a time, on the example's n_b real tokens only (right
    padding): KL(softmax(x_r y_r^T / sqrt(d_r)) teacher || same for the student) summed / (R n_b), mean over b.
    An example without tokens contributes 0 (and still counts in the mean)."""
    parts = {}
    for name, _ in relations:
        x, y = PAIRS[name]
        per_example = []
        for b, n in enumerate(lengths):
            total = 0.0
            for r in range(heads[0] if n else 0):
                rows = []
                for side, R in ((t, heads[0]), (s, heads[1])):
                    d = side[x].shape[-1] // R
                    xr, yr = side[x][b, :n, r * d:(r + 1) * d], side[y][b, :n, r * d:(r + 1) * d]
                    rows.append(np_softmax(xr @ yr.T / np.sqrt(d)))
                p, q = rows
                for i in range(n):
                    total += float(np.sum(p[i] * (np.log(p[i]) - np.log(q[i]))))
            per_example.append(total / (heads[0] * max(n, 1)))
        parts[name] = float(np.mean(per_example))
    return sum(w * parts[name] for name, w in relations), parts


def random_qkv(rng, B, T, D, scale=1.0):
    return {k: scale * rng.standard_normal((B, T, D)) for k in ("query", "key", "value")}


def mask_of(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def jnp32(qkv):
    return {k: jnp.asarray(v, jnp.float32) for k, v in qkv.items()}


LENGTHS = [7, 1, 4, 7, 2]
T_CFG = Config(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize("spec, s_width, s_heads, r", [
    ("qq,kk,vv", 24, 2, 4), ("qq,kk,vv", 24, 2, 6), ("qq:1,kk:0.5,vv:2", 12, 3, 12),  # v2: other width and heads
    ("qk,vv", 24, 4, None), ("qk:2,vv:1", 48, 4, None)])  # v1: equal head counts, widths may differ
def test_against_per_example_oracle(spec, s_width, s_heads, r):
    rng = np.random.default_rng(0)
    s_cfg = dataclasses.replace(T_CFG, hidden_size=s_width, num_attention_heads=s_heads)
    relations = rel.parse_relations(spec)
    heads = rel.relation_heads(T_CFG, s_cfg, r)
    assert heads == ((r, r) if r else (4, 4))
    t, s = random_qkv(rng, 5, 7, 48), random_qkv(rng, 5, 7, s_width)  # padded positions hold junk, not zeros
    total, parts = rel.distill_loss(jnp32(t), jnp32(s), jnp.asarray(mask_of(LENGTHS, 7)), relations, heads)
    want_total, want_parts = np_relation_loss(t, s, LENGTHS, relations, heads)
    assert parts.keys() == want_parts.keys()
    for name in parts:
        assert float(parts[name]) == pytest.approx(want_parts[name], rel=1e-5), name
    assert float(total) == pytest.approx(want_total, rel=1e-5)


def test_normalisation_is_per_example_length_and_sqrt_of_relation_head_size():
    """The oracle tells apart the reductions a bug would swap in: PaddleNLP's R*T_pad*B, or sqrt(D) for sqrt(D/R)."""
    rng = np.random.default_rng(1)
    t, s = random_qkv(rng, 5, 7, 48), random_qkv(rng, 5, 7, 24)
    got = float(rel.distill_loss(jnp32(t), jnp32(s), jnp.asarray(mask_of(LENGTHS, 7)), (("qq", 1.0),), (4, 4))[0])
    per_length, _ = np_relation_loss(t, s, LENGTHS, (("qq", 1.0),), (4, 4))
    full_length, _ = np_relation_loss(t, s, [7] * 5, (("qq", 1.0),), (4, 4))
    assert got == pytest.approx(per_length, rel=1e-5)
    assert abs(got - full_length) > 1e-2 * per_length  # padding is not ignored ...
    scaled = {k: v / np.sqrt(np.sqrt(4)) for k, v in t.items()}  # teacher logits / sqrt(R): as if divided by sqrt(D)
    assert abs(np_relation_loss(scaled, s, LENGTHS, (("qq", 1.0),), (4, 4))[0] - per_length) > 1e-2 * per_length


def test_identical_teacher_and_student_give_zero():
    qkv = jnp32(random_qkv(np.random.default_rng(2), 5, 7, 48))
    mask = jnp.asarray(mask_of(LENGTHS, 7))
    for relations, heads in (((("qq", 1.0), ("kk", 1.0), ("vv", 1.0)), (6, 6)), ((("qk", 1.0), ("vv", 1.0)), (4, 4))):
        total, _ = rel.distill_loss(qkv, qkv, mask, relations, heads)
        assert abs(float(total)) < 1e-6


def test_gradient_reaches_the_student_only():
    rng = np.random.default_rng(3)
    t, s = jnp32(random_qkv(rng, 5, 7, 48)), jnp32(random_qkv(rng, 5, 7, 24))
    mask = jnp.asarray(mask_of(LENGTHS, 7))
    relations = rel.parse_relations("qq,kk,vv,qk")
    loss = lambda t, s: rel.distill_loss(t, s, mask, relations, (4, 4))[0]
    g_t, g_s = jax.grad(loss, argnums=(0, 1))(t, s)
    for k in ("query", "key", "value"):
        assert float(jnp.abs(g_t[k]).max()) == 0.0
        assert float(jnp.abs(g_s[k]).max()) > 1e-4
        assert float(jnp.abs(g_s[k] * (1 - mask[..., None])).max()) == 0.0  # padded tokens play no part


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_no_nan_with_empty_examples_or_extreme_logits(scale):
    """A fully padded example contributes 0 and still counts in the mean; logits ~1e6 make exact zeros in p_T."""
    rng = np.random.default_rng(4)
    lengths = [0, 3, 7, 0, 1]
    t, s = random_qkv(rng, 5, 7, 48, scale), random_qkv(rng, 5, 7, 24, scale)
    mask = jnp.asarray(mask_of(lengths, 7))
    relations = rel.parse_relations("qq,kk,vv")
    loss = lambda t, s: rel.distill_loss(t, s, mask, relations, (4, 4))[0]
    value, g = jax.value_and_grad(loss, argnums=1)(jnp32(t), jnp32(s))
    assert np.isfinite(float(value)) and all(bool(jnp.isfinite(x).all()) for x in g.values())
    if scale == 1.0:
        assert float(value) == pytest.approx(np_relation_loss(t, s, lengths, relations, (4, 4))[0], rel=1e-5)
    empty = jnp.zeros((2, 5), jnp.int32)  # nothing but padding: loss 0, no NaN
    z = jnp32(random_qkv(rng, 2, 5, 48, scale))
    assert float(rel.distill_loss(z, z, empty, relations, (4, 4))[0]) == 0.0


def test_masked_keys_are_finite_and_zero_probability_terms_vanish():
    """Padded keys get finfo(float32).min, not -inf; and p log p with p = 0 counts 0 even if a caller's logits hold
    -inf (there log p_T - log p_S alone would be -inf + inf = NaN)."""
    rng = np.random.default_rng(7)
    lengths = [3, 5, 0]
    mask = jnp.asarray(mask_of(lengths, 5))
    x, y = (jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32) for _ in range(2))
    t, s = rel.relation_logits(x, x, 2, mask), rel.relation_logits(y, y, 2, mask)
    keys = np.broadcast_to(np.asarray(mask)[:, None, None, :] > 0, t.shape)
    assert np.all(np.asarray(t)[~keys] == np.finfo(np.float32).min) and bool(jnp.isfinite(t).all())
    inf_t, inf_s = (jnp.where(keys, z, -jnp.inf) for z in (t, s))
    got = rel.relation_kl(inf_t, inf_s, mask)
    assert np.isfinite(float(got)) and float(got) == pytest.approx(float(rel.relation_kl(t, s, mask)), rel=1e-6)


def test_layer_qkv_and_qk_relation_are_the_models_attention():
    cfg = Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=16)
    # HF init (init_params) leaves biases 0 and LayerNorm 1; draw every tensor around its init value instead, so
    # no bug hides behind a constant (numpy, because init_params' eager jax.random calls cost seconds on CPU).
    rng = np.random.default_rng(5)
    flat = {k: (k.endswith("LayerNorm.weight") + 0.05 * rng.standard_normal(shape)).astype(np.float32)
            for k, shape in param_shapes(cfg).items()}
    params = unflatten(flat)
    lengths = [6, 3, 1]
    mask = mask_of(lengths, 6)
    ids = jnp.asarray(rng.integers(1, 50, (3, 6)) * mask)
    hidden = jax.jit(encode, static_argnames="cfg")(params, ids, jnp.asarray(mask), cfg).hidden_states
    qkv = rel.layer_qkv(params, hidden, -1, cfg)
    assert qkv.keys() == {"query", "key", "value"} and qkv["query"].shape == (3, 6, 32)
    h = np.asarray(hidden[-2], np.float64)  # the last layer's input
    w = lambda k, leaf: flat[f"encoder.layer.1.attention.self.{k}.{leaf}"]
    by_hand = {k: h @ w(k, "weight").T + w(k, "bias") for k in ("query", "key", "value")}
    for k in by_hand:
        np.testing.assert_allclose(np.asarray(qkv[k]), by_hand[k], rtol=1e-5, atol=1e-5)
    # v1's attention transfer is the layer's own attention: softmax(Q_h K_h^T / sqrt(K) + mask) per head h.
    probs = np.asarray(jax.nn.softmax(rel.relation_logits(qkv["query"], qkv["key"], cfg.num_attention_heads,
                                                          jnp.asarray(mask)), axis=-1))
    K = cfg.head_size
    q, k = (by_hand[n].reshape(3, 6, 4, K) for n in ("query", "key"))
    scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(K) + np.asarray(attention_bias(jnp.asarray(mask)))
    want = np_softmax(scores)
    for b, n in enumerate(lengths):  # real query rows
        np.testing.assert_allclose(probs[b, :, :n], want[b, :, :n], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(rel.layer_qkv(params, hidden, 1, cfg)["value"]),
                                  np.asarray(qkv["value"]))
    with pytest.raises(ValueError, match="outside"):
        rel.layer_qkv(params, hidden, 2, cfg)
    with pytest.raises(ValueError, match=r"hidden_states\[1\]"):
        rel.layer_qkv(params, hidden[:1], 1, cfg)


def test_relation_heads_and_parse_errors():
    s_cfg = dataclasses.replace(T_CFG, hidden_size=20, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"4 heads.*student 2.*--num-relation-heads"):
        rel.relation_heads(T_CFG, s_cfg, None)
    with pytest.raises(ValueError, match=r"teacher 48, student 20"):
        rel.relation_heads(T_CFG, s_cfg, 8)
    assert rel.relation_heads(T_CFG, s_cfg, 4) == (4, 4)
    with pytest.raises(ValueError, match=r"D=20 .*R=8"):
        rel.relation_logits(jnp.zeros((1, 2, 20)), jnp.zeros((1, 2, 20)), 8, jnp.ones((1, 2)))
    assert rel.parse_relations(" qq:1, kk:1 ,vv:2") == (("qq", 1.0), ("kk", 1.0), ("vv", 2.0))
    assert rel.parse_relations("qk,vv") == (("qk", 1.0), ("vv", 1.0))
    for spec, bad in (("qk,xx", "'xx'"), ("qq:abc", "'qq:abc'"), ("qq:-1", "'qq:-1'"), ("qq,,vv", "''"),
                      ("qq,qq:2", "'qq' appears twice")):
        with pytest.raises(ValueError, match=bad):
            rel.parse_relations(spec)
    with pytest.raises(ValueError, match="valid relations are qk, vv, qq, kk"):  # the one check of a name
        rel.parse_relations("at")


def test_jit_equals_eager():
    rng = np.random.default_rng(6)
    t, s = jnp32(random_qkv(rng, 5, 7, 48)), jnp32(random_qkv(rng, 5, 7, 24))
    mask = jnp.asarray(mask_of(LENGTHS, 7))
    relations = rel.parse_relations("qq,kk:0.5,vv:2")
    eager = rel.distill_loss(t, s, mask, relations, (6, 6))
    jitted = jax.jit(rel.distill_loss, static_argnames=("relations", "heads"))(t, s, mask, relations=relations,
                                                                              heads=(6, 6))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)


def test_packed_rows_equal_the_oracle():
    """The LENGTHS examples packed several to a row (rows of 8: [0, 1], [3], [2, 4]), keys outside each text masked
    and each text normalised by its own length: the same loss as the per-example oracle; count_texts counts 5."""
    rng = np.random.default_rng(8)
    t, s = random_qkv(rng, 5, 7, 48), random_qkv(rng, 5, 7, 24)
    layout = [[0, 1], [3], [2, 4]]
    segments = np.zeros((3, 8), np.int32)
    packed_t, packed_s = ({k: rng.standard_normal((3, 8, v.shape[-1])) for k, v in side.items()} for side in (t, s))
    for row, texts in enumerate(layout):
        start = 0
        for slot, b in enumerate(texts):
            n = LENGTHS[b]
            segments[row, start:start + n] = slot + 1
            for side, packed in ((t, packed_t), (s, packed_s)):
                for k in side:
                    packed[k][row, start:start + n] = side[k][b, :n]
            start += n
    segments = jnp.asarray(segments)
    relations = rel.parse_relations("qq,kk:0.5,vv")
    assert float(rel.count_texts(segments)) == 5.0
    got, _ = rel.distill_loss(jnp32(packed_t), jnp32(packed_s), segments, relations, (4, 4), rel.count_texts(segments))
    assert float(got) == pytest.approx(np_relation_loss(t, s, LENGTHS, relations, (4, 4))[0], rel=1e-5)
