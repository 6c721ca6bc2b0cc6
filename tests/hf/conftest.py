"""Tiny random GPT-2 / Llama causal LMs (no downloads) for the nlframe.hf tests."""

import pytest
import torch


def tiny_model(family: str, seed: int = 0):
    """An eval-mode causal LM of width 32 with 2 layers and a 64-token vocabulary."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                         n_positions=256, bos_token_id=None, eos_token_id=None)
    else:
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=2, max_position_embeddings=256,
                                          bos_token_id=None, eos_token_id=None)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def make_tiny():
    return tiny_model
