"""Scale-out on vLLM (docs/scale-out.md): `toolace export vllm` writes a tool-parser plugin, the ToolACE chat
template and a serve script, so vLLM enforces and parses toolace's call language."""
