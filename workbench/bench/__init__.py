"""Benchmarks that print figures: `python -m workbench.bench.speed`, `.startup`, `.conv`, `.data`, ..."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# glibc's malloc hands blocks of 32 MiB and more back to the kernel when they are freed, and trims
# the top of its heap, so a framework that frees its activations after every step (PyTorch does;
# TensorFlow keeps its memory) takes page faults to get them back on the next: about 1 GiB per
# RegNetY-200MF training step in timm, at batch 32. These tunables keep freed memory for reuse, as
# the jemalloc or TCMalloc that PyTorch's CPU performance tuning guide recommends does. A contender
# named "<name>_tuned" runs with them.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
TUNED = "_tuned"


def split_tuned(contender: str) -> tuple[str, dict[str, str]]:
    """(the contender without its "_tuned" suffix, the environment its process adds)."""
    if not contender.endswith(TUNED):
        return contender, {}
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), KEEP_FREED_MEMORY)))
    return contender[:-len(TUNED)], {"GLIBC_TUNABLES": tunables}


def timed(fn):
    """(wall seconds of `fn()`, what it returned)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def random_batch(batch: int, size: int, seed: int = 0):
    """The benchmarks' input: `batch` random NHWC float32 images in [0, 255] and ImageNet labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"),
            rng.integers(0, 1000, batch))


def parse_contenders(parser, text: str, known) -> list[str]:
    """The comma-separated contenders in `text`; an argparse error naming the valid ones for any other."""
    contenders = text.split(",")
    unknown = sorted(c for c in contenders if split_tuned(c)[0] not in known)
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {', '.join(known)} (each also with the "
                     f"suffix {TUNED})")
    return contenders


def run_in_process(module: str, args: list[str], env: dict[str, str] | None = None):
    """(the last JSON line `python -m module *args` printed, None), or (None, why it gave none).

    Each contender runs in a fresh process (with `env` added to this one's environment):
    TensorFlow and PyTorch do not share one well, and a first step must not find memory or
    kernels another contender left behind."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        missing = "ModuleNotFoundError" in out.stderr
        return None, ("not installed" if missing else (out.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(lines[-1]), None


def run_contender(module: str, contender: str, args: list[str]):
    """`run_in_process(module, ["--one", contender, *args])`, a "_tuned" contender with its environment."""
    name, env = split_tuned(contender)
    return run_in_process(module, ["--one", name, *args], env)
