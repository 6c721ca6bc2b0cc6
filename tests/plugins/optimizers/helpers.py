"""Shared helpers of the optimizer plugin tests."""

import torch

import nlframe


def rule(name, **defaults):
    return nlframe.get_registry().get("optimizer", name)(**defaults)


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def run(r, params, grads_seq, **hyper):
    """Params and state after feeding ``grads_seq`` through ``r.update``."""
    state = r.init(params)
    for g in grads_seq:
        params, state = r.update(g, state, params, **hyper)
    return params, state


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-300)).item()
