"""Spec files: TOML → frozen attrs classes, with errors that name the key path.

A spec is data: plugins are referenced by registered name only, never by import
path. Layout::

    description = "optional free text"

    [model]                      # type = "lm" by default: a registered block
    vocab_size = 256             # ... whose Config has a `dim` field
    dim = 128

    [[model.blocks]]             # one table per block of the stack
    type = "attention"           # a registered block name (required)
    repeat = 2                   # optional: N independent copies (default 1)
    heads = 4                    # the block's own Config fields

    [[model.blocks]]
    type = "titans"
    memory = { type = "mlp", hidden = 64 }   # a PluginRef: name + options

    [train]                      # nlframe.train_config.TrainConfig

Every table is structured into a frozen attrs class; unknown keys, wrong types
(``"64"`` for an int, ``1`` for a bool, ``inf`` for a number), missing required
keys, values rejected by a field validator, unknown plugin names and cross-field
problems (``Config.check(dim)``, ``TrainConfig.check()``) are all collected — not
only the first — into one :class:`SpecError` whose lines read
``model.blocks[1].heads: ...``. ``load_spec(path, overrides=["model.dim=256"])``
changes values before validation (:func:`apply_overrides`).

Block authors: give the block class a ``Config`` (``@attrs.frozen(kw_only=True)``)
using the validators below (``positive_int``, ``non_negative``, ``in_range``,
``one_of``, ``plugin_name``, ``matches``) and, for checks that involve several
fields or the model width, a method ``check(self, dim) -> None`` raising
``ValueError("field.path: message")`` (path relative to the block). Fields typed
:class:`MemoryRef` / :class:`ObjectiveRef` / :class:`OptimizerRef` accept
``"name"`` or ``{type = "name", option = ...}``; ``BlockSpec`` (or a tuple of
them) nests blocks, which inherit the container's ``dim``. The keys ``type``
and ``repeat`` are reserved in block tables.

Modules: ``errors`` (:class:`SpecError`), ``validators``, ``refs`` (plugin
references), ``schema`` (:class:`BlockSpec`, :class:`Spec`), ``convert`` (the
converter, its hooks, error paths, cross-field checks), ``overrides``, ``load``
and ``dump``.
"""

from __future__ import annotations

from .errors import SpecError
from .refs import MemoryRef, ObjectiveRef, OptimizerRef, PluginRef
from .validators import (InRange, Matches, OneOf, PluginName, _NonNegative, _PositiveInt,
                         in_range, matches, non_negative, one_of, plugin_name, positive_int)
from .schema import RESERVED_BLOCK_KEYS, BlockSpec, Spec  # after validators: imports train_config
from .convert import check_block, check_config, check_plugin_options, converter, structure
from .overrides import apply_overrides, parse_override
from .load import MAX_DEPTH, load_spec
from .dump import dump_spec, spec_to_dict

__all__ = [
    "Spec", "BlockSpec", "PluginRef", "MemoryRef", "ObjectiveRef", "OptimizerRef",
    "SpecError", "load_spec", "dump_spec", "spec_to_dict", "structure", "converter",
    "apply_overrides", "positive_int", "non_negative", "in_range", "one_of", "plugin_name",
    "matches",
]
