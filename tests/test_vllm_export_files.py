"""`toolace export vllm` without vLLM: the files it writes, and the chat template rendering exactly the prompt toolace
renders (checked here in a sandbox like the one vLLM's renderer uses; tests_vllm/ checks it in vLLM itself)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jinja2.sandbox import ImmutableSandboxedEnvironment

from toolace.cli import main
from toolace.errors import InputError
from toolace.grammars.parser import parse_calls
from toolace.grammars.schema import normalise_tools
from toolace.runtime.history import default_tool_role, to_template_messages
from toolace.runtime.prompt import LLAMA3_TEMPLATE, ChatTemplate, tool_messages
from toolace.serve.vllm.export import export
from toolace.serve.vllm.template import build_template

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# A Llama-3.1-style frame that knows the ipython role and would print its own tool prompt if it saw `tools`.
IPYTHON_FRAME = ("{% if tools %}TOOLS LEAKED{% endif %}{% for m in messages %}<|start_header_id|>"
                 "{{ 'ipython' if m['role'] == 'ipython' else m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                 "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                 "\n\n{% endif %}")
WEATHER = {"name": "Weather Lookup API", "description": "Current weather.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALENDAR = {"name": "calendar.create_event",  # no description: vLLM passes description None
            "parameters": {"type": "object", "properties": {"offset_days": {"type": "integer"},
                                                            "meta": {"type": "object"}}}}
PAST = {"id": "call_9", "type": "function",
        "function": {"name": "calendar.create_event", "arguments": {"offset_days": -3, "meta": {"k": [1.5, None]}}}}


def _vllm_tools(fns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools as vLLM 0.32 hands them to the template: model_dump() of its FunctionDefinition (unset fields None)."""
    return [{"type": "function", "function": {"name": f["name"], "description": f.get("description"),
                                              "parameters": f.get("parameters")}} for f in fns]


def _vllm_render(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers compiles templates
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(messages=messages, tools=tools, add_generation_prompt=True,
                                            bos_token="", eos_token="")


def _toolace_render(frame: str, messages: list[dict[str, Any]], fns: list[dict[str, Any]]) -> str:
    for m in messages:  # toolace takes OpenAI's form: arguments as a JSON string
        for tc in m.get("tool_calls") or []:
            tc["function"]["arguments"] = json.dumps(tc["function"]["arguments"])
    msgs = to_template_messages(tool_messages(messages, normalise_tools(fns) if fns else None),
                                default_tool_role(frame))
    return "".join(s.text for s in ChatTemplate(frame).render(msgs, add_generation_prompt=True))


# (frame, conversation, tools): vLLM's rendering of the export's template equals toolace's own prompt.
SAME_PROMPT = [
    ("chatml, one question", CHATML, [{"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
    ("chatml, system merged", CHATML, [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}], [WEATHER, CALENDAR]),
    ("chatml, empty system", CHATML, [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
     [WEATHER]),
    ("chatml, past call and tool result", CHATML, [
        {"role": "user", "content": "Plan it."}, {"role": "assistant", "content": None, "tool_calls": [PAST]},
        {"role": "tool", "tool_call_id": "call_9", "content": "ok"}], [WEATHER, CALENDAR]),
    ("llama3, past call and tool result", LLAMA3_TEMPLATE, [
        {"role": "user", "content": "Plan it."}, {"role": "assistant", "content": None, "tool_calls": [PAST]},
        {"role": "tool", "tool_call_id": "call_9", "content": "ok"}], [CALENDAR]),
    ("ipython frame: result role, tools hidden", IPYTHON_FRAME, [
        {"role": "user", "content": "Plan it."}, {"role": "assistant", "content": None, "tool_calls": [PAST]},
        {"role": "tool", "tool_call_id": "call_9", "content": "ok"}], [CALENDAR]),
    ("no tools: the frame alone", CHATML, [{"role": "user", "content": "Hi"}], []),
]


@pytest.mark.parametrize(("frame", "messages", "fns"), [r[1:] for r in SAME_PROMPT], ids=[r[0] for r in SAME_PROMPT])
def test_template_renders_toolaces_prompt(frame: str, messages: list[dict[str, Any]],
                                          fns: list[dict[str, Any]]) -> None:
    got = _vllm_render(build_template(frame), json.loads(json.dumps(messages)), _vllm_tools(fns) or None)
    assert got == _toolace_render(frame, json.loads(json.dumps(messages)), fns)
    assert "TOOLS LEAKED" not in got


def test_past_call_rendering_parses_back_even_where_quotes_differ() -> None:
    """Near miss of byte equality: a string with a quote is rendered by Python's repr ("it's"), toolace's renderer
    escapes it ('it\\'s'); both are the call language and parse to the same call."""
    args = {"city": "it's", "n": -1, "nested": [{"a": None}, [True, 2.5]]}
    call = {"id": "c", "type": "function", "function": {"name": WEATHER["name"], "arguments": args}}
    tools = [{"name": WEATHER["name"], "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "n": {"type": "integer"}, "nested": {"type": "array"}}}}]
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    got = _vllm_render(build_template(CHATML), msgs, _vllm_tools(tools))
    past = got.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert [c.as_dict() for c in parse_calls(past, normalise_tools(tools))] == [{"name": WEATHER["name"],
                                                                              "arguments": args}]


def _checkpoint(root: Path, template: str | None) -> Path:
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))
    return root


def test_export_cli_writes_plugin_template_and_serve_script(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "ckpt", CHATML)
    result = CliRunner().invoke(main, ["export", "vllm", str(tmp_path / "out"), "--model", str(model)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    source = Path(__file__).resolve().parent.parent / "serve" / "vllm"
    for shipped, name in (("plugin.py", "toolace_vllm.py"), ("guard.py", "toolace_vllm_guard.py"),
                          ("http.py", "toolace_vllm_http.py")):
        assert (out / name).read_bytes() == (source / shipped).read_bytes()
    assert (out / "toolace.jinja").read_text() == build_template(CHATML)
    serve = out / "serve.sh"
    assert os.access(serve, os.X_OK)
    subprocess.run(["sh", "-n", str(serve)], check=True)
    text = serve.read_text()
    for flag in ("-m vllm.entrypoints.openai.api_server", f"--model {model}", "--tool-call-parser toolace",
                 '--tool-parser-plugin "$HERE"/toolace_vllm.py', '--chat-template "$HERE"/toolace.jinja',
                 "--enable-auto-tool-choice", "--structured-outputs-config '{\"backend\": \"guidance\"}'", '"$@"',
                 "--logits-processors toolace_vllm_guard:ToolaceGuard",
                 "--middleware toolace_vllm_http.ToolaceMiddleware",
                 'export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"', "export TOOLACE_VLLM_NOTES="):
        assert flag in text


def test_serve_script_passes_arguments_through(tmp_path: Path) -> None:
    """serve.sh run with a stand-in Python that prints its argv: the export's flags, then the caller's."""
    done = export(tmp_path / "out", str(_checkpoint(tmp_path / "ckpt", None)), python="/nonexistent")
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$PYTHONPATH"; echo "$TOOLACE_VLLM_NOTES"; for a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "TMPDIR": str(tmp_path), "PYTHONPATH": "/elsewhere"}
    env.pop("TOOLACE_VLLM_NOTES", None)
    path, notes, *argv = subprocess.run([str(done.serve), "--port", "8123", "--host", "127.0.0.1"], check=True,
                                        text=True, capture_output=True, env=env).stdout.splitlines()
    assert path == f"{done.out_dir}:/elsewhere"  # the guard and the middleware import by module name
    assert Path(notes).is_dir() and Path(notes).parent == tmp_path  # a notes folder of this server's own
    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--chat-template") + 1] == str(done.template)
    assert argv[-4:] == ["--port", "8123", "--host", "127.0.0.1"]
    assert argv[argv.index("--logits-processors") + 1] == "toolace_vllm_guard:ToolaceGuard"  # the guard, always
    unguarded = subprocess.run([str(done.serve)], check=True, text=True, capture_output=True,
                               env={**env, "TOOLACE_VLLM_GUARD": "off"}).stdout.splitlines()
    assert "--logits-processors" not in unguarded and "--middleware" in unguarded  # only to measure its cost
    assert done.frame_source.startswith("built-in Llama-3")  # no template in the checkpoint
    assert done.template.read_text() == build_template(LLAMA3_TEMPLATE)


def test_export_refuses_a_file_as_out_dir(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        export(tmp_path / "out", str(tmp_path))


def test_export_cli_reports_an_unreadable_tokenizer_config_in_one_line(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "ckpt", None)
    (model / "tokenizer_config.json").write_text("{not json")
    result = CliRunner().invoke(main, ["export", "vllm", str(tmp_path / "out"), "--model", str(model)])
    assert result.exit_code == 2 and result.output.startswith("Error: cannot read ")
    assert "Traceback" not in result.output
