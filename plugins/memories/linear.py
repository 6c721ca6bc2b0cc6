"""Linear associative memory ``M_W(x) = W x``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlframe.interfaces import Memory, Params


class LinearMemory(Memory):
    """Linear memory ``y = W x`` with ``W: (Dv, Dk)`` (the matrix memory of linear
    attention and DeltaNet, arXiv 2406.06484; Titans arXiv 2501.00663 §3.1 with one layer).

    Initial parameters: ``W_0 = 0`` (an empty memory), so a fresh scan reads zeros
    until something is written. A model learns ``W_0`` by passing ``params`` to
    :func:`nlframe.initial_state`. No options.
    """

    structure = "linear"

    def __init__(self, dim_k: int, dim_v: int, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"memory 'linear' takes no options, got {sorted(kwargs)}")
        if int(dim_k) < 1 or int(dim_v) < 1:
            raise ValueError(f"memory 'linear': dim_k and dim_v must be >= 1, got {dim_k}, {dim_v}")
        super().__init__(dim_k, dim_v)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.dim_v, self.dim_k)}

    def init_params(self, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        return {"W": torch.zeros(self.dim_v, self.dim_k, dtype=dtype, device=device)}

    def read(self, params: Params, x: Tensor) -> Tensor:
        # W (*lead, Dv, Dk), x (*lead, N, Dk) -> (*lead, N, Dv)
        return x @ params["W"].transpose(-1, -2)

    def layer_inputs(self, params: Params, x: Tensor) -> dict[str, Tensor]:
        """``{"W": x}``: the one weight matrix reads the key itself."""
        return {"W": x}
