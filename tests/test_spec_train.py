"""The ``[train]`` table is validated like the model: key paths, registered
plugin names, optimizer hyperparameters, device forms, finite numbers."""

from __future__ import annotations

import math

import attrs
import pytest

import nlframe
from nlframe import spec as spec_mod
from nlframe.spec import SpecError, load_spec
from nlframe.train_config import TrainConfig

MODEL = {"dim": 8, "blocks": [{"type": "mlp"}]}


def train_errors(**train) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec({"model": MODEL, "train": train})
    return info.value.errors


def load_train(**train) -> TrainConfig:
    return load_spec({"model": MODEL, "train": train}).train


def registered(kind: str) -> str:
    return ", ".join(sorted(nlframe.get_registry().names(kind)))


def test_shared_validators_no_second_copy():
    fields = attrs.fields(TrainConfig)
    assert fields.steps.validator is spec_mod.positive_int
    assert fields.lr.validator is spec_mod.non_negative
    assert isinstance(fields.optimizer.validator, spec_mod.PluginName)


def test_defaults_and_new_fields():
    cfg = load_train()
    assert cfg == TrainConfig()
    assert (cfg.precision, cfg.grad_accum, cfg.compile, cfg.parallel) == ("fp32", 1, False, "ddp")
    cfg = load_train(precision="bf16", grad_accum=4, compile=True, parallel="fsdp")
    assert (cfg.precision, cfg.grad_accum, cfg.compile, cfg.parallel) == ("bf16", 4, True, "fsdp")


def test_new_fields_are_validated():
    assert train_errors(precision="fp8", grad_accum=0, compile=1, parallel="dp") == [
        ("train.compile", "expected true or false, got 1 (int)"),
        ("train.precision", "expected one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
        ("train.grad_accum", "expected a positive int, got 0"),
        ("train.parallel", "expected one of 'ddp', 'fsdp', got 'dp'; did you mean 'ddp'?"),
    ]


def test_optimizer_names_are_registered_plugins():
    assert train_errors(optimizer="adamx", fallback_optimizer="sgdd") == [
        ("train.optimizer", "unknown optimizer 'adamx'; did you mean 'adam'? Registered "
                            f"optimizer plugins: {registered('optimizer')}"),
        ("train.fallback_optimizer", "unknown optimizer 'sgdd'; did you mean 'sgd'? Registered "
                                     f"optimizer plugins: {registered('optimizer')}"),
    ]
    assert load_train(optimizer="muon", fallback_optimizer="adam").optimizer == "muon"


def test_optimizer_kwargs_are_hyperparameters_of_that_optimizer():
    accepted = ", ".join(sorted(nlframe.get_registry().get("optimizer", "adamw").hyperparams))
    assert train_errors(optimizer_kwargs={"betas": [0.9, 0.95], "beta": 0.9}) == [
        ("train.optimizer_kwargs.beta", f"unknown key 'beta'; did you mean 'betas'? Accepted "
                                        f"keys: {accepted}")]
    assert train_errors(optimizer="momentum", optimizer_kwargs={"momentum": 2}) == [
        ("train.optimizer_kwargs.momentum", "invalid option for optimizer plugin: momentum must "
                                            "be in [0, 1], got 2")]
    cfg = load_train(optimizer="adamw", optimizer_kwargs={"betas": [0.9, 0.95], "eps": 1e-10})
    assert cfg.optimizer_kwargs == {"betas": [0.9, 0.95], "eps": 1e-10}
    assert train_errors(optimizer_kwargs={"lr": 1.0, "weight_decay": 0.0}) == [
        ("train.optimizer_kwargs.lr", "set train.lr instead"),
        ("train.optimizer_kwargs.weight_decay", "set train.weight_decay instead")]
    assert train_errors(optimizer_kwargs=[1]) == [
        ("train.optimizer_kwargs", "expected a table, got [1] (list)")]


def test_optimizer_kwargs_value_errors_name_the_key():
    ((path, message),) = train_errors(optimizer_kwargs={"betas": [0.9, 0.95, 0.99]})
    assert path == "train.optimizer_kwargs.betas"
    assert message.startswith("invalid option for optimizer plugin: ")


def test_data_is_a_registered_data_plugin_with_an_optional_argument():
    assert load_train(data="text:some/file.txt").data == "text:some/file.txt"
    assert load_train(data="mqar").data == "mqar"
    assert train_errors(data="txt:some/file.txt") == [
        ("train.data", "unknown data 'txt'; did you mean 'text'? Registered data plugins: "
                       f"{registered('data')}")]
    assert [p for p, _ in train_errors(data="")] == ["train.data"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices_accepted(device):
    assert load_train(device=device).device == device


@pytest.mark.parametrize("device", ["tpu:7", "gpu", "cuda:", "cuda:x", "CPU", "cpu:0", " cpu"])
def test_devices_rejected(device):
    assert train_errors(device=device) == [
        ("train.device", f"expected a device: cpu, cuda, cuda:N or mps, got {device!r}")]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_floats_must_be_finite(value):
    errors = train_errors(lr=value, grad_clip=value, optimizer_kwargs={"eps": value})
    assert [p for p, _ in errors] == ["train.lr", "train.grad_clip", "train.optimizer_kwargs.eps"]
    assert all(m == f"expected a finite number, got {value!r}" for _, m in errors)


def test_toml_inf_and_nan():
    for text in ("inf", "nan", "-inf", "+inf"):
        with pytest.raises(SpecError) as info:
            load_spec(f'[model]\ndim = 8\n[train]\nlr = {text}\n')
        ((path, message),) = info.value.errors
        assert path == "train.lr" and message.startswith("expected a finite number, got ")


def test_every_field_has_a_validator_or_a_strict_type():
    loose = {f.name for f in attrs.fields(TrainConfig) if f.validator is None}
    assert loose == {"seed", "compile"}  # checked by their type


def test_train_config_check_can_be_called_directly():
    TrainConfig(optimizer="sgd", optimizer_kwargs={"momentum": 0.9}).check()
    with pytest.raises(SpecError, match="optimizer_kwargs.bogus: unknown key 'bogus'"):
        TrainConfig(optimizer_kwargs={"bogus": 1}).check()


def test_constructing_with_a_bad_value_raises():
    with pytest.raises(ValueError, match="expected a device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown optimizer"):
        attrs.evolve(TrainConfig(), optimizer="nope")
