"""Long-context evaluation streams the input in pieces: memory stays flat with length."""

import json
import subprocess
import sys

PROBE = """
import json, resource, sys, torch
from nlframe.build import build
from nlframe.datasets import open_data
length = int(sys.argv[1])
spec = {"model": {"vocab_size": 256, "dim": 32,
                  "blocks": [{"type": "linear-attention", "heads": 2}]},
        "train": {"seq_len": length}}
torch.manual_seed(0)
model = build(spec).eval()
metrics = open_data("niah").evaluate(model, batch_size=1, seq_len=length, batches=1,
                                     stream_chunk=8192)
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **metrics}))
"""


def _peak_rss(length: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(length)], capture_output=True,
                         text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_flat_from_64k_to_1m_tokens():
    short, long = _peak_rss(65_536), _peak_rss(1_000_000)
    assert abs(long["rss_kb"] - short["rss_kb"]) / short["rss_kb"] < 0.2, (short, long)
    assert 0.0 <= long["accuracy"] <= 1.0
