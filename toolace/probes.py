"""What the machine has to spare: free disk space, available RAM, free GPU memory.

Every check that refuses work for lack of room asks through these functions and nothing else, so a test can fake a
small disk or a small machine by replacing one of them (`monkeypatch.setattr(probes, "free_disk_bytes", ...)`);
callers therefore reach them as `probes.NAME(...)`, never through a `from` import that would bind the real one."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
# ggml's device type enum (ggml-backend.h): CPU, GPU, IGPU, ACCEL; only GPU memory is "VRAM" here.
GGML_DEVICE_TYPE_GPU = 1


def free_disk_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged write may still use on the filesystem holding `path` (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def available_memory_bytes() -> int:
    """RAM a new allocation can get without swapping: Linux's MemAvailable (page cache that can be dropped counts),
    else the free physical pages (macOS and others, an underestimate that errs on the safe side)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_gpu_bytes() -> int | None:
    """Free memory of the first GPU llama.cpp's ggml sees, or None when it sees none (a CPU build, no device).

    Asked of ggml itself (ggml_backend_dev_memory), so it reports the device llama.cpp would offload to. Only called
    when a model is about to be loaded with layers offloaded, after llama.cpp is loaded anyway."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml.*")) + sorted(lib_dir.glob("ggml.*"))
    if not candidates:
        return None
    try:
        ggml = ctypes.CDLL(str(candidates[0]))
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_dev_type.restype = ctypes.c_int
        ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                 ctypes.POINTER(ctypes.c_size_t)]
        for i in range(ggml.ggml_backend_dev_count()):
            dev = ggml.ggml_backend_dev_get(i)
            if ggml.ggml_backend_dev_type(dev) == GGML_DEVICE_TYPE_GPU:
                free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
                ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
                return int(free.value)
    except (OSError, AttributeError):  # an older ggml without the device API: nothing to say
        return None
    return None
