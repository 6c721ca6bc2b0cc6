"""``KEY.PATH=VALUE`` overrides: parsing, paths into arrays of tables, the errors,
and the ``validate`` / ``spec show`` arguments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nlframe.cli import main
from nlframe.spec import SpecError, apply_overrides, dump_spec, load_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPECS = Path(__file__).resolve().parents[1] / "specs"
HOPE = SPECS / "hope-tiny.toml"
TWO = {"model": {"dim": 16, "blocks": [{"type": "mlp"}, {"type": "attention", "heads": 2}]}}


def errors_of(data, overrides) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(data, overrides=overrides)
    return info.value.errors


@pytest.mark.parametrize("text, value", [
    ("256", 256), ("1e-3", 1e-3), ('"text"', "text"), ("true", True), ("[1, 2]", [1, 2]),
    ('{type = "mlp", hidden = 64}', {"type": "mlp", "hidden": 64}),
    ("adamw", "adamw"), ("text:data/a.txt", "text:data/a.txt"), (" 7 ", 7), ("'lit'", "lit"),
])
def test_values_are_toml_or_bare_words(text, value):
    assert apply_overrides({}, [f"x.y={text}"]) == {"x": {"y": value}}


def test_paths_with_indices_and_no_mutation():
    data = {"model": {"dim": 8, "blocks": [{"type": "mlp"}, {"type": "attention"}]}}
    out = apply_overrides(data, ["model.blocks[1].heads=4", "model.dim=32", "train.lr=1e-3",
                                 "model.dim=16"])
    assert out == {"model": {"dim": 16, "blocks": [{"type": "mlp"}, {"type": "attention", "heads": 4}]},
                   "train": {"lr": 1e-3}}
    assert data == {"model": {"dim": 8, "blocks": [{"type": "mlp"}, {"type": "attention"}]}}
    assert apply_overrides(data, "model.dim=4")["model"]["dim"] == 4  # one string: one override


def test_load_spec_with_overrides_on_a_file():
    spec = load_spec(HOPE, overrides=("model.dim=256", "train.lr=1e-3",
                                      "model.blocks[0].titans.chunk_size=64"))
    assert spec.model.config.dim == 256 and spec.train.lr == 1e-3
    assert spec.model.config.blocks[0].config.titans.chunk_size == 64
    assert spec.source == str(HOPE)
    text = dump_spec(spec)
    assert load_spec(text) == spec  # dump_spec gives the effective spec
    assert tomllib.loads(text)["model"]["blocks"][0]["titans"]["chunk_size"] == 64
    assert load_spec(HOPE, overrides=()) == load_spec(HOPE)


def test_overridden_values_are_validated_with_key_paths():
    ((path, message),) = errors_of(TWO, ["model.dimm=3"])
    assert path == "model.dimm" and message.startswith(
        "unknown key 'dimm'; did you mean 'dim'? Accepted keys: blocks, ")
    assert errors_of(TWO, ["model.blocks[1].heads=0", "train.steps=ten"]) == [
        ("model.blocks[1].heads", "expected a positive int, got 0"),
        ("train.steps", "expected an int, got 'ten' (str)")]


def test_index_out_of_range_names_the_path_and_length():
    assert errors_of(TWO, ["model.blocks[5].heads=4"]) == [
        ("model.blocks[5]", "override 'model.blocks[5].heads=4': index 5 out of range; "
                            "model.blocks has 2 items")]
    assert errors_of(HOPE, ["model.blocks[1]={type = \"mlp\"}"]) == [
        ("model.blocks[1]", "override 'model.blocks[1]={type = \"mlp\"}': index 1 out of range; "
                            "model.blocks has 1 item")]


SYNTAX = "expected KEY.PATH=VALUE, e.g. model.dim=256 or model.blocks[0].heads=4"


@pytest.mark.parametrize("override, error", [
    ("model.dim", ("", f"override 'model.dim': no '='; {SYNTAX}")),
    ("model..dim=3", ("", f"override 'model..dim=3': malformed key path 'model..dim'; {SYNTAX}")),
    ("=3", ("", f"override '=3': malformed key path ''; {SYNTAX}")),
    ("[0].x=3", ("", f"override '[0].x=3': malformed key path '[0].x'; {SYNTAX}")),
    ("model.blocks[x]=3", ("", f"override 'model.blocks[x]=3': malformed key path "
                               f"'model.blocks[x]'; {SYNTAX}")),
    ("model.blocks[0]heads=3", ("", "override 'model.blocks[0]heads=3': malformed key path "
                                    f"'model.blocks[0]heads'; {SYNTAX}")),
    ("model.dim=", ("model.dim", "override 'model.dim=': no value after '='")),
    ("model.dim=[1,", ("model.dim", "override 'model.dim=[1,': invalid value '[1,' "
                                    "(Invalid value (at end of document))")),
    ("model.dim=1\nx = 2", ("model.dim", "override 'model.dim=1\\nx = 2': invalid value "
                                         "'1\\nx = 2' (more than one value)")),
    ("model.dim.x=3", ("model.dim", "override 'model.dim.x=3': model.dim is 16 (int), not a table")),
    ("model.dim[0]=3", ("model.dim", "override 'model.dim[0]=3': model.dim is 16 (int), not an array")),
    ("train.things[0]=3", ("train.things", "override 'train.things[0]=3': train.things is not set; "
                                           "there is no array to index")),
])
def test_malformed_overrides(override, error):
    assert errors_of(TWO, [override]) == [error]


def test_every_bad_override_is_reported():
    assert [p for p, _ in errors_of(TWO, ["a..b=1", "model.blocks[9].x=1", "ok=1"])] == [
        "", "model.blocks[9]"]
    assert errors_of(TWO, [3]) == [("", f"override 3: not a string; {SYNTAX}")]


def test_deep_override_values_are_one_error():
    ((path, message),) = errors_of(TWO, ["train.optimizer_kwargs.x=" + "[" * 3000 + "]" * 3000])
    assert path == "train.optimizer_kwargs.x" and message.endswith("(nested too deeply)")


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('[model]\ndim = 16\n[[model.blocks]]\ntype = "mlp"\n[[model.blocks]]\n'
                    'type = "attention"\nheads = 2\n')
    return path


def test_cli_validate_with_overrides(spec_file, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(spec_file.read_text())
    result = CliRunner().invoke(main, ["validate", str(spec_file), "model.dim=32",
                                       str(other), "train.batch_size=2", "train.seq_len=16"])
    assert result.exit_code == 0, result.output
    n = sum(p.numel() for p in __import__("nlframe").build(
        load_spec(spec_file, overrides=["model.dim=32"])).parameters())
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(f"({n:,} parameters, ~" in ln and ln.endswith(" GB to train at 2x16)")
                                   for ln in lines)


def test_cli_validate_override_errors(spec_file):
    result = CliRunner().invoke(main, ["validate", str(spec_file), "model.dimm=3",
                                       "model.blocks[1].heads=3"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()  # cross-field checks wait for a well-formed spec
    assert line.startswith(f"{spec_file}: model.dimm: unknown key 'dimm'; did you mean 'dim'?")
    heads = CliRunner().invoke(main, ["validate", str(spec_file), "model.blocks[1].heads=3"])
    assert heads.exit_code == 2 and heads.stderr == (
        f"{spec_file}: model.blocks[1].heads: 3 heads do not divide dim 16; change heads or set "
        "head_dim\n")
    bad = CliRunner().invoke(main, ["validate", str(spec_file), "model..dim=3"])
    assert bad.exit_code == 2 and bad.stderr == (
        f"{spec_file}: override 'model..dim=3': malformed key path 'model..dim'; {SYNTAX}\n")


def test_cli_validate_needs_a_spec_file():
    result = CliRunner().invoke(main, ["validate", "model.dim=3"])
    assert result.exit_code == 2 and "give at least one spec file" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_a_file_whose_name_has_an_equals_sign(tmp_path, spec_file):
    odd = tmp_path / "a=b.toml"
    odd.write_text(spec_file.read_text())
    result = CliRunner().invoke(main, ["validate", str(odd)])
    assert result.exit_code == 0 and result.stdout.startswith(f"ok {odd} (")


def test_cli_spec_show_with_overrides(spec_file):
    result = CliRunner().invoke(main, ["spec", "show", str(spec_file), "model.blocks[1].heads=4",
                                       "train.optimizer=adam"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "# overrides: model.blocks[1].heads=4 train.optimizer=adam"
    shown = tomllib.loads(result.stdout)
    assert shown["model"]["blocks"][1]["heads"] == 4 and shown["train"]["optimizer"] == "adam"
    assert load_spec(result.stdout) == load_spec(spec_file, overrides=[
        "model.blocks[1].heads=4", "train.optimizer=adam"])
    bad = CliRunner().invoke(main, ["spec", "show", str(spec_file), "model.blocks[2].heads=4"])
    assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.output
