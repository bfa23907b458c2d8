"""An optimisation of dropout's random draw (model.bernoulli, jax.random.bernoulli): the same law, about 16x
cheaper on a CPU; tests/test_model.py checks its statistics (rate, independence of neighbours and of keys) and that
it is a fixed function of (key, shape).

train.py and distill.py pass `keep_mask` to model.encode; the encoder would otherwise draw with model.bernoulli.
"""
import math

import jax
import jax.numpy as jnp


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
