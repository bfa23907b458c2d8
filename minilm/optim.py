"""AdamW with decoupled weight decay, global-norm clipping and a linear warmup/decay schedule, in pure JAX.

The optimizer of the all-MiniLM-L6-v2 script (docs/contrastive.md): `clip_grad_norm_(1.0)`, then
transformers' AdamW (lr 2e-5, betas (0.9, 0.999), eps 1e-6) under `get_linear_schedule_with_warmup`. Per tensor,
at update t = 1, 2, ... (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", algorithm 2):
    p <- p * (1 - lr_t * wd)                     (decayed tensors only: not biases, not LayerNorm)
    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr_t / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
written in the order of torch.optim.AdamW (`_single_tensor_adam`), so the two agree to float32 rounding.
The state is a pytree of the params' structure; `optimizer.safetensors` stores it under `m.<HF key>`, `v.<HF key>`.
"""
import dataclasses
import math
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from minilm.checkpoint import flatten


@dataclasses.dataclass(frozen=True)
class AdamWConfig:
    lr: float = 2e-5  # peak learning rate
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6  # transformers.AdamW's default, used for all-MiniLM-L6-v2 (torch's own default is 1e-8)
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0  # global-norm clipping; None = off
    warmup: int = 500
    total_steps: int = 1000  # for the linear decay to 0


class OptState(NamedTuple):  # a pytree, so it passes through jit and shard_map like the params
    step: jax.Array  # int32 scalar: number of updates done
    m: dict  # first moments, same structure as params (float32)
    v: dict  # second moments


def learning_rate(step, cfg: AdamWConfig) -> jax.Array:
    """lr of update number `step` (0-based), as transformers.get_linear_schedule_with_warmup: ramps from 0 over
    `warmup` updates, then falls linearly to 0 at `total_steps`. The first update therefore has lr 0, as in HF."""
    t = jnp.asarray(step, jnp.float32)  # exact for integers below 2^24
    warm = t / max(1, cfg.warmup)
    decay = jnp.maximum(0.0, (cfg.total_steps - t) / max(1, cfg.total_steps - cfg.warmup))
    return cfg.lr * jnp.where(t < cfg.warmup, warm, decay)


def hf_names(tree) -> dict:
    """The same structure with each leaf replaced by its HF key, e.g. 'encoder.layer.0.output.dense.bias'."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path, simple=True, separator="."), tree)


def decay_mask(params: dict) -> dict:
    """True where weight decay applies (matrices, embeddings); False for biases and LayerNorm params, the usual
    BERT split (HF run_glue's `no_decay = ["bias", "LayerNorm.weight"]`)."""
    return jax.tree.map(lambda name: not (name.endswith(".bias") or "LayerNorm" in name), hf_names(params))


def init(params: dict) -> OptState:
    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
    return OptState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))


def global_norm(tree) -> jax.Array:
    """sqrt of the sum of squares of every element of every leaf: the L2 norm of all grads as one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, jax.Array]:
    """(grads scaled so their global norm is at most max_norm, the norm before clipping). The 1e-6 and the
    unconditional multiply are torch.nn.utils.clip_grad_norm_'s, so a norm just under max_norm is scaled too."""
    norm = global_norm(grads)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def bias_correction(beta: float, t: jax.Array) -> jax.Array:
    """1 - beta^t, as -expm1(t log beta): beta^t in float32 loses ~1e-5 of 1 - 0.999 to cancellation, while torch
    computes it in float64; this form is accurate to float32 rounding."""
    return -jnp.expm1(t.astype(jnp.float32) * math.log(beta))


def update(params: dict, grads: dict, state: OptState, cfg: AdamWConfig) -> tuple[dict, OptState, dict]:
    """One AdamW step: (new params, new state, {"lr": lr used, "grad_norm": norm before clipping}). Pure; jit it."""
    if cfg.max_grad_norm is not None:
        grads, norm = clip_by_global_norm(grads, cfg.max_grad_norm)
    else:
        norm = global_norm(grads)
    lr = learning_rate(state.step, cfg)
    t = state.step + 1  # torch increments its step before the bias corrections, so they use 1, 2, ...
    step_size = lr / bias_correction(cfg.b1, t)
    sqrt_bc2 = jnp.sqrt(bias_correction(cfg.b2, t))
    # m and v do not depend on p, so computing them before the decay below gives torch's result.
    m = jax.tree.map(lambda m, g: cfg.b1 * m + (1 - cfg.b1) * g, state.m, grads)
    v = jax.tree.map(lambda v, g: cfg.b2 * v + (1 - cfg.b2) * g * g, state.v, grads)

    def step_param(p, m, v, decay: bool):
        if decay:  # decoupled: shrink p itself by lr*wd, rather than adding wd*p to the gradient (Adam + L2)
            p = p * (1 - lr * cfg.weight_decay)
        return p - step_size * m / (jnp.sqrt(v) / sqrt_bc2 + cfg.eps)

    params = jax.tree.map(step_param, params, m, v, decay_mask(params))
    return params, OptState(t, m, v), {"lr": lr, "grad_norm": norm}


def save_state(state: OptState, path) -> None:
    """Write optimizer.safetensors: float32 tensors m.<HF key> and v.<HF key>, and the step in the metadata."""
    host = lambda x: np.ascontiguousarray(np.asarray(jax.device_get(x), dtype=np.float32))
    tensors = {f"{kind}.{k}": host(x) for kind, tree in (("m", state.m), ("v", state.v))
               for k, x in flatten(tree).items()}
    safetensors.numpy.save_file(tensors, str(path), metadata={"step": str(int(state.step))})


def load_state(path, params: dict) -> OptState:
    """Read what save_state wrote, checking that its tensors are exactly the moments of `params`."""
    path = pathlib.Path(path)
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            step = (f.metadata() or {}).get("step")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read safetensors ({e})") from None
    if step is None or not step.isdigit():
        raise ValueError(f"{path}: metadata has no integer 'step' (got {step!r})")
    expected = {f"{kind}.{k}": tuple(p.shape) for kind in "mv" for k, p in flatten(params).items()}
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:  # e.g. the state of a model with a different number of layers
        raise ValueError(f"{path}: not the optimizer state of these params; missing tensors {missing[:8]}, "
                         f"unexpected tensors {unexpected[:8]}")
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(f"{path}: tensor {key!r} has shape {tensors[key].shape}, expected {shape} from the params")
    names = hf_names(params)
    moments = lambda kind: jax.tree.map(lambda k: jnp.asarray(tensors[f"{kind}.{k}"], jnp.float32), names)
    return OptState(jnp.asarray(int(step), jnp.int32), moments("m"), moments("v"))
