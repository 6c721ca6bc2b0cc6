"""Mixed precision: every registered block under ``torch.autocast`` (CPU, bfloat16 and
float16) runs forward and backward, keeps its fast state in float32 and stays close
to the float32 model; a few AdamW steps of tiny HOPE and Titans models under bf16
autocast track float32 training (docs/concepts.md, Mixed precision)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nlframe
from nlframe.level import MemoryState
from nlframe.registry import get_registry
from nlframe.spec import load_spec
from nlframe.train import lm_loss
from nlframe_plugins.blocks.common import BoundaryState
from ._helpers import rel_err

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPECS = Path(__file__).resolve().parents[3] / "specs"

# One tiny configuration per registered block (each in an LM with that block alone;
# "lm" is the model of every case). Chunks of 8 over 32 tokens: several writes.
BLOCKS = {
    "attention": 'type = "attention"\nheads = 2\n',
    "mlp": 'type = "mlp"\n',
    "linear-attention": 'type = "linear-attention"\nheads = 2\nchunk_size = 8\nlearned_lr = true\n'
                        'conv_size = 4\n',
    "deltanet": 'type = "deltanet"\nheads = 2\ngate = true\n',
    "titans": 'type = "titans"\nheads = 2\nchunk_size = 8\nmemory = { type = "mlp", hidden = 32 }\n',
    "titans-mal": 'type = "titans"\nheads = 2\nchunk_size = 8\nlayout = "mal"\nwindow = 16\n'
                  'memory = { type = "mlp", hidden = 32 }\n',
    "cms": 'type = "cms"\nchunk_sizes = [8, 4]\nmemory = { type = "mlp", hidden = 64 }\n',
    "cms-nested": 'type = "cms"\nchunk_sizes = [8, 4]\nvariant = "nested"\n'
                  'memory = { type = "mlp", hidden = 64 }\nrule = { type = "sgd", lr = 0.1 }\n',
    "self-mod-titans": 'type = "self-mod-titans"\nheads = 2\nchunk_size = 8\nproj_chunk_size = 8\n'
                       'memory = { type = "residual-mlp", hidden = 16 }\n'
                       'proj_memory = { type = "residual-mlp", hidden = 16 }\n',
    "hope": 'type = "hope"\n[model.blocks.titans]\nheads = 2\nchunk_size = 8\nproj_chunk_size = 8\n'
            'memory = { type = "residual-mlp", hidden = 16 }\n'
            'proj_memory = { type = "residual-mlp", hidden = 16 }\n'
            '[model.blocks.cms]\nchunk_sizes = [8, 4]\nmemory = { type = "mlp", hidden = 64 }\n',
    "hope-attention": 'type = "hope-attention"\nattention = { heads = 2, window = 16 }\n'
                      'cms = { chunk_sizes = [8], memory = { type = "mlp", hidden = 64 } }\n',
}

# Tolerances on the relative error ‖a − b‖/‖b‖ against the fp32 model, in units of the
# autocast dtype's unit roundoff u (bf16: 2^-8 ≈ 3.9e-3, fp16: 2^-11 ≈ 4.9e-4), as
# (logits, parameter gradients). Both skip the first SKIP positions: the first reads of
# a fresh memory can sit near zero before the output RMSNorm (y_1 = θ (k_1·q_1) v_1), an
# ill-conditioning of the fp32 model itself (there a 0.4% fp32 perturbation of linear
# attention's q, k, v moves the full-loss gradient by 24%; its first logit row differs by
# 42u under bf16, the others by 1–3u).
# Measured over 10 seeds at this size, worst of bf16 / fp16: attention, mlp, titans(-mal),
# self-mod-titans, hope(-attention): logits ≤ 1.8u, gradients ≤ 2.6u; cms(-nested) ≤ 0.8u /
# 1.0u (its reads and writes all run in fp32, only its key/value projections round);
# linear-attention ≤ 2.4u / 5.6u, deltanet ≤ 4.6u / 8.4u (later near-zero reads).
# For scale (bf16, seed 0): the titans scan itself run in bf16 gives 6.4u, the
# self-modifying Titans' projection loop in bf16 3.6u, the cms scan in bf16 2.0u.
UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
DEFAULT_TOL = (2.5, 3.5)
TOL = {"cms": (1.5, 2.0), "cms-nested": (1.5, 2.0), "deltanet": (5.0, 10.0),
       "linear-attention": (5.0, 10.0)}
SKIP = 2


def spec(body: str) -> str:
    return f"[model]\ndim = 32\nvocab_size = 64\n[[model.blocks]]\n{body}"


def tokens(t: int = 33, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, t), generator=torch.Generator().manual_seed(seed))


def fast_states(tree) -> list:
    """Every MemoryState / BoundaryState inside a model state."""
    if isinstance(tree, (MemoryState, BoundaryState)):
        return [tree] + fast_states(getattr(tree, "extra", {}))
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in fast_states(v)]
    if isinstance(tree, (list, tuple)):
        return [s for v in tree for s in fast_states(v)]
    return []


def state_dtypes(state) -> set:
    found: set = set()
    for s in fast_states(state):
        s.map(lambda t: found.add(t.dtype) or t)
    return found


def forward_backward(model, x, dtype=None):
    """Logits, fast state and parameter gradients (loss over positions ≥ SKIP)."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, state = model(x[:, :-1])
        loss = F.cross_entropy(logits[:, SKIP:].flatten(0, 1).float(), x[:, SKIP + 1:].flatten())
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logits, state, grads


def test_every_registered_block_is_covered():
    covered = {load_spec(spec(body)).model.config.blocks[0].type for body in BLOCKS.values()}
    assert covered == set(get_registry().names("block")) - {"lm"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_under_autocast_is_close_to_fp32(name, dtype):
    model, x = nlframe.build(spec(BLOCKS[name]), seed=0), tokens()
    ref_logits, ref_state, ref_grads = forward_backward(model, x)
    logits, state, grads = forward_backward(model, x, dtype)
    assert torch.isfinite(logits).all() and torch.isfinite(grads).all()
    assert state_dtypes(ref_state) <= {torch.float32}
    assert state_dtypes(state) == state_dtypes(ref_state)  # fast weights, momenta, pending: fp32
    assert logits.dtype == dtype  # the head ran under autocast
    tol_logits, tol_grads = TOL.get(name, DEFAULT_TOL)
    assert rel_err(logits[:, SKIP:].float(), ref_logits[:, SKIP:]) <= tol_logits * UNIT[dtype]
    assert rel_err(grads, ref_grads) <= tol_grads * UNIT[dtype]


@pytest.mark.parametrize("name", ["titans", "titans-mal", "deltanet", "cms", "cms-nested",
                                  "self-mod-titans", "hope"])
def test_streaming_across_autocast_and_fp32_calls(name):
    """Pieces fed alternately under bf16 autocast and in fp32, carrying the state (fp32
    fast state; conv and KV caches in the compute dtype), match the fp32 one pass."""
    model, x = nlframe.build(spec(BLOCKS[name]), seed=0), tokens(t=21)
    state, outs = None, []
    with torch.no_grad():
        ref, _ = model(x)
        for (lo, hi), on in zip([(0, 5), (5, 13), (13, 21)], [True, False, True]):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
                y, state = model(x[:, lo:hi], state)
            assert state_dtypes(state) == {torch.float32}
            outs.append(y.float())
    tol = TOL.get(name, DEFAULT_TOL)[0] * UNIT[torch.bfloat16]
    assert rel_err(torch.cat(outs, 1)[:, SKIP:], ref[:, SKIP:]) <= tol


def test_scan_upcasts_at_its_boundary():
    """Under autocast ``memory_scan`` equals the fp32 scan of its upcast inputs exactly,
    q, k, v and gates of mixed dtypes included; y and the state come back in fp32."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 4, generator=g) for _ in range(3))
    lr = torch.rand(2, 2, 9, generator=g) * 0.2
    low = {"q": q.bfloat16(), "k": k, "v": v.half(), "lr": lr.bfloat16()}
    opts = dict(memory="mlp", memory_kwargs={"hidden": 8}, chunk_size=3, decay=0.01)
    want, want_state = nlframe.memory_scan(*(low[n].float() for n in "qkv"),
                                           lr=low["lr"].float(), **opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = nlframe.memory_scan(low["q"], low["k"], low["v"], lr=low["lr"], **opts)
        y2, state2 = nlframe.memory_scan(low["q"], low["k"], low["v"], lr=low["lr"],
                                         state=state.to(torch.bfloat16), **opts)
    assert y.dtype == torch.float32 and state_dtypes(state) == {torch.float32}
    assert torch.equal(y, want)
    assert all(torch.equal(state.params[n], want_state.params[n]) for n in want_state.params)
    assert y2.dtype == torch.float32 and state_dtypes(state2) == {torch.float32}


def _tiny(path: str, shrink) -> dict:
    data = tomllib.loads((SPECS / path).read_text())
    data.pop("train", None)
    model = data["model"]
    model.update(dim=32, vocab_size=64)
    shrink(model)
    return data


def _hope(model: dict) -> None:
    block = model["blocks"][0]
    block["repeat"] = 2
    block["titans"].update(heads=2, chunk_size=8, proj_chunk_size=8,
                           memory={"type": "residual-mlp", "hidden": 16},
                           proj_memory={"type": "residual-mlp", "hidden": 16})
    block["cms"].update(chunk_sizes=[8, 16], memory={"type": "mlp", "hidden": 64})


def _titans(model: dict) -> None:
    model["blocks"] = model["blocks"][:2]  # one Titans MAL block and its SwiGLU MLP
    model["blocks"][0].update(heads=2, window=16, chunk_size=8,
                              memory={"type": "mlp", "hidden": 32})


# 5 AdamW steps (lr 3e-3) on sequences repeating a 12-token phrase; the fp32 loss falls
# by ≈ 11%. Measured over 3 seeds, |bf16 − fp32| / fp32 loss at any step: hope-tiny
# ≤ 2.3e-4, titans-tiny ≤ 7.8e-5 (fp16 ≤ 3.6e-5). The tolerance, 2e-3, is ≈ 2% of the
# 5-step decrease.
TRAIN_TOL = 2e-3


@pytest.mark.parametrize("path, shrink", [("hope-tiny.toml", _hope), ("titans-tiny.toml", _titans)],
                         ids=["hope", "titans"])
def test_training_under_bf16_autocast_tracks_fp32(path, shrink):
    base = nlframe.build(_tiny(path, shrink), seed=0)
    phrase = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    seq = phrase.repeat(1, 4)[:, :41]  # (4, 41): every sequence repeats its own phrase
    batch = {"inputs": seq[:, :-1], "targets": seq[:, 1:]}
    losses = {}
    for dtype in (None, torch.bfloat16):
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        run = []
        for _ in range(5):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits, _ = model(batch["inputs"])
                loss = lm_loss(logits, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(float(loss.detach()))
        losses[dtype] = run
    fp32, bf16 = losses[None], losses[torch.bfloat16]
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert fp32[-1] < fp32[0]  # the steps do train
    assert max(abs(a - b) / b for a, b in zip(bf16, fp32)) <= TRAIN_TOL, (fp32, bf16)
