"""``nlframe.layer``: every block by keyword with spec validation, and its fast state."""

from __future__ import annotations

import io
import re
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import load_file, save_file

import nlframe
from nlframe import get_registry
from nlframe.layers import (STRUCTURE_KEY, detach_state, init_state, state_from_dict, state_to,
                            state_to_dict)
from nlframe.level import MemoryState
from nlframe.spec import PluginRef, SpecError

DT = torch.float64
DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"

SMALL = {  # small, fast options per block; every registered block is covered
    "attention": {"heads": 2},
    "cms": {"chunk_sizes": [2, 4]},
    "deltanet": {"heads": 2},
    "hope": {"titans": {"heads": 2, "chunk_size": 2, "proj_chunk_size": 2},
             "cms": {"chunk_sizes": [2]}},
    "hope-attention": {"attention": {"heads": 2, "window": 3}, "cms": {"variant": "nested",
                                                                       "chunk_sizes": [4, 2]}},
    "linear-attention": {"heads": 2},
    "lm": {"vocab_size": 11, "blocks": [{"type": "titans", "heads": 2, "chunk_size": 2},
                                        {"type": "attention", "heads": 2}]},
    "mlp": {},
    "self-mod-titans": {"heads": 2, "chunk_size": 2, "proj_chunk_size": 3},
    "titans": {"heads": 2, "chunk_size": 3, "layout": "mal", "window": 4},
}


def _input(name: str, layer: torch.nn.Module, B: int = 2, T: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if name == "lm":
        return torch.randint(0, 11, (B, T), generator=gen)
    return torch.randn(B, T, layer.dim, generator=gen, dtype=DT)


def _layer(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return nlframe.layer(name, 16, **SMALL[name]).to(DT)


def test_every_block_is_covered():
    assert sorted(SMALL) == get_registry().names("block")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_pieces_with_saved_state_equal_one_pass(name, tmp_path):
    layer = _layer(name)
    x = _input(name, layer)
    y, _ = layer(x)
    y1, s1 = layer(x[:, :3])
    path = tmp_path / "state.safetensors"
    save_file(state_to_dict(s1), path)  # flat name → tensor: safetensors takes it as it is
    s1 = state_from_dict(load_file(path))
    y2, _ = layer(x[:, 3:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_init_state_is_what_none_starts_from(name):
    layer = _layer(name)
    x = _input(name, layer)
    torch.testing.assert_close(layer(x, init_state(layer, 2))[0], layer(x)[0], rtol=0, atol=0)


def _flatten(state, path=""):
    """``(path, leaf)`` of a state, state objects by their state_dict (for comparisons)."""
    if hasattr(state, "state_dict") and not isinstance(state, dict):
        yield path + ":" + type(state).__name__, None
        state = state.state_dict()
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _flatten(v, f"{path}.{k}")
    elif isinstance(state, (list, tuple)):
        yield path + ":" + type(state).__name__, len(state)
        for i, v in enumerate(state):
            yield from _flatten(v, f"{path}[{i}]")
    else:
        yield path, state


@pytest.mark.parametrize("name", ["titans", "cms", "hope-attention", "lm"])
def test_state_round_trip_is_exact(name):
    layer = _layer(name)
    _, state = layer(_input(name, layer, T=5))
    back = state_from_dict(state_to_dict(state))
    a, b = list(_flatten(state)), list(_flatten(back))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, u), (_, v) in zip(a, b):
        if isinstance(u, torch.Tensor):
            assert torch.equal(u, v) and u.dtype == v.dtype, path
        else:
            assert u == v and type(u) is type(v), path  # ints, None, lengths: exactly


def test_saved_names_are_paths_and_shared_tensors_stay_shared():
    layer = _layer("titans")
    _, state = layer(_input("titans", layer, T=6))  # 6 = 2 chunks of 3: W_c is W
    d = state_to_dict(state)
    assert {"memory.params.W1", "memory.opt_state.momentum.W2", "conv"} <= set(d)
    assert d[STRUCTURE_KEY].dtype == torch.uint8 and all(t.is_contiguous() for t in d.values())
    back = state_from_dict(d)["memory"]
    assert isinstance(back, MemoryState) and back.position == 0 and back.step == 6
    assert back.chunk_params["W1"] is back.params["W1"]
    buf = io.BytesIO()  # torch.save / torch.load(weights_only=True) take it too
    torch.save(d, buf)
    buf.seek(0)
    assert set(torch.load(buf, weights_only=True)) == set(d)


def test_state_to_moves_and_casts_and_detach_cuts_history():
    layer = _layer("cms")
    _, state = layer(_input("cms", layer))
    assert any(t.requires_grad for t in state_to_dict(state).values()) is False  # saved detached
    live = [s for s in state if s is not None][0]
    assert live.params and next(iter(live.params.values())).requires_grad
    cut = detach_state(state)
    assert not any(p.requires_grad for s in cut if s is not None for p in s.params.values())
    f32 = state_to(state, torch.float32)
    assert all(p.dtype == torch.float32 for s in f32 if s is not None for p in s.params.values())


def test_state_from_dict_errors():
    with pytest.raises(ValueError, match="no '__structure__' entry"):
        state_from_dict({"x": torch.zeros(1)})
    d = state_to_dict({"a": torch.zeros(2)})
    del d["a"]
    with pytest.raises(ValueError, match="tensor 'a' is missing"):
        state_from_dict(d)
    with pytest.raises(TypeError, match="cannot save a object at 'k'"):
        state_to_dict({"k": object()})


# ------------------------------------------------------------------ validation
def test_options_are_validated_with_spec_key_paths():
    with pytest.raises(SpecError) as err:
        nlframe.layer("titans", 64, memory={"type": "mlp", "hiden": 3})
    assert str(err.value).startswith("memory.hiden: unknown key 'hiden'; did you mean 'hidden'?")
    with pytest.raises(SpecError, match=r"^heads: 5 heads do not divide dim 64"):
        nlframe.layer("titans", 64, heads=5)
    with pytest.raises(SpecError, match=r"^hedas: unknown key 'hedas'; did you mean 'heads'"):
        nlframe.layer("titans", 64, hedas=4)
    with pytest.raises(SpecError, match=r"^titans\.cms: unknown key 'cms'"):
        nlframe.layer("hope", 64, titans={"cms": 1})


def test_errors_are_collected_like_a_spec():
    with pytest.raises(SpecError) as err:
        nlframe.layer("titans", 64, heads="4", chunk_size=0, memory="mpl")
    lines = str(err.value).splitlines()
    assert sorted(ln.split(":")[0] for ln in lines) == ["chunk_size", "heads", "memory"]
    assert any("unknown memory 'mpl'; did you mean 'mlp'?" in ln for ln in lines)


def test_unknown_block_lists_the_registered_ones():
    with pytest.raises(SpecError) as err:
        nlframe.layer("titanz", 64)
    message = str(err.value)
    assert "unknown block 'titanz'; did you mean 'titans'?" in message
    assert ", ".join(get_registry().names("block")) in message


def test_dim_must_be_a_positive_int_and_agree_with_an_lm():
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        nlframe.layer("mlp", 0)
    with pytest.raises(SpecError, match="^dim: the layer's width is 16, got 32"):
        nlframe.layer("lm", 16, dim=32)
    assert nlframe.layer("lm", 16).config.dim == 16


def test_layer_is_the_block_a_spec_builds():
    torch.manual_seed(0)
    a = nlframe.layer("deltanet", 16, heads=2, gate=True)
    torch.manual_seed(0)
    spec = nlframe.load_spec({"model": {"dim": 16, "vocab_size": 5, "blocks": [
        {"type": "deltanet", "heads": 2, "gate": True}]}})
    b = nlframe.build(spec).blocks[0]
    assert type(a) is type(b) and a.config == b.config


# -------------------------------------------- plugin references in Python Configs
def _ref_fields():
    reg = get_registry()
    for name in reg.names("block"):
        config = reg.get("block", name).Config
        attrs.resolve_types(config)
        for f in attrs.fields(config):
            if isinstance(f.type, type) and issubclass(f.type, PluginRef):
                yield pytest.param(name, f.name, f.type, id=f"{name}.{f.name}")


DEFAULT_NAME = {"memory": "mlp", "objective": "l2", "optimizer": "momentum"}


@pytest.mark.parametrize("block, field, ref", list(_ref_fields()))
def test_config_plugin_fields_take_a_name_or_a_table(block, field, ref):
    Config = get_registry().get("block", block).Config
    name = {"memory": "residual-mlp" if block == "self-mod-titans" else "mlp"}.get(
        ref.kind, DEFAULT_NAME[ref.kind])
    assert getattr(Config(**{field: name}), field) == ref(name)
    assert getattr(Config(**{field: {"type": name}}), field) == ref(name)
    with pytest.raises(SpecError, match=f"unknown {ref.kind} 'nope'"):
        Config(**{field: "nope"})
    with pytest.raises(SpecError, match=f"expected a {ref.kind} plugin name"):
        Config(**{field: 3})


def test_titans_config_with_a_plain_string_builds_and_runs():
    """The reported bug: ``Titans.Config(memory="mlp")`` failed at build with
    ``AttributeError: 'str' object has no attribute 'build'``."""
    Titans = get_registry().get("block", "titans")
    block = Titans(Titans.Config(heads=2, memory={"type": "mlp", "hidden": 8}, objective="huber"), 16)
    assert block.memory.dim_h == 8
    y, _ = block(torch.randn(1, 4, 16))
    assert y.shape == (1, 4, 16)
    with pytest.raises(SpecError, match=r"^hiden: unknown key 'hiden'; did you mean 'hidden'"):
        Titans.Config(memory={"type": "mlp", "hiden": 3})


def test_nested_configs_and_blocks_take_tables_in_python():
    reg = get_registry()
    Hope, LM = reg.get("block", "hope"), reg.get("block", "lm")
    config = Hope.Config(titans={"heads": 2}, cms={"chunk_sizes": [4, 8]})
    assert config.titans.heads == 2 and config.cms.chunk_sizes == (4, 8)
    lm = LM.Config(dim=16, blocks=[{"type": "mlp"}, {"type": "attention", "heads": 2}])
    assert [b.type for b in lm.blocks] == ["mlp", "attention"]
    assert LM.Config(dim=16, blocks=list(lm.blocks)).blocks == lm.blocks


# ------------------------------------------------------------------ the docs
def _doc_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "docs/interop.md '## Your own model' should hold one python block"
    return blocks[0]


def test_docs_your_own_model_example_runs():
    namespace: dict = {}
    exec(compile(_doc_example(), f"{DOC}:Your own model", "exec"), namespace)  # noqa: S102
    assert namespace["losses"] and all(torch.isfinite(torch.tensor(namespace["losses"])))
