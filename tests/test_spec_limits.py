"""Inputs that used to exhaust the interpreter or the machine: deep nesting
(RecursionError) and huge sizes (``repeat = 1000000`` built every copy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import nlframe
from nlframe.build import count_parameters, estimate_training_memory, gb_text, machine_memory
from nlframe.cli import main
from nlframe.spec import MAX_DEPTH, SpecError, load_spec

BUILD = sys.modules["nlframe.build"]  # the module; nlframe.build is the function
SPECS = Path(__file__).resolve().parents[1] / "specs"
SMALL = '[model]\ndim = 16\nvocab_size = 32\n[[model.blocks]]\ntype = "attention"\nheads = 2\n'


def one_error(source, **kw) -> tuple[str, str]:
    with pytest.raises(SpecError) as info:
        load_spec(source, **kw)
    (error,) = info.value.errors
    return error


# ----------------------------------------------------------------------- nesting
@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000 + "]" * 5000,
    "x = " + "{a = " * 5000 + "1" + "}" * 5000,
    "[model]\ndim = 8\n[train]\noptimizer_kwargs = { b = " + "[" * 3000 + "]" * 3000 + " }\n",
], ids=["arrays", "inline-tables", "in-train"])
def test_deep_toml_is_one_clean_error(text, tmp_path):
    assert one_error(text) == ("", "invalid TOML: arrays or tables nested too deeply")
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr == f"{path}: invalid TOML: arrays or tables nested too deeply\n"


def test_nesting_that_parses_is_still_limited():
    path, message = one_error("x = " + "[" * 100 + "]" * 100)
    assert message == f"nested more than {MAX_DEPTH} tables or arrays deep"
    assert path.startswith("x[0][0]") and path.endswith("...") and len(path) <= 63


def test_deep_and_cyclic_python_data():
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = node = {}
    path, message = one_error({"model": {"dim": 8}, "train": {"optimizer_kwargs": deep}})
    assert path.startswith("train.optimizer_kwargs.a.a") and "nested more than" in message
    cyclic: dict = {"dim": 8}
    cyclic["blocks"] = [cyclic]
    path, message = one_error({"model": cyclic})
    assert path.startswith("model.blocks[0].blocks[0]") and "nested more than" in message


def test_moderate_nesting_is_fine():
    value = 1
    for _ in range(MAX_DEPTH - 3):  # train, optimizer_kwargs, x: three levels above
        value = [value]
    assert one_error({"model": {"dim": 8}, "train": {"optimizer_kwargs": {"x": value}}})[0] == \
        "train.optimizer_kwargs.x"  # not a hyperparameter of adamw, but no depth error


# ----------------------------------------------------------------- parameter counting
def _built(spec) -> int:
    return sum(p.numel() for p in nlframe.build(spec).parameters())


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.toml")), ids=lambda p: p.stem)
def test_counts_match_the_built_models(path):
    spec = load_spec(path)
    assert count_parameters(spec) == _built(spec)


def test_repeat_is_counted_not_built():
    base = load_spec(SPECS / "hope-tiny.toml", overrides=["model.blocks[0].repeat=1"])
    one, two = _built(base), count_parameters(attrs_repeat(base, 2))
    assert count_parameters(attrs_repeat(base, 3)) == _built(attrs_repeat(base, 3))
    huge = load_spec(SPECS / "hope-tiny.toml", overrides=["model.blocks[0].repeat=1000000"])
    assert count_parameters(huge) == one + 999_999 * (two - one)


def attrs_repeat(spec, n):
    import attrs

    blocks = spec.model.config.blocks
    new = (attrs.evolve(blocks[0], repeat=n), *blocks[1:])
    return attrs.evolve(spec, model=attrs.evolve(spec.model, config=attrs.evolve(
        spec.model.config, blocks=new)))


def test_nested_repeats_and_per_copy_costs():
    """An LM inside an LM: the inner LM's norms and embedding are per copy."""
    inner = {"type": "lm", "dim": 16, "vocab_size": 4, "repeat": 3,
             "blocks": [{"type": "mlp", "repeat": 2}, {"type": "attention", "heads": 2, "repeat": 3}]}
    data = {"model": {"dim": 16, "vocab_size": 8, "tie_embeddings": False,
                      "blocks": [{"type": "mlp"}, inner, {"type": "attention", "heads": 4, "repeat": 2}]}}
    spec = load_spec(data)
    assert count_parameters(spec) == _built(spec)


COUNT_HUGE = """
import sys
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from nlframe.build import count_parameters, estimate_training_memory
spec = {"model": {"dim": 8192, "vocab_size": 1000000, "tie_embeddings": False,
                  "blocks": [{"type": "attention", "heads": 64, "repeat": 1000000}]}}
print(count_parameters(spec), estimate_training_memory(spec)["total_bytes"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS")
def test_counting_allocates_nothing():
    """~3e14 parameters counted in a process limited to 3 GiB of address space."""
    out = subprocess.run([sys.executable, "-c", COUNT_HUGE], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    n, total = map(int, out.stdout.split())
    assert n == 2 * 8192 * 1_000_000 + 1_000_000 * (4 * 8192 * 8192 + 8192) + 8192
    assert total > 16 * n


# ------------------------------------------------------------------------ estimate
def test_estimate_formula():
    spec = load_spec(SMALL, overrides=["train.batch_size=4", "train.seq_len=64",
                                       "model.checkpoint_tokens=0"])
    est = estimate_training_memory(spec)
    n = count_parameters(spec)
    assert est["parameters"] == n and est["blocks"] == 1
    assert est["parameter_bytes"] == est["gradient_bytes"] == 4 * n
    assert est["optimizer_bytes"] == 8 * n  # adamw: two moments
    assert est["activation_bytes"] == 4 * 64 * (16 * 16 * 4 + 8 * 32)
    assert est["total_bytes"] == 16 * n + est["activation_bytes"]
    assert (est["batch_size"], est["seq_len"]) == (4, 64)
    half = estimate_training_memory(load_spec(spec, overrides=["train.precision=bf16"]))
    assert half["activation_bytes"] == 4 * 64 * (16 * 16 * 2 + 8 * 32)
    accum = estimate_training_memory(load_spec(spec, overrides=["train.grad_accum=4"]))
    assert accum == est  # micro-batches of batch_size: the same activations
    sgd = estimate_training_memory(load_spec(spec, overrides=[
        "train.optimizer=sgd", "train.fallback_optimizer=sgd"]))
    assert sgd["optimizer_bytes"] == 4 * n  # one momentum buffer
    muon = estimate_training_memory(load_spec(spec, overrides=["train.optimizer=muon"]))
    assert muon["optimizer_bytes"] == 8 * n  # the larger of muon (1) and its adamw fallback (2)


def test_estimate_with_chunk_group_checkpointing():
    spec = load_spec(SMALL, overrides=["train.batch_size=2", "train.seq_len=1024",
                                       "model.checkpoint_tokens=256"])
    assert estimate_training_memory(spec)["activation_bytes"] == (
        2 * 1024 * (2 * 16 * 4 + 8 * 32) + 2 * 256 * 16 * 16 * 4)


def test_estimate_is_an_order_of_magnitude():
    """The transformer-tiny estimate against a real training step's tensors."""
    spec = load_spec(SPECS / "transformer-tiny.toml", overrides=["train.batch_size=2",
                                                                 "train.seq_len=64"])
    est = estimate_training_memory(spec)
    model = nlframe.build(spec, seed=0)
    saved = []
    tokens = torch.randint(0, 256, (2, 65))
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    assert 0.2 < est["activation_bytes"] / sum(saved) < 5


def test_machine_memory():
    total, where = machine_memory("cpu")
    assert where == "RAM" and total == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if not torch.cuda.is_available():
        assert machine_memory("cuda:0") == (total, "RAM")


# ---------------------------------------------------------------------------- CLI
def test_cli_validate_refuses_a_spec_too_large_for_the_machine(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text(SMALL + "repeat = 1000000\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output and not result.stdout
    (line,) = result.stderr.splitlines()
    n = count_parameters(path)
    limit = machine_memory("cpu")[0]
    assert line.startswith(f"{path}: too large to train here: ~")
    assert f" GB at 8x128 ({n:,} parameters), this machine has " in line
    assert line.endswith(f", this machine has {gb_text(limit)} GB (RAM)")


def test_cli_validate_compares_with_the_machine_memory(tmp_path, monkeypatch):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    total = estimate_training_memory(path)["total_bytes"]
    monkeypatch.setattr(BUILD, "machine_memory", lambda device: (total - 1, "RAM"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "too large to train here" in result.stderr
    monkeypatch.setattr(BUILD, "machine_memory", lambda device: (total, "RAM"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0 and result.stdout.startswith(f"ok {path} (")
    ok = CliRunner().invoke(main, ["validate", str(path), "train.batch_size=1"])
    monkeypatch.setattr(BUILD, "machine_memory", lambda device: (None, "RAM"))
    assert ok.exit_code == 0 and CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0


def test_cli_spec_show_prints_the_estimate_of_a_huge_spec(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text(SMALL + "repeat = 1000000\n")
    result = CliRunner().invoke(main, ["spec", "show", str(path)])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith(f"# {path}: {count_parameters(path):,} parameters, ~")
