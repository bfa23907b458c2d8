"""AdamW, clipping and the schedule against independent references (docs/contrastive.md).

Tolerances, float32 throughout; each was measured on CPU and given 3-10x headroom:
- 7 steps of `update` vs torch.optim.AdamW + clip_grad_norm_ (params of size up to 3, lr up to 1e-2):
  params and moments atol 1e-6 (measured: params 1.2e-7 = 1 ulp, m 2.2e-8, v 1.2e-10); lr and grad norm
  rtol 1e-6 (measured 3.8e-8 and 1.2e-7).
- clip_by_global_norm vs clip_grad_norm_: rtol 1e-6 (measured: norm 1.3e-7, clipped grads 2.4e-7).
- `learning_rate` vs transformers.get_linear_schedule_with_warmup: rtol 1e-6 (measured 1.1e-7), atol 1e-12 for the
  zeros (which come out exactly 0).
- The closed-form first step, computed in float64: atol 3e-7 for params in [-1, 1] (measured 6.7e-8).
- save_state/load_state: bit-exact.
- jit vs eager: atol 2e-6 (measured 7.2e-7 = 3 ulp of |p| = 2.3 after 7 steps, decayed tensors only). Not
  bit-exact: the fused CPU kernel mostly computes p * (1 - lr wd) - update as one fused multiply-add (one rounding
  instead of two; checked by emulating it in float64), and the lr of one step differs by 1 ulp.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy

from minilm import optim
from minilm.checkpoint import flatten, init_params, param_shapes, unflatten
from minilm.config import MINILM_L6_H384
from tests.conftest import need

pytestmark = pytest.mark.book  # the learner's tier: AdamW and its schedule against torch

# A few tensors of each kind the mask distinguishes, with BERT's names.
SHAPES = {
    "embeddings.word_embeddings.weight": (11, 8),
    "embeddings.LayerNorm.weight": (8,), "embeddings.LayerNorm.bias": (8,),
    "encoder.layer.0.intermediate.dense.weight": (12, 8), "encoder.layer.0.intermediate.dense.bias": (12,),
    "encoder.layer.0.output.dense.weight": (8, 12), "encoder.layer.0.output.dense.bias": (8,),
    "encoder.layer.0.output.LayerNorm.weight": (8,),
    "encoder.layer.1.attention.self.query.weight": (8, 8), "encoder.layer.1.attention.self.query.bias": (8,),
}
DECAYED = {k for k in SHAPES if not (k.endswith(".bias") or "LayerNorm" in k)}
# Per-step gradient scales: the global norm is about 20 x scale, so with max_grad_norm 5 steps 1, 3, 5 get clipped.
GRAD_SCALES = (0.05, 1.0, 0.1, 2.0, 0.2, 0.5, 0.02)
CFG = optim.AdamWConfig(lr=1e-2, weight_decay=0.1, warmup=3, total_steps=10, max_grad_norm=5.0)


def random_flat(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def run_jax(cfg, steps, jit=False):
    params = unflatten({k: jnp.asarray(v) for k, v in random_flat(0).items()})
    state = optim.init(params)
    update = jax.jit(optim.update, static_argnums=3) if jit else optim.update
    history = []
    for i in range(steps):
        grads = unflatten({k: jnp.asarray(v) for k, v in random_flat(100 + i, GRAD_SCALES[i]).items()})
        params, state, stats = update(params, grads, state, cfg)
        history.append((flatten(params), flatten(state.m), flatten(state.v), stats))
    return history, state


def test_update_matches_torch_adamw_with_clipping():
    torch = need("torch")
    warmup, total = CFG.warmup, CFG.total_steps  # the HF schedule, written out
    hf_lambda = lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in random_flat(0).items()}
    groups = [{"params": [p for k, p in tparams.items() if k in DECAYED], "weight_decay": CFG.weight_decay},
              {"params": [p for k, p in tparams.items() if k not in DECAYED], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=CFG.lr, betas=(CFG.b1, CFG.b2), eps=CFG.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda)

    history, _ = run_jax(CFG, len(GRAD_SCALES))
    clipped = []
    for i, (params, m, v, stats) in enumerate(history):
        for k, g in random_flat(100 + i, GRAD_SCALES[i]).items():
            tparams[k].grad = torch.tensor(g)
        lr = opt.param_groups[0]["lr"]
        norm = float(torch.nn.utils.clip_grad_norm_(list(tparams.values()), CFG.max_grad_norm))
        opt.step()
        sched.step()
        clipped.append(norm > CFG.max_grad_norm)
        np.testing.assert_allclose(float(stats["lr"]), lr, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(stats["grad_norm"]), norm, rtol=1e-6)
        for k, p in tparams.items():
            st = opt.state[p]
            np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=0, atol=1e-6, err_msg=f"step {i} {k}")
            np.testing.assert_allclose(m[k], st["exp_avg"].numpy(), rtol=0, atol=1e-6, err_msg=f"step {i} m.{k}")
            np.testing.assert_allclose(v[k], st["exp_avg_sq"].numpy(), rtol=0, atol=1e-6, err_msg=f"step {i} v.{k}")
    assert any(clipped) and not all(clipped), clipped  # the test exercises both sides of the clip
    start = random_flat(0)
    assert all(np.abs(history[-1][0][k] - start[k]).max() > 1e-3 for k in SHAPES)  # every tensor moved


@pytest.mark.parametrize("scale,max_norm", [(1.0, 5.0), (0.1, 5.0), (1e-7, 1e-6)])
def test_clip_matches_torch(scale, max_norm):
    """The last case has norm ~2e-6 against max_norm 1e-6, where torch's `+ 1e-6` turns scale 1/2 into ~1/3."""
    torch = need("torch")
    flat = random_flat(7, scale)
    tgrads = [torch.tensor(g) for g in flat.values()]
    for t in tgrads:
        t.grad = t.clone()
    want_norm = float(torch.nn.utils.clip_grad_norm_(tgrads, max_norm))
    got, norm = optim.clip_by_global_norm(unflatten(flat), max_norm)
    np.testing.assert_allclose(float(norm), want_norm, rtol=1e-6)
    for k, t in zip(flat, tgrads):
        np.testing.assert_allclose(flatten(got)[k], t.grad.numpy(), rtol=1e-6, atol=0, err_msg=k)


@pytest.mark.parametrize("warmup,total", [(3, 10), (0, 5), (4, 4), (500, 1000)])
def test_learning_rate_matches_transformers(warmup, total):
    torch, transformers = need("torch"), need("transformers")
    cfg = optim.AdamWConfig(lr=2e-5, warmup=warmup, total_steps=total)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
    jitted = jax.jit(optim.learning_rate, static_argnums=1)
    for step in range(total + 3):
        want = cfg.lr * sched.lr_lambdas[0](step)
        np.testing.assert_allclose(float(optim.learning_rate(step, cfg)), want, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(jitted(jnp.int32(step), cfg)), want, rtol=1e-6, atol=1e-12)


def test_decay_mask_on_bert_params():
    cfg = MINILM_L6_H384
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # shapes only; no 22M-float init
    mask = optim.decay_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    flat, shapes = flatten(mask), param_shapes(cfg)
    assert flat.keys() == shapes.keys()
    assert all(type(b) is bool for b in flat.values())
    # In BERT exactly the 1-D tensors are biases and LayerNorm params: an independent description of the split.
    assert all(flat[k] == (len(s) == 2) for k, s in shapes.items())
    L = cfg.num_hidden_layers
    assert sum(flat.values()) == 3 + 6 * L + 1 == 40  # 3 embeddings, Q K V O + 2 FFN per layer, pooler weight
    assert sum(not b for b in flat.values()) == 2 + 10 * L + 1 == 63  # embedding LN, 6 biases + 2 LN per layer
    assert mask["embeddings"]["word_embeddings"]["weight"] is True
    assert mask["encoder"]["layer"][5]["output"]["LayerNorm"]["weight"] is False
    assert mask["pooler"]["dense"]["bias"] is False


def test_first_step_closed_form():
    """Step 1 with bias correction: m_hat = g and v_hat = g^2, so p moves by -lr g / (|g| + eps) exactly."""
    cfg = optim.AdamWConfig(lr=1e-3, weight_decay=0.1, warmup=0, total_steps=10, max_grad_norm=None)
    flat = {k: np.tanh(v) for k, v in random_flat(0).items()}  # params in [-1, 1]
    rng = np.random.default_rng(1)
    # Gradient magnitudes from 1e-8 to 10, so that eps = 1e-6 matters for some elements and not for others.
    grads = {k: (rng.choice([-1, 1], s) * 10.0 ** rng.uniform(-8, 1, s)).astype(np.float32) for k, s in SHAPES.items()}
    new, state, stats = optim.update(unflatten(flat), unflatten(grads), optim.init(unflatten(flat)), cfg)
    assert float(stats["lr"]) == pytest.approx(cfg.lr, rel=1e-7)  # warmup 0: the first update has the peak lr
    assert int(state.step) == 1
    for k, new_p in flatten(new).items():
        p, g = flat[k].astype(np.float64), grads[k].astype(np.float64)
        if k in DECAYED:
            p = p * (1 - cfg.lr * cfg.weight_decay)
        want = p - cfg.lr * np.sign(g) * np.abs(g) / (np.abs(g) + cfg.eps)
        np.testing.assert_allclose(np.asarray(new_p), want, rtol=0, atol=3e-7, err_msg=k)


def test_save_load_round_trip_and_shape_errors(tmp_path):
    _, state = run_jax(CFG, 3)
    params = unflatten(random_flat(0))
    path = tmp_path / "optimizer.safetensors"
    optim.save_state(state, path)
    loaded = optim.load_state(path, params)
    assert int(loaded.step) == 3 and loaded.step.dtype == jnp.int32
    assert jax.tree.structure(loaded) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loaded)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))

    tensors = safetensors_numpy.load_file(str(path))
    assert set(tensors) == {f"{kind}.{k}" for kind in "mv" for k in SHAPES}
    bad = "v.encoder.layer.0.intermediate.dense.weight"
    tensors[bad] = tensors[bad].T.copy()
    safetensors_numpy.save_file(tensors, str(path), metadata={"step": "3"})
    with pytest.raises(ValueError, match=rf"{path.name}.*'{bad}'.*\(8, 12\).*\(12, 8\)"):
        optim.load_state(path, params)
    del tensors[bad]
    safetensors_numpy.save_file(tensors, str(path), metadata={"step": "3"})
    with pytest.raises(ValueError, match=rf"{path.name}: .*missing tensors \['{bad}'\]"):
        optim.load_state(path, params)
    tensors[bad] = np.zeros((12, 8), np.float32)
    tensors["m.pooler.dense.bias"] = np.zeros(8, np.float32)
    safetensors_numpy.save_file(tensors, str(path), metadata={"step": "3"})
    with pytest.raises(ValueError, match=r"missing tensors \[\], unexpected tensors \['m.pooler.dense.bias'\]"):
        optim.load_state(path, params)


def test_update_under_jit_matches_eager():
    eager, _ = run_jax(CFG, len(GRAD_SCALES))
    jitted, _ = run_jax(CFG, len(GRAD_SCALES), jit=True)
    for (p, m, v, stats), (pj, mj, vj, statsj) in zip(eager, jitted):
        for a, b in ((p, pj), (m, mj), (v, vj), (stats, statsj)):
            for k in a:
                np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=0, atol=2e-6, err_msg=k)
