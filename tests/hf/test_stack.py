"""stack_levels: every MLP becomes a CMS chain from the pretrained weights; the model
is unchanged until the first write, then learns in context."""

import pytest
import torch

pytest.importorskip("transformers")

import nlframe.hf as hf  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_equal_until_the_first_write(make_tiny, family):
    base, model = make_tiny(family), make_tiny(family)
    hf.stack_levels(model, chunk_sizes=[4, 8], rule={"type": "momentum", "lr": 1.0})
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        ref, out = base(x).logits, model(x).logits
    torch.testing.assert_close(out[:, :4], ref[:, :4], atol=1e-5, rtol=1e-5)
    assert (out[:, 4:] - ref[:, 4:]).abs().amax() > 1e-4  # written every 4 tokens from then on
    names = {n for n, _ in model.named_parameters()}
    assert not any(".mlp.c_fc" in n or ".mlp.down_proj" in n for n in names)  # moved into cms.init


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_equals_uncached(make_tiny, family):
    model = hf.stack_levels(make_tiny(family), chunk_sizes=[4, 8], rule={"type": "momentum",
                                                                       "lr": 0.5})
    prompt = torch.randint(0, 64, (1, 11))
    kw = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, use_cache=True, **kw),
                       model.generate(prompt, use_cache=False, **kw))


def test_with_memory_and_round_trip(make_tiny, tmp_path):
    model = hf.stack_levels(make_tiny("gpt2"), chunk_sizes=[4], layers=[1])
    hf.add_memory(model, "titans", heads=2, chunk_size=8, gate_init=0.5)
    model.save_pretrained(tmp_path)
    loaded = hf.from_pretrained(str(tmp_path)).eval()
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_errors(make_tiny):
    model = make_tiny("gpt2")
    with pytest.raises(ValueError, match="variant"):
        hf.stack_levels(model, chunk_sizes=[4], variant="independent")
    with pytest.raises(ValueError, match="chunk_sizes"):
        hf.stack_levels(model, chunk_sizes=[0])
    hf.stack_levels(model, chunk_sizes=[4], layers=[0])
    with pytest.raises(ValueError, match="stacked already"):
        hf.stack_levels(model, chunk_sizes=[4])
