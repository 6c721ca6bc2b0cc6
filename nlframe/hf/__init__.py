"""Nested-learning levels in Hugging Face causal LMs (``pip install nlframe[hf]``).

* :func:`add_memory` — a memory block (``titans``, ``cms``, …) as a gated residual
  layer after chosen decoder layers; its fast state rides in the generation cache;
* :func:`stack_levels` — every MLP becomes a CMS chain started from the pretrained MLP;
* :func:`from_pretrained` — reload a model saved with ``model.save_pretrained(dir)``.
"""

from .cache import FastStates, fast_states
from .io import from_pretrained
from .memory import MemoryLayer, add_memory, memory_parameters
from .models import decoder_layers
from .stack import StackedMLP, stack_levels

__all__ = ["add_memory", "stack_levels", "StackedMLP", "from_pretrained", "memory_parameters", "MemoryLayer",
           "FastStates", "fast_states", "decoder_layers"]
