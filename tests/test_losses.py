"""Losses against slow per-example numpy loops written from the definitions (docs/contrastive.md).

Tolerance: 1e-5 relative (float32 JAX against float64 numpy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minilm import losses
from tests.conftest import need

pytestmark = pytest.mark.book  # the learner's tier: the losses against per-example loops and torch


def unit(x):
    return x / max(np.linalg.norm(x), 1e-12)


def np_mnrl(anchors, candidates, scale):
    """For each anchor i: -log softmax_j(scale * cos(a_i, c_j)) at j = i, averaged; one row at a time."""
    total = 0.0
    for i, a in enumerate(anchors):
        logits = [scale * float(unit(a) @ unit(c)) for c in candidates]
        m = max(logits)
        lse = m + np.log(sum(np.exp(x - m) for x in logits))
        total += lse - logits[i]
    return total / len(anchors)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((6, 16)).astype(np.float64) for _ in range(3)]


@pytest.mark.parametrize("scale", [20.0, 1.0, 50.0])
def test_ranking_loss_on_pairs_equals_numpy_loop(batch, scale):
    a, p, _ = batch
    got = losses.contrastive_loss(jnp.array(a, jnp.float32), jnp.array(p, jnp.float32), scale=scale)
    assert float(got) == pytest.approx(np_mnrl(a, p, scale), rel=1e-5)


def test_triplets_candidates_are_positives_then_negatives(batch):
    a, p, n = batch
    got = losses.contrastive_loss(*(jnp.array(x, jnp.float32) for x in (a, p, n)))
    assert float(got) == pytest.approx(np_mnrl(a, np.concatenate([p, n]), 20.0), rel=1e-5)
    reversed_blocks = np_mnrl(a, np.concatenate([n, p]), 20.0)  # the target index depends on the block order
    assert abs(float(got) - reversed_blocks) > 1e-3


def test_symmetric_loss_has_no_negatives_in_the_reverse_direction(batch):
    a, p, n = batch
    got = losses.contrastive_loss(jnp.array(a, jnp.float32), jnp.array(p, jnp.float32), symmetric=True)
    assert float(got) == pytest.approx(0.5 * (np_mnrl(a, p, 20.0) + np_mnrl(p, a, 20.0)), rel=1e-5)
    got = losses.contrastive_loss(*(jnp.array(x, jnp.float32) for x in (a, p, n)), symmetric=True)
    expected = 0.5 * (np_mnrl(a, np.concatenate([p, n]), 20.0) + np_mnrl(p, a, 20.0))  # MNSRL: no negatives back
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_matryoshka_truncates_then_normalises(batch):
    a, p, _ = batch
    got = losses.matryoshka_loss([jnp.array(a, jnp.float32), jnp.array(p, jnp.float32)], (16, 8, 4), (1.0, 0.5, 2.0))
    expected = sum(w * np_mnrl(a[:, :d], p[:, :d], 20.0) for d, w in ((16, 1.0), (8, 0.5), (4, 2.0)))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_layer_kl_equals_numpy_loop_and_holds_the_final_layer_fixed(batch):
    final, layer, _ = batch
    t = 0.3
    expected = 0.0
    for f, h in zip(final, layer):  # T * KL(softmax(f/T) || softmax(l/T)), mean over rows
        p = np.exp(f / t - np.max(f / t))
        p /= p.sum()
        q = np.exp(h / t - np.max(h / t))
        q /= q.sum()
        expected += t * float(np.sum(p * np.log(p / q)))
    expected /= len(final)
    got = losses.layer_kl(jnp.array(final, jnp.float32), jnp.array(layer, jnp.float32), t)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # The final layer's side is fixed: no gradient flows into it.
    g = jax.grad(lambda f: losses.layer_kl(f, jnp.array(layer, jnp.float32), t))(jnp.array(final, jnp.float32))
    assert float(jnp.abs(g).max()) == 0.0


def test_perfect_embeddings_give_near_zero_loss():
    e = jnp.eye(8, dtype=jnp.float32)
    assert float(losses.contrastive_loss(e, e, symmetric=True)) < 1e-6


def test_embedding_distillation_losses_equal_numpy_loop_and_torch_mse():
    rng = np.random.default_rng(3)
    s, t = rng.standard_normal((2, 7, 24)).astype(np.float32)
    mse = [np.mean([(float(s[i, d]) - float(t[i, d])) ** 2 for d in range(24)]) for i in range(7)]
    cosine = [1.0 - float(unit(s[i].astype(np.float64)) @ unit(t[i].astype(np.float64))) for i in range(7)]
    np.testing.assert_allclose(losses.embedding_distill_loss(s, t, "mse"), mse, rtol=1e-5)
    np.testing.assert_allclose(losses.embedding_distill_loss(s, t, "cosine"), cosine, rtol=1e-5, atol=1e-6)
    torch = need("torch")  # sentence-transformers' MSELoss is torch's MSELoss over the [N, D] batch
    theirs = torch.nn.MSELoss()(torch.from_numpy(s), torch.from_numpy(t)).item()
    assert float(losses.embedding_distill_loss(s, t, "mse").mean()) == pytest.approx(theirs, rel=1e-6)
    with pytest.raises(ValueError, match="mse, cosine"):
        losses.embedding_distill_loss(s, t, "l1")


@pytest.mark.parametrize("scale", [20.0, 1.0])
def test_score_distillation_equals_numpy_loop_and_torch_kl(scale):
    """Per query: KL(P_t || P_s) of the softmax over all passages of scale * cos, written out one query at a time;
    and torch's KLDivLoss (log-probabilities of the student, probabilities of the teacher) on the same rows. Zero
    when the student's scores are the teacher's; the teacher side gets no gradient."""
    rng = np.random.default_rng(4)
    s_q, s_p, t_q, t_p = rng.standard_normal((4, 6, 16))

    def softmax_row(q, passages):
        logits = np.array([scale * float(unit(q) @ unit(p)) for p in passages])
        e = np.exp(logits - logits.max())
        return e / e.sum()

    expected = []
    for i in range(6):
        p_t, p_s = softmax_row(t_q[i], t_p), softmax_row(s_q[i], s_p)
        expected.append(sum(a * (np.log(a) - np.log(b)) for a, b in zip(p_t, p_s)))
    f32 = lambda x: jnp.array(x, jnp.float32)
    got = losses.score_distill_loss(f32(s_q), f32(s_p), f32(t_q), f32(t_p), scale=scale)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(losses.score_distill_loss(f32(t_q), f32(t_p), f32(t_q), f32(t_p), scale=scale)).max()) < 1e-5
    grads = jax.grad(lambda t: losses.score_distill_loss(f32(s_q), f32(s_p), t, f32(t_p), scale=scale).sum())(f32(t_q))
    assert float(jnp.abs(grads).max()) == 0.0
    torch = need("torch")
    cos = lambda a, b: torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    log_s = torch.log_softmax(scale * cos(torch.from_numpy(s_q), torch.from_numpy(s_p)), dim=1)
    p_t = torch.softmax(scale * cos(torch.from_numpy(t_q), torch.from_numpy(t_p)), dim=1)
    theirs = torch.nn.KLDivLoss(reduction="batchmean")(log_s, p_t).item()
    assert float(got.mean()) == pytest.approx(theirs, rel=1e-4)
