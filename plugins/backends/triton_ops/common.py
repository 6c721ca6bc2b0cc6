"""What the Triton kernels share: activations with their derivatives, flat copies, the
interpreter switch and the per-mode ``triton.jit`` of a module's kernels (the checks
of a request every kernel family makes are in ``triton_backend.py``, importable
without triton).

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so kernels and their
helpers are plain functions here, decorated on first use for the flag then in force
(:func:`jit_in_namespace`); the interpreter then runs CPU tensors.
"""

from __future__ import annotations

import types
from typing import Callable

import triton
import triton.language as tl


ACTIVATIONS = {"gelu": 0, "silu": 1, "relu": 2, "sigmoid": 3, "tanh": 4, "identity": 5}
"""Activation name → the kernels' ``ACT`` code (:func:`act`)."""

def act(z, ACT: tl.constexpr, ORDER: tl.constexpr):
    """``(σ(z), σ′(z), σ″(z))`` of activation code ``ACT``; derivatives above ``ORDER`` are 0.

    gelu (exact) ``z Φ(z)``: ``σ′ = Φ + zφ``, ``σ″ = φ (2 − z²)``; silu ``z s(z)``:
    ``σ′ = s (1 + z (1 − s))``, ``σ″ = s (1 − s)(2 + z (1 − 2s))``; relu; sigmoid
    ``σ′ = s (1 − s)``, ``σ″ = σ′ (1 − 2s)``; tanh ``σ′ = 1 − t²``, ``σ″ = −2t σ′``; identity.
    """
    zero = z * 0.0
    d1, d2 = zero, zero
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        s = z * cdf
        if ORDER >= 1:
            pdf = 0.3989422804014327 * tl.exp(-0.5 * z * z)
            d1 = cdf + z * pdf
            if ORDER >= 2:
                d2 = pdf * (2.0 - z * z)
    elif ACT == 1:
        ez = tl.exp(-tl.abs(z))
        sg = tl.where(z >= 0.0, 1.0 / (1.0 + ez), ez / (1.0 + ez))
        s = z * sg
        if ORDER >= 1:
            d1 = sg * (1.0 + z * (1.0 - sg))
            if ORDER >= 2:
                d2 = sg * (1.0 - sg) * (2.0 + z * (1.0 - 2.0 * sg))
    elif ACT == 2:
        s = tl.maximum(z, 0.0)
        if ORDER >= 1:
            d1 = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 3:
        ez = tl.exp(-tl.abs(z))
        s = tl.where(z >= 0.0, 1.0 / (1.0 + ez), ez / (1.0 + ez))
        if ORDER >= 1:
            d1 = s * (1.0 - s)
            if ORDER >= 2:
                d2 = d1 * (1.0 - 2.0 * s)
    elif ACT == 4:
        e2z = tl.exp(-2.0 * tl.abs(z))
        th = (1.0 - e2z) / (1.0 + e2z)
        s = tl.where(z >= 0.0, th, -th)
        if ORDER >= 1:
            d1 = 1.0 - s * s
            if ORDER >= 2:
                d2 = -2.0 * s * d1
    else:
        s = z
        if ORDER >= 1:
            d1 = zero + 1.0
    return s, d1, d2


def copy_flat(dst, src, n, BLK: tl.constexpr):
    """``dst[:n] = src[:n]`` in blocks of ``BLK``."""
    for off in range(0, n, BLK):
        r = off + tl.arange(0, BLK)
        tl.store(dst + r, tl.load(src + r, mask=r < n, other=0.0), mask=r < n)


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


def per_mode(cache: dict, build: Callable[[], tuple]) -> tuple:
    """``build()``'s kernels for the current interpreter mode, built once per mode."""
    mode = interpreting()
    if mode not in cache:
        cache[mode] = build()
    return cache[mode]


def jit_in_namespace(module_globals: dict, helpers: tuple[str, ...],
                     kernels: tuple[Callable, ...]) -> tuple:
    """``kernels`` decorated by ``triton.jit`` in a copy of ``module_globals`` in which the
    ``helpers`` (names of plain functions) are decorated too, so that kernels and helpers of
    one interpreter mode resolve each other."""
    ns = dict(module_globals)

    def jit(fn):
        copy = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__)
        copy.__annotations__ = dict(fn.__annotations__)  # the tl.constexpr parameters
        copy.__doc__ = fn.__doc__
        return triton.jit(copy)

    for name in helpers:
        ns[name] = jit(module_globals[name])
    return tuple(jit(k) for k in kernels)
