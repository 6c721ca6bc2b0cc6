"""``stack_levels``: ad-hoc level stacking (NL arXiv 2512.24695 §7.3) — every MLP of a
pretrained LM becomes a continuum-memory (CMS) chain started from its weights."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .cache import install
from .memory import pick_layers, record_op
from .models import decoder_layers, make_block

__all__ = ["StackedMLP", "stack_levels"]


def _output_path(module: nn.Module) -> str:
    """The last submodule with parameters of its own: the MLP's output projection."""
    owners = [name for name, m in module.named_modules() if name and any(
        True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError(f"stack_levels: {type(module).__name__} has no submodule with weights")
    return owners[-1]


class StackedMLP(nn.Module):
    """``mlp(u)`` as the CMS chain ``h₁ = u + M₁(u)``, ``h_{ℓ+1} = h_ℓ + M_{ℓ+1}(h_ℓ)``,
    output ``h_k − u`` (the decoder layer adds its own residual).

    Every level is a ``module`` memory over a copy of the pretrained MLP (``eval`` mode:
    no dropout); level 1 starts from its weights, levels ≥ 2 too but with the output
    projection zeroed, so they start at zero output. Level ℓ is written every
    ``chunk_sizes[ℓ]`` tokens (the CMS in-context regime, reads at the chunk start),
    hence before the first write the layer computes exactly the pretrained MLP. The CMS
    block's per-level norms are identities here: the decoder layer already normalises.
    """

    nl_stateful = True  # its fast state rides in the cache (nlframe.hf.cache)
    nl_state_in = nl_state_out = None

    def __init__(self, mlp: nn.Module, dim: int, chunk_sizes: Sequence[int], **options: Any) -> None:
        super().__init__()
        if "memory" in options or options.get("variant", "sequential") != "sequential":
            raise ValueError("stack_levels: the levels are the pretrained MLP (memory) chained "
                             "in order (variant 'sequential'); set neither")
        template = copy.deepcopy(mlp).eval().requires_grad_(False)
        self.cms = make_block("cms", dim, {"chunk_sizes": list(chunk_sizes), **options,
                                           "memory": {"type": "module", "module": template}})
        self.cms.norms = nn.ModuleList(nn.Identity() for _ in self.cms.norms)
        out = _output_path(template) + "."
        with torch.no_grad():
            for level, init in zip(self.cms.memories[1:], self.cms.init[1:]):
                for name, path in level.paths.items():
                    if path.startswith(out):
                        init[name].zero_()

    def forward(self, u: Tensor) -> Tensor:
        h, self.nl_state_out = self.cms(u, self.nl_state_in)
        return h - u


def stack_levels(model: nn.Module, chunk_sizes: Sequence[int] = (16, 64),
                 layers: Sequence[int] | None = None, **options: Any) -> nn.Module:
    """Replace the MLP of each chosen decoder layer (``None``: all) by a
    :class:`StackedMLP` with levels of ``chunk_sizes``; returns ``model``.

    ``options`` are the ``cms`` block's (``rule``, ``objective``, ``train_every``,
    ``grad_clip``, ``in_context``), validated like a spec table. The logits equal the
    original model's until the first write, after ``min(chunk_sizes)`` tokens; from
    then on the levels learn in context (state in the generation cache, as for
    :func:`~nlframe.hf.add_memory`). The MLP weights move into
    ``….mlp.cms.init.<ℓ>.<name>`` (slow parameters, trainable).
    """
    _, mods = decoder_layers(model)
    chosen = pick_layers(model, layers)
    dim = int(model.config.hidden_size)
    for i in chosen:
        if isinstance(getattr(mods[i], "mlp", None), StackedMLP):
            raise ValueError(f"decoder layer {i}: its MLP is stacked already")
        if not isinstance(getattr(mods[i], "mlp", None), nn.Module):
            raise ValueError(f"decoder layer {i} ({type(mods[i]).__name__}) has no .mlp")
    ref = next(model.parameters())
    built = [StackedMLP(mods[i].mlp, dim, chunk_sizes, **options).to(ref.device, ref.dtype)
             for i in chosen]
    record_op(model, {"op": "stack_levels", "options": {"chunk_sizes": list(chunk_sizes),
                                                         "layers": chosen, **options}})
    for i, stacked in zip(chosen, built):
        mods[i].mlp = stacked
        install(mods[i], i)
    return model
