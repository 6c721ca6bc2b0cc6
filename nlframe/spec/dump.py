"""Writing a resolved spec back out: :func:`spec_to_dict`, :func:`dump_spec`."""

from __future__ import annotations

from typing import Any, Mapping

import tomli_w

from .convert import converter
from .schema import Spec

__all__ = ["spec_to_dict", "dump_spec"]


def spec_to_dict(spec: Spec) -> dict:
    """The resolved spec (every default filled) as plain TOML-ready data.

    ``None`` values are left out (TOML has no null; such fields default to ``None``).
    """
    conv = converter()
    data = {"description": spec.description, "model": conv.unstructure(spec.model),
            "train": conv.unstructure(spec.train)}
    if not spec.description:
        del data["description"]
    return _drop_none(data)


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def dump_spec(spec: Spec) -> str:
    """The resolved spec as TOML text (``tomli_w``), which :func:`load_spec` reads
    back to an equal spec.

    An array of tables such as ``model.blocks`` is written as ``[[model.blocks]]``
    sections, unless every one of its tables fits on one line (tomli_w then
    writes it inline, ``blocks = [{ type = "mlp", ... }]``).
    """
    return tomli_w.dumps(spec_to_dict(spec))
