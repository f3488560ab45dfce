"""What a GGUF's chat template is, read from its header without loading the model: whether it compiles and renders
a conversation in toolace's sandbox (a pull refuses one that does not), which family it belongs to, and whether it
takes a tool list (`toolace show`'s "tool calling" line)."""

from __future__ import annotations

from typing import Any

from toolace.errors import TemplateError

TEMPLATE_KEY = "tokenizer.chat_template"
# Turn markers that name a template family; the first found wins. Data, not code: a new family is a new row.
FAMILIES = (
    ("<|start_header_id|>", "Llama 3"),
    ("<|im_start|>", "ChatML"),
    ("<start_of_turn>", "Gemma"),
    ("[INST]", "Mistral"),
    ("<|user|>", "Phi / Zephyr"),
)
PROBE_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the weather in Paris?"}]


def _variables(source: str) -> set[str]:
    """The names a template reads from its context (`messages`, `tools`, ...), from jinja's own parser."""
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return set(meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(source)))
    except Exception as e:  # a syntax error: ChatTemplate below reports it as the one TemplateError
        raise TemplateError(f"chat template does not compile: {e}") from None


def template_info(kv: dict[str, Any]) -> dict[str, Any]:
    """Summary of the header's chat template; TemplateError when it is there but cannot render a conversation."""
    from ..runtime.history import default_tool_role
    from ..runtime.prompt import LLAMA3_TEMPLATE, ChatTemplate

    source = kv.get(TEMPLATE_KEY)
    if not isinstance(source, str) or not source.strip():
        return {"present": False, "family": "none (toolace uses Llama 3's)", "chars": 0,
                "tool_calling": False, "tool_role": default_tool_role(LLAMA3_TEMPLATE)}
    names = _variables(source)
    ChatTemplate(source).render(PROBE_MESSAGES)  # toolace puts the tools in the system prompt: this must work
    family = next((label for marker, label in FAMILIES if marker in source), "other")
    return {"present": True, "family": family, "chars": len(source),
            "tool_calling": "tools" in names or "tool_calls" in source, "tool_role": default_tool_role(source)}
