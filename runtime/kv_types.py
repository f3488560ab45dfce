"""llama.cpp's K/V cache types as toolace offers them (`--kv-type`): a module of its own, with no imports, so the CLI
can list the choices without loading the engine."""

from __future__ import annotations

# name -> (ggml type id, bytes per block, values per block), ggml's own numbers. The quantized caches need flash
# attention (llama.cpp refuses a quantized V cache without it): choosing one switches it on.
KV_TYPES = {"f16": (1, 2, 1), "q8_0": (8, 34, 32), "q4_0": (2, 18, 32)}
DEFAULT_KV_TYPE = "f16"
KV_TYPE_HELP = ("K/V cache type: q8_0 about halves the cache's memory, q4_0 about quarters it; both turn on "
                "llama.cpp's flash attention, which a quantized cache needs (answers may differ in the last bits).")
