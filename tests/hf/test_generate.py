"""The memory's fast state rides in the generation cache: cached generation equals
recomputing the whole sequence every step."""

import pytest
import torch

pytest.importorskip("transformers")

import nlframe.hf as hf  # noqa: E402

CHUNK = 8


def with_memory(make_tiny, family, block="titans", **options):
    model = make_tiny(family)
    options = options or {"heads": 2, "chunk_size": CHUNK}
    hf.add_memory(model, block, **options)
    with torch.no_grad():  # open the gates so that the memory matters
        for layer in hf.decoder_layers(model)[1]:
            layer.nl_memory.gate.fill_(1.0)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_cached_equals_uncached(make_tiny, family):
    model = with_memory(make_tiny, family)
    prompt = torch.randint(0, 64, (1, 2 * CHUNK + 3))  # longer than a chunk, not a multiple
    kw = dict(max_new_tokens=64, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert cached.shape == (1, prompt.shape[1] + 64)
    assert torch.equal(cached, uncached)
    base = make_tiny(family).generate(prompt, use_cache=True, **kw)
    assert not torch.equal(cached, base)  # the memory changed the continuation


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("block,options", [("titans", {"heads": 2, "chunk_size": CHUNK}),
                                           ("cms", {"chunk_sizes": [4, 8]})])
def test_pieces_through_the_cache_equal_one_pass(make_tiny, family, block, options):
    """A scan of [x1; x2] equals x1 then x2, for splits inside and at chunk edges."""
    model = with_memory(make_tiny, family, block, **options)
    x = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        for cuts in ([5, 8, 9, 21, 30], [16, 17, 30], list(range(1, 31))):
            out, cache, lo = [], None, 0
            for hi in cuts:
                res = model(x[:, lo:hi], cache=cache, use_cache=True)
                out.append(res.logits)
                cache, lo = res.cache, hi
            torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)
            assert cache.nlframe_states.seen == {(0, "nl_memory"): 30, (1, "nl_memory"): 30}


def test_fresh_cache_fresh_state(make_tiny):
    model = with_memory(make_tiny, "gpt2")
    x = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        a = model(x, use_cache=True).logits
        model(x, use_cache=True)  # another sequence in between
        b = model(x, use_cache=True).logits
        res = model(x[:, :12], use_cache=True)
        res.cache.reset()  # a reset cache starts the memory afresh too
        c = model(x, cache=res.cache, use_cache=True).logits
    assert torch.equal(a, b) and torch.equal(a, c)


def test_beam_search_reorders_the_state(make_tiny):
    model = with_memory(make_tiny, "gpt2")
    prompt = torch.randint(0, 64, (2, CHUNK + 3))
    kw = dict(max_new_tokens=12, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, use_cache=True, **kw),
                       model.generate(prompt, use_cache=False, **kw))


def test_cropped_cache_is_refused(make_tiny):
    model = with_memory(make_tiny, "gpt2")
    x = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        res = model(x, use_cache=True)
        res.cache.crop(-3)
        with pytest.raises(RuntimeError, match="cannot be rolled back"):
            model(x[:, 9:], cache=res.cache, use_cache=True)
