"""The ``self-mod-titans`` block against a float64 per-token loop of NL eqs. 86–93,
at chunk learning-rate totals above 2 (not a first-order check); real
self-modification, streaming, the variants, surprise, config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nlframe.spec import MemoryRef, OptimizerRef, SpecError, load_spec
from nlframe_plugins.blocks.common import l2norm
from nlframe_plugins.blocks.self_mod_titans import SelfModTitans
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, **cfg) -> SelfModTitans:
    cfg.setdefault("heads", 2)
    cfg.setdefault("chunk_size", 3)
    cfg.setdefault("proj_chunk_size", 4)
    cfg.setdefault("memory", MemoryRef("residual-mlp", {"hidden": 8}))
    cfg.setdefault("proj_memory", MemoryRef("residual-mlp", {"hidden": 12}))
    cfg.setdefault("proj_lr", 0.5)
    torch.manual_seed(seed)
    return SelfModTitans(SelfModTitans.Config(**cfg), dim).double()


def inputs(b=2, t=11, dim=16, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ the equations, token by token
def _gelu_grad(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _res_mlp(W1, W2, x):
    """M(x) = x + W2 σ(W1 x) (NL eq. 89) for one vector x."""
    return x + W2 @ F.gelu(W1 @ x)


def _dgd_token(W1, W2, W1c, W2c, k, target, theta, keep):
    """One token of NL eq. 91 for a residual-MLP memory: the gradient of
    ½‖M_c(k) − target‖² at the chunk-start (W1c, W2c), closed form, then
    W⁽ˡ⁾ ← W⁽ˡ⁾(keep·I − θ x⁽ˡ⁾x⁽ˡ⁾ᵀ) − θ g⁽ˡ⁾ with x⁽¹⁾ = k, x⁽²⁾ = σ(W1c k)."""
    z = W1c @ k
    a = F.gelu(z)
    d2 = k + W2c @ a - target  # ∂ℓ/∂pred
    d1 = (W2c.T @ d2) * _gelu_grad(z)
    eye1, eye2 = torch.eye(W1.shape[1], dtype=k.dtype), torch.eye(W2.shape[1], dtype=k.dtype)
    W1n = W1 @ (keep * eye1 - theta * torch.outer(k, k)) - theta * torch.outer(d1, k)
    W2n = W2 @ (keep * eye2 - theta * torch.outer(a, a)) - theta * torch.outer(d2, a)
    return W1n, W2n


def per_token_loop(block: SelfModTitans, x: torch.Tensor) -> torch.Tensor:
    """The block's output computed from eqs. 86–93 one token at a time, in float64."""
    cfg, H, D = block.config, block.heads, block.head_dim
    P, dim = len(block.names), block.dim
    with torch.no_grad():
        xc = block.conv(x, None)[0] if block.conv is not None else x
        B, T = x.shape[:2]
        out = torch.zeros(B, T, dim, dtype=x.dtype)
        for b in range(B):
            proj = [[block.proj_init["W1"][j].clone(), block.proj_init["W2"][j].clone()] for j in range(P)]
            mem = [[block.memory_init["W1"][h].clone(), block.memory_init["W2"][h].clone()] for h in range(H)]
            pc, mc = None, None
            ys = []
            for t in range(T):
                if t % cfg.proj_chunk_size == 0:
                    pc = [[w.clone() for w in m] for m in proj]  # M_□ at the chunk start (eq. 90)
                if t % cfg.chunk_size == 0:
                    mc = [[w.clone() for w in m] for m in mem]
                u = xc[b, t] / (xc[b, t].norm() ** 2 + 1e-6).sqrt()
                reads = [_res_mlp(*pc[j], u) for j in range(P)]  # k, v, e, a (eq. 90)
                k, v = reads[0], reads[1]
                eta = torch.sigmoid(block.eta(reads[2]))  # (H,)
                alpha = torch.sigmoid(block.alpha(reads[3]))
                kbar = k / (k.norm() ** 2 + 1e-6).sqrt()
                theta_p = cfg.proj_lr * float(cfg.rule.options.get("lr", 1.0)) * eta.mean()
                for j in range(P):  # eq. 91 with v̂_□ = M_□,c(v_t)
                    target = _res_mlp(*pc[j], v)
                    proj[j] = list(_dgd_token(*proj[j], *pc[j], kbar, target, theta_p, alpha.mean()))
                q = block.q(xc[b, t])
                y = []
                for h in range(H):
                    sl = slice(h * D, (h + 1) * D)
                    qh = q[sl] / (q[sl].norm() ** 2 + 1e-6).sqrt()
                    kh = k[sl] / (k[sl].norm() ** 2 + 1e-6).sqrt()
                    y.append(_res_mlp(*mc[h], qh))  # y_t = M_mem,c(q_t)  (eq. 90)
                    target = _res_mlp(*mc[h], v[sl])
                    mem[h] = list(_dgd_token(*mem[h], *mc[h], kh, target, cfg.lr_max * eta[h], alpha[h]))
                ys.append(torch.stack(y))  # (H, D)
            y = torch.stack(ys)  # (T, H, D)
            out[b] = block.out(block.out_norm(y).reshape(T, H * D))
    return out


@pytest.mark.parametrize("sizes", [(4, 5), (3, 3), (1, 2)])
def test_block_equals_the_per_token_equations_at_large_chunk_steps(sizes):
    """Main chunk C and projection chunk Cp with Σ_{t∈chunk} θ_t ≥ 2 on both levels."""
    C, Cp = sizes
    block = make(chunk_size=C, proj_chunk_size=Cp, lr_max=0.7, proj_lr=0.6, lr_init=0.95,
                 retention_init=0.9, grad_clip=0)
    x = inputs(t=11)
    with torch.no_grad():  # the chunk totals really are ≥ 2 where the chunk is long enough
        eta = torch.sigmoid(block.eta.bias).mean()
        assert float(0.7 * eta) * max(C, 4) >= 2 or C < 4
        assert float(0.6 * eta) * max(Cp, 5) >= 2 or Cp < 5
    got, _ = block(x)
    assert rel_err(got, per_token_loop(block, x)) < 1e-10


def test_projection_memories_really_modify_themselves():
    block = make(conv_size=0)
    x = inputs(t=8)
    _, state_a = block(x[:, :4])
    _, state_b = block(inputs(t=4, seed=7))
    init = {n: p.expand_as(state_a["proj"].params[n]) for n, p in block.proj_init.items()}
    pa, pb = block.fast_params(state_a), block.fast_params(state_b)
    for n in pa:  # the fast parameters moved, and how depends on the input
        assert rel_err(pa[n], init[n]) > 1e-4 and rel_err(pa[n], pb[n]) > 1e-4
    # the same token after two different prefixes gets different keys and values
    z = l2norm(x[:, None, 5:6])
    read_a = block.proj_memory.read(pa, z)  # (B, P, 1, dim): k, v, e, a
    read_b = block.proj_memory.read(pb, z)
    for i, name in enumerate(("k", "v")):
        assert rel_err(read_a[:, i], read_b[:, i]) > 1e-4, name


@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(0, 11), max_size=3).map(sorted),
       sizes=st.sampled_from([(3, 4), (2, 2), (5, 3)]), adaptive_q=st.booleans(),
       variant=st.sampled_from(["paper", "momentum", "after_write"]))
def test_random_splits_equal_one_pass(cuts, sizes, adaptive_q, variant):
    extra = {"momentum": {"memory_rule": "momentum", "momentum": 0.5},
             "after_write": {"memory_read": "after_write"}, "paper": {}}[variant]
    block = make(chunk_size=sizes[0], proj_chunk_size=sizes[1], adaptive_q=adaptive_q, **extra)
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-10


def test_another_rule_token_by_token_and_gradients():
    block = make(rule=OptimizerRef("momentum", {"lr": 1.0}), self_values=False,
                 memory_rule="momentum", momentum=0.5)
    x = inputs().requires_grad_(True)
    full, _ = block(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = block(x[:, t:t + 1], state)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < 1e-10
    full.square().sum().backward()
    for name, p in block.named_parameters():  # every memory's initial state is learned
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert block.proj_init["W1"].grad.abs().sum() > 0 and block.memory_init["W1"].grad.abs().sum() > 0


def test_variants_change_the_output():
    x = inputs()
    paper = make()(x)[0]
    for extra in ({"memory_rule": "momentum"}, {"memory_read": "after_write"},
                  {"self_values": False}):
        assert rel_err(make(**extra)(x)[0], paper) > 1e-6, extra


def test_surprise_of_every_memory():
    block = make()
    block(inputs())
    s = block.surprise()
    assert set(s) == {"proj_k", "proj_v", "proj_eta", "proj_alpha", "memory"}
    assert all(torch.isfinite(v) and v > 0 for v in s.values())


def test_config_errors():
    def load(**cfg):
        return load_spec({"model": {"dim": 16, "blocks": [{"type": "self-mod-titans", **cfg}]}})

    with pytest.raises(SpecError, match=r"head_dim: heads × head_dim must equal dim"):
        load(heads=2, head_dim=4)
    with pytest.raises(SpecError, match=r"model.blocks\[0\].rule.type: unknown optimizer 'dgdd'"):
        load(rule={"type": "dgdd"})
    with pytest.raises(SpecError, match=r"proj_memory: .*dim_k == dim_v|proj_memory"):
        load(proj_memory={"type": "residual-mlp", "hidden": -1})
    with pytest.raises(SpecError, match=r"momentum: DGD has no momentum"):
        load(momentum=0.5)
    with pytest.raises(SpecError, match=r"memory_read"):
        load(memory_read="later")
