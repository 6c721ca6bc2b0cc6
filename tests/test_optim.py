"""nlframe.optim.Optimizer against torch.optim: trajectories, state_dict, schedulers, errors."""

import copy
import io

import pytest
import torch
from torch import nn

import nlframe
from nlframe.interfaces import UpdateRule
from nlframe.optim import Optimizer
from nlframe.registry import UnknownPluginError
from nlframe.utils import bcast

STEPS = 25
RTOL = 1e-10


def mlp(bias: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.Tanh(), nn.Linear(8, 8, bias=bias),
                         nn.Tanh(), nn.Linear(8, 3, bias=bias)).double()


def data(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(32, 6, generator=gen, dtype=torch.float64),
            torch.randn(32, 3, generator=gen, dtype=torch.float64))


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean() + 0.1 * (model(x) ** 4).mean()


def two_groups(model, **second):
    ps = list(model.parameters())
    return [{"params": ps[: len(ps) // 2]}, {"params": ps[len(ps) // 2:], **second}]


def trajectory(make_opt, *, bias=True, steps=STEPS, sched=None):
    """Flat parameters after ``steps`` steps of a random regression problem."""
    model = mlp(bias)
    opt = make_opt(model)
    s = sched(opt) if sched else None
    x, y = data()
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
        if s:
            s.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def assert_rel(a, b, rtol=RTOL):
    err = ((a - b).norm() / b.norm()).item()
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


TORCH_CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.05), dict(lr=0.02)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9), dict(momentum=0.5)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.01)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3), dict(dampening=0.1)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1), dict(weight_decay=0.0)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, maximize=False), dict(weight_decay=0.2)),
    ("adam", torch.optim.Adam, dict(lr=0.01), dict(betas=(0.8, 0.95))),
    ("adam", torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True), dict(eps=1e-6)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01), dict(weight_decay=0.3)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, amsgrad=True, weight_decay=0.05), dict(lr=0.003)),
]


@pytest.mark.parametrize("rule,torch_cls,hyper,second", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_trajectory_equals_torch(rule, torch_cls, hyper, second):
    """25 float64 steps, two param groups with their own overrides, rtol 1e-10."""
    ours = trajectory(lambda m: Optimizer(two_groups(m, **second), rule=rule, **hyper))
    ref = trajectory(lambda m: torch_cls(two_groups(m, **second), **hyper))
    assert_rel(ours, ref)


def test_maximize_equals_torch():
    for rule, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        ours = trajectory(lambda m: Optimizer(m.parameters(), rule=rule, lr=1e-3, maximize=True),
                          steps=5)
        ref = trajectory(lambda m: cls(m.parameters(), lr=1e-3, maximize=True), steps=5)
        assert_rel(ours, ref)


@pytest.mark.parametrize("hyper", [dict(lr=0.02), dict(lr=0.02, nesterov=False, weight_decay=0.0),
                                   dict(lr=0.01, adjust_lr_fn="match_rms_adamw", momentum=0.9)])
def test_muon_trajectory_equals_torch(hyper):
    """Muon (bfloat16 Newton–Schulz) on 2-D parameters, two groups."""
    ours = trajectory(lambda m: Optimizer(two_groups(m, lr=0.005), rule="muon", **hyper),
                      bias=False)
    ref = trajectory(lambda m: torch.optim.Muon(two_groups(m, lr=0.005), **hyper), bias=False)
    assert_rel(ours, ref)


@pytest.mark.parametrize("sched", [lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.5),
                                   lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10)],
                         ids=["StepLR", "CosineAnnealingLR"])
def test_lr_schedulers_like_torch(sched):
    ours = trajectory(lambda m: Optimizer(m.parameters(), rule="adam", lr=0.02), sched=sched)
    ref = trajectory(lambda m: torch.optim.Adam(m.parameters(), lr=0.02), sched=sched)
    assert_rel(ours, ref)


def _round_trip(rule, hyper, *, bias=True):
    """Steps 0..9, save, 10..19 on the original and on a fresh optimizer loaded from the save."""
    x, y = data()
    model = mlp(bias)
    opt = Optimizer(two_groups(model), rule=rule, **hyper)
    for _ in range(10):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = mlp(bias, seed=123)
    model2.load_state_dict(saved["model"])
    opt2 = Optimizer(two_groups(model2), rule=rule, **hyper)
    opt2.load_state_dict(saved["opt"])
    for _ in range(10):
        for m, o in ((model, opt), (model2, opt2)):
            o.zero_grad()
            loss_of(m, x, y).backward()
            o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert str(opt.state_dict()) == str(opt2.state_dict())


@pytest.mark.parametrize("rule", sorted(set(nlframe.get_registry().names("optimizer")) - {"dgd"}))
def test_state_dict_round_trip_is_bit_exact(rule):
    hyper = {"lr": 1e-2}
    _round_trip(rule, hyper, bias=rule != "muon")


def test_state_dict_round_trip_with_scheduler_and_amsgrad():
    _round_trip("adamw", {"lr": 1e-2, "amsgrad": True})


def test_state_is_per_parameter_like_torch():
    model = mlp()
    opt = Optimizer(model.parameters(), rule="adam", lr=1e-3)
    x, y = data()
    loss_of(model, x, y).backward()
    opt.step()
    st = opt.state[model[0].weight]
    assert st["adam"]["step"] == 1
    assert st["adam"]["exp_avg"].shape == model[0].weight.shape
    assert set(opt.state_dict()["state"]) == set(range(6))


def test_params_without_grad_are_skipped_like_torch():
    """A parameter whose grad is None neither moves nor advances its step (torch semantics)."""
    def run(make):
        model = mlp()
        opt = make(model)
        x, y = data()
        for i in range(8):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            if i % 3 == 0:
                model[2].weight.grad = None
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert_rel(run(lambda m: Optimizer(m.parameters(), rule="adam", lr=0.01)),
               run(lambda m: torch.optim.Adam(m.parameters(), lr=0.01)))


def test_closure_and_zero_grad():
    model = mlp()
    opt = Optimizer(model.parameters(), rule="sgd", lr=0.1)
    x, y = data()

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(20):
        last = opt.step(closure).item()
    assert last < first
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


class CountingHeavyBall(UpdateRule):
    """``m ← βm + g``, ``W ← W − lr·m`` with a shared step count (not keyed by parameter)."""

    hyperparams = {"lr": 0.1, "beta": 0.9}

    def init(self, params):
        return {"m": {n: torch.zeros_like(p) for n, p in params.items()}, "count": 0}

    def update(self, grads, state, params, **hyper):
        h = self.resolve(hyper)
        m = {n: bcast(h["beta"], p) * state["m"][n] + grads[n] for n, p in params.items()}
        return ({n: p - h["lr"] * m[n] for n, p in params.items()},
                {"m": m, "count": state["count"] + 1})


def test_rule_instance_with_unkeyed_state_runs_per_parameter():
    """A rule whose state is not keyed by parameter is called once per parameter."""
    ours = trajectory(lambda m: Optimizer(m.parameters(), rule=CountingHeavyBall(), lr=0.01,
                                          beta=0.9))
    ref = trajectory(lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9,
                                               dampening=0.0))
    # torch's first step uses b = g, the heavy ball b = 0.9·0 + g: the same buffer
    assert_rel(ours, ref, rtol=1e-12)


def test_update_in_place_equals_pure_update():
    """The in-place path the adapter takes gives bit-identical params and state."""
    reg = nlframe.get_registry()
    gen = torch.Generator().manual_seed(0)
    for name in reg.names("optimizer"):
        rule = reg.get("optimizer", name)()
        if not hasattr(rule, "update_"):
            continue
        params = {"a": torch.randn(4, 5, generator=gen, dtype=torch.float64),
                  "b": torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)}
        pure_p, pure_s = dict(params), rule.init(params)
        ip_p = {n: p.clone() for n, p in params.items()}
        ip_s = rule.init(ip_p)
        for _ in range(4):
            g = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64)
                 for n, p in params.items()}
            pure_p, pure_s = rule.update(g, pure_s, pure_p, lr=0.01)
            ip_s = rule.update_(g, ip_s, ip_p, lr=0.01)
        for n in params:
            assert torch.equal(pure_p[n], ip_p[n]), (name, n)


def test_plain_torch_loop_without_other_nlframe_parts():
    model = nn.Linear(4, 1).double()
    opt = Optimizer(model.parameters(), rule="adamw", lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 100, gamma=0.5)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    assert nn.functional.mse_loss(model(x), y).item() < 1e-3
    assert isinstance(opt, torch.optim.Optimizer)


# -- errors -------------------------------------------------------------------------------
def test_unknown_rule_lists_the_registered_names():
    with pytest.raises(UnknownPluginError) as exc:
        Optimizer(mlp().parameters(), rule="adamm")
    msg = str(exc.value)
    assert "adamm" in msg and "adam" in msg and "muon" in msg and "m3" in msg


@pytest.mark.parametrize("rule,hyper,needle", [
    ("adam", dict(lr=-1.0), "lr"),
    ("adam", dict(betas=(0.9, 1.0)), "betas[1]"),
    ("adam", dict(betas=(-0.1, 0.9)), "betas[0]"),
    ("adam", dict(eps=0.0), "eps"),
    ("sgd", dict(momentum=-0.5), "momentum"),
    ("sgd", dict(nesterov=True), "nesterov"),
    ("muon", dict(adjust_lr_fn="bogus"), "adjust_lr_fn"),
    ("muon", dict(ns_steps=100), "ns_steps"),
    ("m3", dict(slow_every=0), "slow_every"),
    ("m3", dict(betas=(0.9, 0.99)), "betas"),
])
def test_out_of_range_hyperparameters_are_named(rule, hyper, needle):
    with pytest.raises(ValueError, match=None) as exc:
        Optimizer(mlp(bias=rule != "muon").parameters(), rule=rule, **hyper)
    assert needle in str(exc.value)


def test_unknown_hyperparameter_is_named():
    with pytest.raises(TypeError, match="momentum"):
        Optimizer(mlp().parameters(), rule="adam", momentum=0.9)


def test_bad_group_override_names_the_group():
    model = mlp()
    with pytest.raises(ValueError, match="param group 1.*lr"):
        Optimizer(two_groups(model, lr=-0.1), rule="adam")


def test_bad_scheduled_value_is_caught_at_step():
    model = mlp()
    opt = Optimizer(model.parameters(), rule="adam")
    opt.param_groups[0]["betas"] = (1.5, 0.9)
    x, y = data()
    loss_of(model, x, y).backward()
    with pytest.raises(ValueError, match="betas"):
        opt.step()


def test_muon_rejects_1d_parameters_by_name():
    model = mlp()
    named = [{"params": [p for _, p in model.named_parameters()],
              "param_names": [n for n, _ in model.named_parameters()]}]
    with pytest.raises(ValueError, match=r"'0\.bias'"):
        Optimizer(named, rule="muon")


def test_copy_of_state_dict_is_independent():
    model = mlp()
    opt = Optimizer(model.parameters(), rule="adam", lr=0.1)
    x, y = data()
    loss_of(model, x, y).backward()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt.step()
    assert sd["state"][0]["adam"]["step"] == 1


@pytest.mark.parametrize("rule,torch_cls,hyper,second", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_elementwise_rules_are_bit_identical_to_torch(rule, torch_cls, hyper, second):
    """sgd/adam/adamw apply torch's own operation sequence (fused tail: add_/mul_/addcdiv_)."""
    ours = trajectory(lambda m: Optimizer(two_groups(m, **second), rule=rule, **hyper))
    ref = trajectory(lambda m: torch_cls(two_groups(m, **second), **hyper))
    assert torch.equal(ours, ref)
