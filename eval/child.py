"""A measured step in a fresh interpreter: `toolace.<module>.<fn>(*args)`, its wall time and its own peak RSS.

Benchmarks measure memory this way because a parent's figure would mix in whatever the parent had loaded (other
models, numpy buffers). The function may return a dict of its own figures; they are merged into the result."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from toolace.errors import ToolaceError

_CHILD = """
import importlib, json, resource, sys, time
module = importlib.import_module("toolace." + sys.argv[1])
fn = getattr(module, sys.argv[2]) if sys.argv[2] else (lambda: None)
start = time.perf_counter()
out = fn(*sys.argv[3:])
seconds = time.perf_counter() - start
try:  # Linux: this image's own high-water mark (ru_maxrss would include the parent's, inherited across exec)
    peak = next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
figures = out if isinstance(out, dict) else {}
print(json.dumps({**figures, "seconds": seconds, "peak_rss_bytes": peak}))
"""


def measured(module: str, fn: str, *args: str) -> dict[str, Any]:
    """Run toolace.<module>.<fn>(*args) (`fn` empty: the import alone) in a fresh interpreter; its figures, time
    and peak RSS. A failure is one ToolaceError with the child's last line."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, module, fn, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolaceError(f"{module}.{fn or 'import'} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
