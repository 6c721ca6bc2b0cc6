"""The ``module`` memory: any ``nn.Module`` as a level's memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nlframe
from nlframe import Level, get_registry, initial_state, memory_scan
from nlframe.level import ContextFlow
from nlframe.scan import make_objective, make_rule
from nlframe.spec import SpecError
from nlframe_plugins.memories.mlp import MLPMemory
from nlframe_plugins.memories.module import ModuleMemory

DT = torch.float64
B, H, T, DK, DH, DV = 2, 2, 7, 3, 5, 4
NAMES = {"W1": "0_weight", "W2": "2_weight"}  # mlp memory → nn.Sequential parameter names


def _mlp_module() -> nn.Module:
    """``W2 σ(W1 x)`` as a module: the ``mlp`` memory's algebra."""
    return nn.Sequential(nn.Linear(DK, DH, bias=False), nn.GELU(), nn.Linear(DH, DV, bias=False))


class HFStyleMLP(nn.Module):
    """The call signature of a Hugging Face MLP: ``forward(hidden_states) -> Tensor``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc, self.c_proj, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(hidden_states)))


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: nn.functional.normalize(torch.randn(*s, generator=g, dtype=DT), dim=-1)  # noqa: E731
    q, k = unit(B, H, T, DK), unit(B, H, T, DK)
    v = torch.randn(B, H, T, DV, generator=g, dtype=DT)
    w0 = {"W1": 0.5 * torch.randn(B, H, DH, DK, generator=g, dtype=DT),
          "W2": 0.5 * torch.randn(B, H, DV, DH, generator=g, dtype=DT)}
    gates = {"lr": 0.2 + 0.3 * torch.rand(B, H, T, generator=g, dtype=DT),
             "decay": 0.1 * torch.rand(B, H, T, generator=g, dtype=DT),
             "momentum": 0.8 * torch.rand(B, H, T, generator=g, dtype=DT)}
    return q, k, v, w0, gates


def test_registered_and_shaped_like_the_module():
    assert get_registry().get("memory", "module") is ModuleMemory
    f = _mlp_module().double()
    mem = ModuleMemory(DK, DV, module=f)
    assert mem.structure is None
    assert mem.param_shapes() == {"0_weight": (DH, DK), "2_weight": (DV, DH)}
    w0 = mem.init_params(dtype=torch.float32)
    assert torch.equal(w0["0_weight"], f[0].weight.float()) and not w0["0_weight"].requires_grad
    w0["0_weight"].add_(1.0)  # a copy: the module is never changed
    assert not torch.equal(w0["0_weight"], f[0].weight.float())


MODES = [dict(read="after_write", write="token"), dict(read="chunk_start", write="chunk"),
         dict(read="after_write", write="chunk")]


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_equals_the_mlp_memory_with_the_same_weights(chunk_size, modes):
    """Outputs, states and input gradients of a streamed scan (reference backend, float64)."""
    q, k, v, w0, gates = _inputs()
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    f = _mlp_module().double()
    rule = make_rule("momentum")
    runs = {}
    for name, mem, names, kw in (
            ("mlp", MLPMemory(DK, DV, hidden=DH), {n: n for n in NAMES}, {"hidden": DH}),
            ("module", ModuleMemory(DK, DV, module=f), NAMES, {"module": f})):
        state = initial_state(mem, rule, batch=B, heads=H, dtype=DT,
                              params={names[n]: p for n, p in w0.items()})
        ys = []
        for lo, hi in ((0, 3), (3, T)):  # a split inside a chunk: streaming is part of the contract
            y, state = memory_scan(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], memory=name,
                                   memory_kwargs=kw, backend="reference", chunk_size=chunk_size,
                                   state=state, **{g: t[:, :, lo:hi] for g, t in gates.items()},
                                   **modes)
            ys.append(y)
        y = torch.cat(ys, 2)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, DV, dtype=DT)).sum(), (q, k, v))
        runs[name] = (y, state, names, grads)
    (y1, s1, n1, g1), (y2, s2, n2, g2) = runs["mlp"], runs["module"]
    torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-12)
    assert (s2.position, s2.step) == (s1.position, s1.step)
    for n in NAMES:
        for part in ("params", "chunk_params", "pending"):
            a, b = getattr(s1, part), getattr(s2, part)
            assert (n1[n] in a) == (n2[n] in b)
            if n1[n] in a:
                torch.testing.assert_close(b[n2[n]], a[n1[n]], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s2.momentum[n2[n]], s1.momentum[n1[n]], rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_a_level_with_a_memory_instance_and_a_hf_style_module():
    """``nlframe.Level`` takes the instance; reads are ``f(x; W)`` per (batch, head)."""
    f = HFStyleMLP(4, 6).double()
    mem = ModuleMemory(4, 4, module=f)
    assert sorted(mem.param_shapes()) == ["c_fc_bias", "c_fc_weight", "c_proj_bias",
                                          "c_proj_weight"]
    level = Level(mem, make_objective("l2"), make_rule("momentum"), chunk_size=2)
    q = nn.functional.normalize(torch.randn(B, H, T, 4, dtype=DT), dim=-1)
    y, state = level.scan(ContextFlow(q, q, torch.randn(B, H, T, 4, dtype=DT), lr=0.1), None)
    assert y.shape == (B, H, T, 4) and state.params["c_fc_weight"].shape == (B, H, 6, 4)
    x = torch.randn(3, 4, dtype=DT)
    one = {n: p[1, 0] for n, p in state.params.items()}
    expect = torch.func.functional_call(f, {mem.paths[n]: p for n, p in one.items()}, (x,))
    torch.testing.assert_close(mem.read(state.params, x)[1, 0], expect)
    torch.testing.assert_close(mem.read(one, x), expect)  # no leading dims


def test_chunked_declines_and_auto_picks_reference():
    q, k, v, w0, gates = _inputs()
    with pytest.raises(ValueError, match="backend 'chunked' does not support.*memory 'module' has "
                                         "structure None"):
        memory_scan(q, k, v, memory="module", backend="chunked", chunk_size=2)
    y, _ = memory_scan(q, k, v, memory="module", chunk_size=2)
    ref, _ = memory_scan(q, k, v, memory="module", backend="reference", chunk_size=2)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


def test_dgd_is_refused():
    q, k, v, _, _ = _inputs()
    with pytest.raises(ValueError, match="'dgd' needs the input of every weight matrix.*'module'"):
        memory_scan(q, k, v, memory="module", optimizer="dgd", decay=0.0)


def test_spec_names_the_builtin_recipe_and_refuses_others():
    spec = {"model": {"dim": 16, "vocab_size": 5, "blocks": [
        {"type": "titans", "heads": 2, "memory": {"type": "module", "hidden": 8}}]}}
    model = nlframe.build(spec)
    assert model.blocks[0].memory.param_shapes() == {"0_weight": (8, 8), "0_bias": (8,),
                                                     "2_weight": (8, 8), "2_bias": (8,)}
    spec["model"]["blocks"][0]["memory"] = {"type": "module", "module": "gpt2"}
    with pytest.raises(SpecError, match=r"model\.blocks\[0\]\.memory: memory 'module': unknown "
                                        r"module 'gpt2'.*pass the module itself in Python"):
        nlframe.load_spec(spec)
    spec["model"]["blocks"][0]["memory"] = {"type": "module", "hiden": 8}
    with pytest.raises(SpecError, match=r"memory\.hiden: unknown key 'hiden'; did you mean "
                                        r"'hidden'"):
        nlframe.load_spec(spec)


def test_a_titans_layer_over_a_given_module():
    f = HFStyleMLP(8, 16)
    layer = nlframe.layer("titans", 16, heads=2, chunk_size=2,
                          memory={"type": "module", "module": f})
    assert torch.equal(layer.init["c_fc_weight"][1], f.c_fc.weight.detach())  # W_0 per head: f's
    y, state = layer(torch.randn(2, 5, 16))
    y.square().mean().backward()
    assert layer.init["c_fc_weight"].grad is not None and state["memory"].step == 5


def test_clear_errors():
    with pytest.raises(ValueError, match=r"maps x \(N, Dk\) = \(2, 3\) to \(2, 4\); expected "
                                         r"\(N, Dv\) = \(2, 5\)"):
        ModuleMemory(3, 5, module=nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"calling the module on x of shape .*\(2, 2\) failed"):
        ModuleMemory(2, 4, module=nn.Linear(3, 4))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module or 'mlp', got 3"):
        ModuleMemory(3, 3, module=3)
    with pytest.raises(TypeError, match="hidden and seed apply to module='mlp' only"):
        ModuleMemory(3, 3, module=nn.Linear(3, 3), hidden=4)
    with pytest.raises(ValueError, match="has no parameters"):
        ModuleMemory(3, 3, module=nn.Identity())
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        ModuleMemory(3, 3, hidden=0)
