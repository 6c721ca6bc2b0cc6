"""Quick start: train specs/hope-tiny.toml on the embedded stdlib corpus, then
print validation bits/byte, a sample, and how to open TensorBoard.

Run through ``./dev.sh train`` (which sets up .venv first). Extra arguments go
to ``nlframe train`` (e.g. ``--steps 50``); ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "hope-tiny.toml"
OUT = ROOT / "runs" / "hope-tiny"


def nlframe(*args: str) -> None:
    cmd = [sys.executable, "-m", "nlframe", *args]
    print("$ nlframe " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str]) -> int:
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
