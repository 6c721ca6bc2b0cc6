"""Gates left at the scan's default take the rule's own defaults on every backend."""

import pytest
import torch

from nlframe.scan import make_memory, make_objective, make_rule, run_scan

NAMES = {"memory": "mlp", "objective": "l2", "optimizer": "momentum"}


@pytest.mark.parametrize("modes", [dict(read="chunk_start", write="chunk"),
                                   dict(read="after_write", write="token")], ids=str)
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_rule_default_decay_and_momentum_reach_the_chunked_backend(memory, modes):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    kw = {"hidden": 6} if memory == "mlp" else {}
    outs = {}
    for backend in ("reference", "chunked"):
        mem, obj = make_memory(memory, 4, 4, **kw), make_objective("l2")
        rule = make_rule("momentum", decay=0.2, momentum=0.5)
        outs[backend] = run_scan(q, k, v, memory=mem, objective=obj, rule=rule,
                                 names={**NAMES, "memory": memory}, lr=0.3, chunk_size=3,
                                 backend=backend, **modes)
    (y_ref, s_ref), (y, s) = outs["reference"], outs["chunked"]
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for n in s_ref.params:
        torch.testing.assert_close(s.params[n], s_ref.params[n], rtol=1e-10, atol=1e-10)
