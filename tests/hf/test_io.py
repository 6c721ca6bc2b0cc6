"""model.save_pretrained(dir) → nlframe.hf.from_pretrained(dir): same model, same logits."""

import json
import os

import pytest
import torch

pytest.importorskip("transformers")

import nlframe.hf as hf  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_round_trip(make_tiny, family, tmp_path):
    model = make_tiny(family)
    hf.add_memory(model, "titans", layers=[0], heads=2, chunk_size=8)
    hf.add_memory(model, "cms", layers=[1], chunk_sizes=[4, 8], gate_init=0.5)
    with torch.no_grad():
        for p in hf.memory_parameters(model):
            p.add_(0.01 * torch.randn_like(p))  # trained-looking memory weights
    model.save_pretrained(tmp_path)
    assert sorted(f for f in os.listdir(tmp_path) if "model" in f) == ["model.safetensors"]
    ops = json.loads((tmp_path / "config.json").read_text())["nlframe_hf"]
    assert [(op["op"], op["block"], op["layers"]) for op in ops] == [
        ("add_memory", "titans", [0]), ("add_memory", "cms", [1])]

    loaded = hf.from_pretrained(str(tmp_path)).eval()
    assert type(loaded) is type(model)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(x[:1], **kw), model.generate(x[:1], **kw))


def test_refuses_plain_checkpoints(make_tiny, tmp_path):
    make_tiny("gpt2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no nlframe_hf entry"):
        hf.from_pretrained(str(tmp_path))

