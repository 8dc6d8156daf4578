"""Benchmarks that print figures: `python -m workbench.bench.speed`, `.startup`, `.conv`, `.data`, ..."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run_in_process(module: str, args: list[str]):
    """(the last JSON line `python -m module *args` printed, None), or (None, why it gave none).

    Each contender runs in a fresh process: TensorFlow and PyTorch do not share one well, and a
    first step must not find memory or kernels another contender left behind."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        missing = "ModuleNotFoundError" in out.stderr
        return None, ("not installed" if missing else (out.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(lines[-1]), None
