"""Quick start: train specs/hope-tiny.toml on the embedded stdlib corpus, then
print validation bits/byte, a sample, how to open TensorBoard, and the measured
time and throughput (the figures the README quotes).

Run through ``./dev.sh train`` (which sets up .venv first). Extra arguments go
to ``nlframe train`` (e.g. ``--steps 50``); ``--resume`` continues a stopped run,
``--overwrite`` replaces a finished one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "hope-tiny.toml"
OUT = ROOT / "runs" / "hope-tiny"


def nlframe(*args: str) -> None:
    cmd = [sys.executable, "-m", "nlframe", *args]
    print("$ nlframe " + " ".join(args), flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode:
        raise SystemExit(result.returncode)


def summary(run: Path, seconds: float) -> str:
    """One line of measured figures from the run's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    speed = [r["perf/tokens_per_s"] for r in rows if "perf/tokens_per_s" in r]
    bpb = [r["eval/bpb"] for r in rows if "eval/bpb" in r]
    minutes, secs = divmod(round(seconds), 60)
    return (f"quick start measured: {minutes} min {secs:02d} s end to end, "
            f"{statistics.median(speed):,.0f} training tokens/s (median of the logged "
            f"intervals), {rows[-1]['step']} steps, validation {bpb[-1]:.3f} bits/byte")


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    nlframe("train", str(SPEC.relative_to(ROOT)), "--out", str(OUT.relative_to(ROOT)), *argv)
    nlframe("eval", str(OUT.relative_to(ROOT)))
    nlframe("generate", str(OUT.relative_to(ROOT)), "--prompt", "def ", "--tokens", "200",
            "--temperature", "0.7")
    try:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_metrics.py"), str(OUT),
                        "--output", str(OUT / "loss.png")], check=True, cwd=ROOT)
    except subprocess.CalledProcessError:
        print("(loss plot skipped: matplotlib is not installed)")
    print(f"\nTensorBoard: .venv/bin/tensorboard --logdir {OUT.relative_to(ROOT)}/tb")
    print(summary(OUT, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
