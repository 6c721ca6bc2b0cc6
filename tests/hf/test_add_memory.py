"""add_memory: insertion leaves the model unchanged, options are validated, the
memory trains with the base frozen."""

import time

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import nlframe.hf as hf  # noqa: E402
from nlframe.spec import SpecError  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("block,options", [("titans", {"heads": 2, "chunk_size": 8}),
                                           ("cms", {"chunk_sizes": [4, 8]})])
def test_insertion_keeps_logits(make_tiny, family, block, options):
    model = make_tiny(family)
    x = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        before = model(x).logits
        hf.add_memory(model, block, **options)
        after = model(x).logits
    assert torch.equal(before, after)  # gate 0: exactly the original model
    _, layers = hf.decoder_layers(model)
    assert all(isinstance(layer.nl_memory, hf.MemoryLayer) for layer in layers)
    with torch.no_grad():  # a non-zero gate changes the output
        for layer in layers:
            layer.nl_memory.gate.fill_(1.0)
        assert not torch.allclose(model(x).logits, before)


def test_layers_and_freeze(make_tiny):
    model = make_tiny("gpt2")
    base = {n for n, _ in model.named_parameters()}
    hf.add_memory(model, "titans", layers=[-1], freeze_base=True, heads=2)
    assert not hasattr(model.transformer.h[0], "nl_memory")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("transformer.h.1.nl_memory.") for n in trainable)
    assert base == {n for n, _ in model.named_parameters()} - trainable
    assert {id(p) for p in hf.memory_parameters(model)} == {
        id(p) for n, p in model.named_parameters() if n in trainable}
    with pytest.raises(ValueError, match="already has a memory"):
        hf.add_memory(model, "titans", layers=[1], heads=2)


def test_errors(make_tiny):
    model = make_tiny("gpt2")
    with pytest.raises(SpecError, match="bogus: unknown key"):
        hf.add_memory(model, "titans", bogus=1)
    with pytest.raises(SpecError, match="heads"):
        hf.add_memory(model, "titans", heads=3)  # 32 is not a multiple of 3
    with pytest.raises(SpecError, match="unknown block"):
        hf.add_memory(model, "no-such-block")
    with pytest.raises(ValueError, match="out of range"):
        hf.add_memory(model, "titans", layers=[2])
    assert not hasattr(model.transformer.h[0], "nl_memory")  # nothing half-done
    with pytest.raises(ValueError, match="GPT-2 style .* Llama style"):
        hf.add_memory(nn.Linear(4, 4), "titans")


def test_trains_with_base_frozen(make_tiny):
    """Next token = π(token) for a fixed permutation π: the memory layers alone
    (AdamW, base frozen) lower the loss within 50 steps."""
    model = make_tiny("gpt2")
    hf.add_memory(model, "titans", freeze_base=True, heads=2, chunk_size=8)
    model.train()
    opt = torch.optim.AdamW(hf.memory_parameters(model), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(64, generator=gen)
    start, losses = time.perf_counter(), []
    for _ in range(50):
        x = [torch.randint(0, 64, (8,), generator=gen)]
        for _ in range(31):
            x.append(perm[x[-1]])
        x = torch.stack(x, 1)
        loss = model(x, labels=x, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    assert time.perf_counter() - start < 20
    assert all(not p.grad for n, p in model.named_parameters() if "nl_memory" not in n)
