"""HF checkpoint -> GGUF conversion, llama.cpp quantization, the GGUF pre-check, and the local model store.

Import from the modules (`toolace.convert.convert.convert`, `.quantize.quantize`, `.pull.pull`, `.info.info`,
`.gguf_check.check_gguf`, `.store.lookup`); nothing is re-exported here, because a function re-exported under its
own module's name (`convert`, `quantize`, ...) is shadowed by the submodule once that is imported, and eager imports
would load numpy and gguf for every CLI command."""
