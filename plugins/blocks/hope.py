"""``hope`` and ``hope-attention``: a sequence model followed by a Continuum Memory
System (NL arXiv 2512.24695 §8.3)."""

from __future__ import annotations

from typing import Any

import attrs
from torch import Tensor, nn

from nlframe.interfaces import Block

from .attention import Attention
from .cms import CMS
from .common import check_input, spec_field
from .self_mod_titans import SelfModTitans


def _check_parts(config: Any, dim: int, *fields: str) -> None:
    """Run each sub-config's ``check(dim)``; errors are prefixed with the field name."""
    for field in fields:
        try:
            getattr(config, field).check(dim)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{field}.{exc}" if ": " in str(exc) else f"{field}: {exc}") from None


class _SequenceThenCMS(Block):
    """``x ← x + mixer(norm(x))`` then ``x ← CMS(x)`` (whose levels are pre-norm residual)."""

    handles_residual = True
    mixer_field = ""

    def _build(self, mixer: nn.Module, cms: CMS.Config, dim: int) -> None:
        self.dim = dim
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.mixer = mixer
        self.cms = CMS(cms, dim)

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input(self.name, x, self.dim)
        state = state or {}
        y, s_mix = self.mixer(self.norm(x), state.get(self.mixer_field))
        x = x + y  # o_t (eq. 94), residual
        x, s_cms = self.cms(x, state.get("cms"))  # y_t = MLP^(f_k)(… MLP^(f_1)(o_t)) (eq. 97)
        return x, {self.mixer_field: s_mix, "cms": s_cms}

    def surprise(self) -> dict[str, Tensor]:
        """The sequence model's and the CMS levels' surprise, ``<part>.<level>``."""
        out = {}
        for part, module in ((self.mixer_field, self.mixer), ("cms", self.cms)):
            fn = getattr(module, "surprise", None)
            if callable(fn):
                out.update({f"{part}.{k}": v for k, v in fn().items()})
        return out


class Hope(_SequenceThenCMS):
    """HOPE block: self-modifying Titans followed by a Continuum Memory System
    (NL arXiv 2512.24695 §8.3, eqs. 94–97)::

        o = x + SelfModTitans(norm(x))                       (eqs. 94–96)
        y = MLP^(f_k)(… MLP^(f_1)(o))                         (eq. 97; CMS, pre-norm residual levels)

    The fast, expressive-but-small self-modifying memory and the slow,
    high-capacity CMS are complementary levels; both keep learning in context,
    so the carried state (``{"titans": …, "cms": …}``) makes a stream of any
    length equal one pass. Sub-tables ``titans`` and ``cms`` are the configs of
    the ``self-mod-titans`` and ``cms`` blocks.
    """

    name, mixer_field = "hope", "titans"

    @attrs.frozen(kw_only=True)
    class Config:
        titans: SelfModTitans.Config = attrs.field(
            factory=SelfModTitans.Config, converter=spec_field(SelfModTitans.Config))
        cms: CMS.Config = attrs.field(
            factory=CMS.Config, converter=spec_field(CMS.Config))

        def check(self, dim: int) -> None:
            _check_parts(self, dim, "titans", "cms")

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config = config
        self._build(SelfModTitans(config.titans, dim), config.cms, dim)


class HopeAttention(_SequenceThenCMS):
    """HOPE-Attention: softmax attention followed by a Continuum Memory System
    (NL arXiv 2512.24695 §8.3, "Hope-Attention"; §7.1's Transformer with its MLP
    replaced by CMS)::

        o = x + Attention(norm(x)),    y = MLP^(f_k)(… MLP^(f_1)(o))

    Sub-tables ``attention`` and ``cms`` configure the two parts; state
    ``{"attention": KV cache, "cms": …}``.
    """

    name, mixer_field = "hope-attention", "attention"

    @attrs.frozen(kw_only=True)
    class Config:
        attention: Attention.Config = attrs.field(
            factory=Attention.Config, converter=spec_field(Attention.Config))
        cms: CMS.Config = attrs.field(
            factory=CMS.Config, converter=spec_field(CMS.Config))

        def check(self, dim: int) -> None:
            _check_parts(self, dim, "attention", "cms")

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config = config
        self._build(Attention(config.attention, dim), config.cms, dim)
