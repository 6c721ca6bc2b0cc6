"""Spec loading: exact error paths, plugin references, round trips, generated
specs and their mutations (over every registered block), and the CLI."""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Union, get_args, get_origin

import attrs
import pytest
import torch
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

import nlframe
from nlframe import hookimpl
from nlframe.build import count_parameters
from nlframe.cli import main
from nlframe.interfaces import Block, Memory, Objective
from nlframe.spec import (BlockSpec, InRange, MemoryRef, ObjectiveRef, OneOf, OptimizerRef,
                          PluginName, PluginRef, Spec, SpecError, dump_spec, in_range, load_spec,
                          non_negative, one_of, plugin_name, positive_int)
from nlframe.train_config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_NonNegative, _PositiveInt = type(non_negative), type(positive_int)


def errors_of(source: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    return info.value.errors


def paths_of(source: Any) -> list[str]:
    return [p for p, _ in errors_of(source)]


# --------------------------------------------------------------- exact error paths
def test_unknown_keys_with_suggestion():
    assert errors_of({"model": {"dim": 8, "blocks": [{"type": "attention", "haeds": 2}]},
                      "trian": {}}) == [
        ("model.blocks[0].haeds", "unknown key 'haeds'; did you mean 'heads'? Accepted keys: "
                                  "bias, head_dim, heads, rope_base, window"),
        ("trian", "unknown key 'trian'; did you mean 'train'? Accepted keys: description, model, "
                  "train"),
    ]


def test_wrong_types_are_not_coerced():
    assert errors_of({"model": {"dim": "64", "tie_embeddings": 1, "vocab_size": 3.0,
                                "blocks": [{"type": "mlp", "hidden": True}]}}) == [
        ("model.dim", "expected an int, got '64' (str)"),
        ("model.vocab_size", "expected an int, got 3.0 (float)"),
        ("model.blocks[0].hidden", "expected an int, got True (bool)"),
        ("model.tie_embeddings", "expected true or false, got 1 (int)"),
    ]
    assert errors_of({"model": {"dim": 8, "blocks": {"type": "mlp"}}}) == [
        ("model.blocks", "expected an array, got {'type': 'mlp'} (dict)")]
    assert errors_of({"model": 3}) == [
        ("model", "expected a block table with a 'type' key, got 3 (int)")]


def test_missing_required_keys():
    assert errors_of({}) == [("model", "missing required key")]
    assert errors_of({"model": {"vocab_size": 8}}) == [("model.dim", "missing required key")]
    assert paths_of({"model": {"dim": 8, "blocks": [{"heads": 2}]}}) == ["model.blocks[0].type"]


def test_bad_values_and_every_error_reported():
    text = """
    [model]
    dim = 16
    norm = "batchnorm"
    [[model.blocks]]
    type = "mlp"
    [[model.blocks]]
    type = "attention"
    window = 0
    repeat = 0
    [train]
    steps = 0
    schedule = "cosine"
    """
    assert errors_of(text) == [
        ("model.blocks[1].repeat", "expected a positive int, got 0"),
        ("model.blocks[1].window", "expected a positive int, got 0"),
        ("model.norm", "expected one of 'rmsnorm', 'layernorm', got 'batchnorm'"),
        ("train.steps", "expected a positive int, got 0"),
    ]


def test_unknown_block_lists_registered_names_and_closest():
    ((path, message),) = errors_of({"model": {"dim": 8, "blocks": [{"type": "mlp"}, {"type": "atention"}]}})
    assert path == "model.blocks[1].type"
    assert message.startswith("unknown block 'atention'; did you mean 'attention'? Registered block plugins: ")
    assert set(nlframe.get_registry().names("block")) <= set(message.split(": ", 1)[1].split(", "))


def test_cross_field_check_heads_not_dividing_dim():
    assert errors_of({"model": {"dim": 30, "blocks": [
        {"type": "mlp"}, {"type": "attention", "heads": 4}]}}) == [
        ("model.blocks[1].heads", "4 heads do not divide dim 30; change heads or set head_dim")]


def test_model_must_be_a_model():
    assert paths_of({"model": {"type": "mlp"}}) == ["model.type"]
    assert paths_of({"model": {"type": "lm", "dim": 8, "repeat": 2}}) == ["model.repeat"]


def test_invalid_toml_and_missing_file(tmp_path):
    ((path, message),) = errors_of("[model\ndim = 3")
    assert path == "" and message.startswith("invalid TOML")
    with pytest.raises(FileNotFoundError, match="cannot read spec file"):
        load_spec(str(tmp_path / "missing.toml"))
    with pytest.raises(TypeError, match="expected a path, TOML text, a dict or a Spec; got int"):
        load_spec(3)


# ------------------------------------------------------- a local plugin package
class FakeMemory(Memory):
    """Test memory with one option."""

    def __init__(self, dim_k, dim_v, *, hidden: int = 4):
        super().__init__(dim_k, dim_v)
        self.hidden = hidden

    def param_shapes(self):
        return {"W": (self.dim_v, self.dim_k)}

    def init_params(self, *, generator=None, dtype=torch.float32, device=None):
        return {"W": torch.zeros(self.dim_v, self.dim_k, dtype=dtype, device=device)}

    def read(self, params, x):
        return x @ params["W"].transpose(-1, -2)


class FakeObjective(Objective):
    """Test objective with no options: ½‖pred − target‖²."""

    def loss(self, pred, target):
        return 0.5 * (pred - target).pow(2).sum(-1)


class MemBlock(Block):
    """Test block whose Config uses every kind of field a memory block has."""

    @attrs.frozen(kw_only=True)
    class Config:
        memory: MemoryRef = MemoryRef("test-mem")
        objective: ObjectiveRef = ObjectiveRef("test-obj")
        optimizer: OptimizerRef = OptimizerRef("momentum")
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))
        chunk_size: int = attrs.field(default=1, validator=positive_int)
        lr: float = attrs.field(default=0.1, validator=non_negative)
        gate: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
        mode: str = attrs.field(default="nested", validator=one_of("nested", "sequential"))
        dk: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        inner: tuple[BlockSpec, ...] = ()

        def check(self, dim):
            if self.dk is not None and self.dk != dim:
                raise ValueError(f"dk: this memory needs Dk == Dv == dim {dim}, got Dk {self.dk}")

    def __init__(self, config, dim):
        super().__init__()
        self.memory = config.memory.build(config.dk or dim, dim)
        self.lin = torch.nn.Linear(dim, dim)

    def forward(self, x, state=None):
        return self.lin(x), state


class _Plugin:
    @hookimpl
    def nlframe_register_memory(self, register):
        register("test-mem", FakeMemory)

    @hookimpl
    def nlframe_register_objective(self, register):
        register("test-obj", FakeObjective)

    @hookimpl
    def nlframe_register_block(self, register):
        register("test-memblock", MemBlock)


@pytest.fixture
def local_plugins():
    reg = nlframe.get_registry()
    plugin = _Plugin()
    reg.register_plugin(plugin, name="test-spec-plugins")
    yield
    reg.unregister_plugin(plugin)


def memblock(**fields) -> dict:
    return {"model": {"dim": 8, "blocks": [{"type": "test-memblock", **fields}]}}


def test_plugin_refs_structure_and_build(local_plugins):
    spec = load_spec(memblock(memory={"type": "test-mem", "hidden": 16}, objective="test-obj",
                              optimizer={"type": "momentum", "lr": 0.5, "momentum": 0.9}))
    cfg = spec.model.config.blocks[0].config
    assert cfg.memory == MemoryRef("test-mem", {"hidden": 16}) and cfg.objective == ObjectiveRef("test-obj")
    assert cfg.optimizer.build().defaults == {"lr": 0.5, "decay": 0.0, "momentum": 0.9}
    model = nlframe.build(spec)
    assert model.blocks[0].memory.hidden == 16
    assert load_spec(dump_spec(spec)) == spec


def test_plugin_ref_errors(local_plugins):
    b = "model.blocks[0]"
    assert errors_of(memblock(memory={"type": "test-mem", "hiden": 3})) == [
        (f"{b}.memory.hiden", "unknown key 'hiden'; did you mean 'hidden'? Accepted keys: hidden")]
    ((path, message),) = errors_of(memblock(memory="test-mme"))
    assert path == f"{b}.memory" and "did you mean 'test-mem'?" in message
    assert paths_of(memblock(memory={"type": "nope"})) == [f"{b}.memory.type"]
    assert paths_of(memblock(memory={"hidden": 3})) == [f"{b}.memory.type"]
    assert errors_of(memblock(optimizer={"type": "momentum", "lr": -1.0, "momentum": 0.5})) == [
        (f"{b}.optimizer.lr", "invalid option for optimizer plugin: lr must be >= 0, got -1.0")]
    assert paths_of(memblock(optimizer={"type": "momentum", "betas": 1})) == [f"{b}.optimizer.betas"]
    assert paths_of(memblock(objective={"type": "test-obj", "delta": 1.0})) == [f"{b}.objective.delta"]
    ((path, message),) = errors_of(memblock(backend="nope"))
    assert path == f"{b}.backend" and message.startswith("unknown backend 'nope'")
    assert paths_of(memblock(objective=3)) == [f"{b}.objective"]


def test_check_paths_are_relative_to_the_block(local_plugins):
    assert errors_of(memblock(dk=4)) == [
        ("model.blocks[0].dk", "this memory needs Dk == Dv == dim 8, got Dk 4")]
    nested = memblock(inner=[{"type": "mlp"}, {"type": "attention", "heads": 3}])
    assert errors_of(nested) == [
        ("model.blocks[0].inner[1].heads", "3 heads do not divide dim 8; change heads or set head_dim")]
    assert paths_of(memblock(inner=[{"type": "mlp", "hidden": 0}])) == ["model.blocks[0].inner[0].hidden"]


def test_sources_and_round_trip(tmp_path):
    text = '[model]\ndim = 16\n[[model.blocks]]\ntype = "attention"\nheads = 2\nrepeat = 3\n[train]\nsteps = 7\n'
    path = tmp_path / "s.toml"
    path.write_text(text)
    from_path, from_str_path = load_spec(path), load_spec(str(path))
    from_text, from_dict = load_spec(text), load_spec(tomllib.loads(text))
    assert from_path == from_str_path == from_text == from_dict == load_spec(from_dict)
    assert from_path.source == str(path) and from_text.source is None
    assert from_text.model.type == "lm" and from_text.model.config.blocks[0].repeat == 3
    assert from_text.train == TrainConfig(steps=7)
    shown = dump_spec(from_text)
    assert "window" not in shown  # None is left out
    assert tomllib.loads(shown)["model"]["blocks"][0]["repeat"] == 3  # short blocks: inline
    assert load_spec(shown) == from_text


# --------------------------------------------------- generated specs (any block)
OMIT = object()
SKIP_BLOCKS = {"lm"}


def _checks(validator: Any) -> list[Any]:
    """Flatten attrs' optional/and_ wrappers into the list of leaf validators."""
    if validator is None:
        return []
    if hasattr(validator, "_validators"):
        return [c for v in validator._validators for c in _checks(v)]
    if type(validator).__name__ == "_OptionalValidator":
        return _checks(validator.validator)
    return [validator]


KNOWN = (_PositiveInt, _NonNegative, InRange, OneOf, PluginName)


def _number_strategy(tp: type, checks: list[Any]) -> st.SearchStrategy | None:
    for c in checks:
        if isinstance(c, _PositiveInt):
            return st.sampled_from([1, 2, 4, 8]) | st.integers(1, 12)
        if isinstance(c, _NonNegative):
            return st.integers(0, 8) if tp is int else st.floats(0.0, 2.0)
        if isinstance(c, InRange):
            hi = min(c.hi, c.lo + 16)
            if tp is int:
                lo = math.floor(c.lo) + 1 if c.lo_open else math.ceil(c.lo)
                hi = math.ceil(hi) - 1 if c.hi_open and hi == c.hi else math.floor(hi)
                return st.integers(lo, hi) if lo <= hi else None
            return st.floats(c.lo, hi, exclude_min=c.lo_open, exclude_max=c.hi_open and hi == c.hi)
    if not checks and tp is int:
        return st.integers(0, 8)
    return None


def value_strategy(tp: Any, checks: list[Any], depth: int) -> st.SearchStrategy | None:
    """Valid values of a Config field from its type and validators (None: unknown)."""
    reg = nlframe.get_registry()
    if any(not isinstance(c, KNOWN) for c in checks):
        return None
    if get_origin(tp) is Union or type(tp).__name__ == "UnionType":
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = value_strategy(args[0], checks, depth) if len(args) == 1 else None
        return None if inner is None else st.none() | inner
    for c in checks:
        if isinstance(c, OneOf):
            return st.sampled_from(c.choices)
        if isinstance(c, PluginName):
            names = set(reg.names(c.kind))
            if c.kind == "backend":  # those that run here within a test: available, no compiling
                names = {n for n in names
                         if reg.get("backend", n)().unavailable_reason() is None} - {"compiled"}
            return st.sampled_from(sorted({*names, *c.extra}))
    if tp is bool:
        return st.booleans()
    if tp in (int, float):
        return _number_strategy(tp, checks)
    if isinstance(tp, type) and issubclass(tp, PluginRef):
        names = reg.names(tp.kind)
        return st.sampled_from(names) if names else None
    if tp is BlockSpec:
        return block_table(depth - 1) if depth > 0 else None
    if get_origin(tp) in (tuple, list) and get_args(tp)[:1] == (BlockSpec,):
        return st.lists(block_table(depth - 1), max_size=2) if depth > 0 else None
    return None


def config_strategy(cls: type, depth: int, overrides: dict | None = None) -> st.SearchStrategy | None:
    """Tables for the attrs ``cls``: each defaulted key omitted or drawn; None if a
    required field cannot be generated."""
    attrs.resolve_types(cls)
    parts = {}
    for f in attrs.fields(cls):
        if overrides and f.name in overrides:
            parts[f.name] = overrides[f.name]
            continue
        s = value_strategy(f.type, _checks(f.validator), depth)
        has_default = f.default is not attrs.NOTHING
        if s is None:
            if not has_default:
                return None
            continue
        parts[f.name] = st.just(OMIT) | s if has_default else s
    return st.fixed_dictionaries(parts).map(lambda d: {k: v for k, v in d.items() if v is not OMIT})


def generatable_blocks(depth: int) -> dict[str, st.SearchStrategy]:
    reg = nlframe.get_registry()
    out = {}
    for name in reg.names("block"):
        cfg = getattr(reg.get("block", name), "Config", None)
        if name in SKIP_BLOCKS or name.startswith("test-") or cfg is None:
            continue
        s = config_strategy(cfg, depth)
        if s is not None:
            out[name] = s.map(lambda d, n=name: {"type": n, **d})
    return out


def block_table(depth: int) -> st.SearchStrategy:
    blocks = generatable_blocks(depth)
    repeat = st.just(OMIT) | st.integers(1, 2)
    return st.sampled_from(sorted(blocks)).flatmap(lambda n: st.tuples(blocks[n], repeat)).map(
        lambda br: br[0] if br[1] is OMIT else {**br[0], "repeat": br[1]})


def spec_strategy() -> st.SearchStrategy:
    from nlframe_plugins.blocks.lm import LM

    model = config_strategy(LM.Config, 1, overrides={
        "dim": st.sampled_from([8, 16]), "vocab_size": st.integers(2, 32),
        "blocks": st.lists(block_table(1), min_size=1, max_size=3)})
    return st.fixed_dictionaries({"model": model}, optional={"train": st.just({"steps": 3})})


def test_generator_covers_every_registered_block():
    reg = nlframe.get_registry()
    blocks = {n for n in reg.names("block") if n not in SKIP_BLOCKS and not n.startswith("test-")}
    assert {"attention", "mlp"} <= blocks == set(generatable_blocks(1))


def is_valid(data: dict) -> bool:
    try:
        load_spec(data)
        return True
    except SpecError:
        return False


@given(data=spec_strategy())
def test_any_generated_spec_validates_builds_and_runs(data):
    try:
        spec = load_spec(data)
    except SpecError as exc:  # only cross-field checks may reject a generated spec
        assert exc.errors and all(p.startswith("model.blocks[") for p, _ in exc.errors)
        assume(False)
    model = nlframe.build(spec, seed=0)
    vocab = spec.model.config.vocab_size
    logits, state = model(torch.randint(0, vocab, (1, 5)))
    assert logits.shape == (1, 5, vocab) and torch.isfinite(logits).all()
    assert load_spec(dump_spec(spec)) == spec
    assert count_parameters(spec) == sum(p.numel() for p in model.parameters())


def _table_class(data: dict, table: str) -> type:
    from nlframe_plugins.blocks.lm import LM

    if table == "model":
        return LM.Config
    if table == "train":
        return TrainConfig
    i = int(re.fullmatch(r"model\.blocks\[(\d+)\]", table).group(1))
    return nlframe.get_registry().get("block", data["model"]["blocks"][i]["type"]).Config


def _tables(data: dict) -> dict[str, dict]:
    out = {"model": data["model"], "train": data.setdefault("train", {})}
    for i, b in enumerate(data["model"]["blocks"]):
        out[f"model.blocks[{i}]"] = b
    return out


def _bad_value(f: attrs.Attribute) -> Any:
    for c in _checks(f.validator):
        if isinstance(c, _PositiveInt):
            return 0
        if isinstance(c, _NonNegative):
            return -1
        if isinstance(c, InRange):
            return c.hi + 1
        if isinstance(c, OneOf):
            return "zz-not-a-choice" if isinstance(c.choices[0], str) else 10**9
        if isinstance(c, PluginName):
            return "zz-no-such-plugin"
    return OMIT


@given(data=spec_strategy(), choice=st.data())
def test_any_mutation_gives_a_path_labelled_error(data, choice):
    assume(is_valid(data))
    tables = _tables(data)
    table = choice.draw(st.sampled_from(sorted(tables)))
    cls = _table_class(data, table)
    fields = {f.name: f for f in attrs.fields(cls)}
    kind = choice.draw(st.sampled_from(["unknown key", "wrong type", "unknown plugin", "bad value"]))
    if kind == "unknown key":
        key, value = "zz_unknown", 1
    elif kind == "unknown plugin" and table.startswith("model.blocks"):
        key, value = "type", "zz-no-such-block"
    elif kind == "bad value":
        candidates = sorted(n for n, f in fields.items() if _bad_value(f) is not OMIT)
        if table.startswith("model.blocks"):
            candidates.append("repeat")
        assume(candidates)
        key = choice.draw(st.sampled_from(candidates))
        value = 0 if key == "repeat" else _bad_value(fields[key])
    else:
        key = choice.draw(st.sampled_from(sorted(fields)))
        attrs.resolve_types(cls)
        assume(fields[key].type is not Any)
        value = 12345 if fields[key].type is str else "oops"
    tables[table][key] = value
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert f"{table}.{key}" in [p for p, _ in info.value.errors], info.value


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@given(data=spec_strategy(), junk=JSONISH, where=st.data())
def test_arbitrary_values_anywhere_never_raise_anything_but_spec_error(data, junk, where):
    tables = _tables(data)
    table = where.draw(st.sampled_from(sorted(tables)))
    key = where.draw(st.sampled_from(sorted(tables[table]) + ["type", "blocks", "zz"]))
    tables[table][key] = junk
    try:
        load_spec(data)
    except SpecError as exc:
        assert exc.errors and all(isinstance(p, str) and m for p, m in exc.errors)


@pytest.mark.parametrize("data", [{1: 2}, {"model": {"dim": 8, 3: 4}}, {"model": {"dim": 8, "blocks": [None]}}])
def test_odd_keys_and_values(data):
    assert errors_of(data)


# --------------------------------------------------------------------------- CLI
VALID = '[model]\ndim = 16\nvocab_size = 32\n[[model.blocks]]\ntype = "attention"\nheads = 2\n'
INVALID = '[model]\ndim = 16\ncolour = 1\n[[model.blocks]]\ntype = "attention"\nheads = 3\nwindow = 0\n'


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.toml").write_text(VALID)
    (tmp_path / "bad.toml").write_text(INVALID)
    return tmp_path


def test_cli_validate_ok(files):
    result = CliRunner().invoke(main, ["validate", str(files / "good.toml")])
    n = count_parameters(VALID)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"ok {re.escape(str(files / 'good.toml'))} \({n:,} parameters, "
                        r"~[0-9.e-]+ GB to train at 8x128\)\n", result.stdout), result.stdout


def test_cli_validate_errors_one_line_each(files):
    good, bad = str(files / "good.toml"), str(files / "bad.toml")
    result = CliRunner().invoke(main, ["validate", good, bad, str(files / "none.toml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stdout.startswith(f"ok {good} (")
    lines = result.stderr.splitlines()
    assert lines[:2] == [f"{bad}: model.blocks[0].window: expected a positive int, got 0",
                         f"{bad}: model.colour: unknown key 'colour'; accepted keys: blocks, "
                         "checkpoint_tokens, dim, init_std, norm, norm_eps, tie_embeddings, vocab_size"]
    assert len(lines) == 3 and lines[2].startswith(f"{files / 'none.toml'}: cannot read spec file")


def test_cli_validate_reports_cross_field_errors(files):
    (files / "heads.toml").write_text(INVALID.replace("colour = 1\n", "").replace("window = 0\n", ""))
    result = CliRunner().invoke(main, ["validate", str(files / "heads.toml")])
    assert result.exit_code == 2
    assert result.stderr == (f"{files / 'heads.toml'}: model.blocks[0].heads: 3 heads do not divide "
                             "dim 16; change heads or set head_dim\n")


def test_cli_spec_show(files):
    result = CliRunner().invoke(main, ["spec", "show", str(files / "good.toml")])
    assert result.exit_code == 0
    first, rest = result.stdout.split("\n", 1)
    assert first.startswith(f"# {files / 'good.toml'}: {count_parameters(VALID):,} parameters, ~")
    assert first.endswith(" GB to train at 8x128")
    shown = tomllib.loads(rest)
    assert shown["model"]["norm"] == "rmsnorm" and shown["train"]["steps"] == 300  # defaults filled
    assert load_spec(rest) == load_spec(VALID)
    bad = CliRunner().invoke(main, ["spec", "show", str(files / "bad.toml")])
    assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 2 and "Traceback" not in bad.output


def test_spec_is_frozen():
    spec = load_spec(VALID)
    assert isinstance(spec, Spec)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.model = None  # type: ignore[misc]
