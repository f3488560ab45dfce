"""Test checkpoints in Hugging Face format, built on the fly and cached under TOOLACE_HOME/fixtures.

`build_tiny_llama` makes a random-weight Llama-3.1 with the real 128,256-token Llama-3 tokenizer, laid out exactly as
ToolACE-8B is on the hub (config.json with `rope_theta` + `rope_scaling`, BF16 safetensors, tokenizer.json,
tokenizer_config.json carrying the chat template, generation_config.json). `build_smollm2_hf` turns the SmolLM2 GGUF
fixture back into an HF checkpoint. Both are cached by a hash of this file's source and their inputs, built into a
temporary folder beside the cache entry and renamed into place, so an interrupted build never leaves a half cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from toolace.paths import toolace_home

# The Llama-3 pre-tokenizer regex (tiktoken's cl100k-style pattern as Meta ships it for Llama 3).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_BASE_TOKENS = 128_000
N_SPECIAL = 256

# A Llama-3.1-style template: header/eot framing, `tool`/`ipython` results rendered as `ipython` turns, and assistant
# tool calls rendered as Llama-3.1's JSON call form. Kept small on purpose; it is what a fine-tune like ToolACE ships.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] in ['tool', 'ipython'] %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{{- message['content'] | tojson }}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- for tool_call in message['tool_calls'] %}"
    "{%- set call = tool_call['function'] if tool_call.get('function') else tool_call %}"
    "{%- if not loop.first %}{{- '; ' }}{%- endif %}"
    "{{- '{\"name\": \"' + call['name'] + '\", \"parameters\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}"
    "{%- else %}{{- call['arguments'] | tojson }}{%- endif %}"
    "{{- '}' }}"
    "{%- endfor %}"
    "{{- '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def llama31_special_tokens() -> list[str]:
    """The 256 Llama-3.1 special tokens, in id order from 128000."""
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        2: "<|reserved_special_token_0|>",
        3: "<|reserved_special_token_1|>",
        4: "<|finetune_right_pad_id|>",
        5: "<|reserved_special_token_2|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
        10: "<|python_tag|>",
    }
    tokens = [named.get(i, "") for i in range(N_SPECIAL)]
    for i in range(11, N_SPECIAL):
        tokens[i] = f"<|reserved_special_token_{i - 8}|>"  # 11 -> _3 ... 255 -> _247
    return tokens


def _source_hash(*parts: bytes) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


def _file_hash(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def _cached(key: str, build: Callable[[Path], None]) -> Path:
    """Return TOOLACE_HOME/fixtures/<key>, building it with `build(tmp_dir)` first when absent.

    The build goes into a temporary folder beside the entry and is renamed into place, so a killed build leaves no
    half-written entry; when two sessions race, the loser's copy is discarded."""
    cache = toolace_home() / "fixtures" / key
    if (cache / "config.json").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is an ordinary shared folder
    try:
        build(tmp)
        try:
            os.rename(tmp, cache)
        except OSError:
            if not (cache / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _write_llama3_tokenizer(out_dir: Path, tokenizer_model: Path) -> None:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = llama31_special_tokens()
    tok = TikTokenConverter(vocab_file=str(tokenizer_model), pattern=LLAMA3_PATTERN,
                            extra_special_tokens=specials).converted()
    if tok.get_vocab_size(with_added_tokens=True) != N_BASE_TOKENS + N_SPECIAL:
        raise RuntimeError(f"{tokenizer_model}: expected {N_BASE_TOKENS} base tokens")
    bos = specials[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, N_BASE_TOKENS)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                   model_max_length=131072, clean_up_tokenization_spaces=True)
    fast.save_pretrained(out_dir)
    _put_chat_template_in_config(out_dir, CHAT_TEMPLATE)


def _put_chat_template_in_config(out_dir: Path, template: str) -> None:
    """Hub Llama-3.1 checkpoints (ToolACE-8B among them) carry the template inside tokenizer_config.json; newer
    transformers writes chat_template.jinja instead. Mirror the hub layout the converter must read."""
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def _build_tiny_llama(out_dir: Path, tokenizer_model: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=N_BASE_TOKENS + N_SPECIAL, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_scaling={**ROPE_SCALING, "rope_theta": 500000.0}, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Random norms (not all ones) so a converter that mixes up or drops a norm is caught by the logit check.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.05 if "embed" not in name else 1.0)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    # Write config.json as the hub's Llama-3.1 checkpoints have it (rope_theta + rope_scaling at top level), since
    # that is what conversion of ToolACE-8B meets; transformers still loads this layout.
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu", "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 512,
        "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": ROPE_SCALING,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": N_BASE_TOKENS + N_SPECIAL, "license": "apache-2.0",
    }
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    # A model card like a fine-tune's on the hub, so license and base model travel into general.* as for ToolACE-8B.
    (out_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-3.1-8B-Instruct\nlanguage:\n- en\n"
        "tags:\n- function-calling\n---\n# Tiny Llama-3.1 (random weights, toolace test fixture)\n")
    gen = {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": True,
           "temperature": 0.6, "top_p": 0.9}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_llama3_tokenizer(out_dir, tokenizer_model)


def build_tiny_llama(out_dir: Path, tokenizer_model: Path, seed: int = 0) -> Path:
    """A tiny random-weight Llama-3.1 checkpoint (2 layers, hidden 256, real Llama-3 tokenizer), BF16 safetensors.

    Returns the cached folder under TOOLACE_HOME/fixtures; `out_dir` is unused scratch kept for the fixture's
    signature. Callers must treat the returned folder as read-only (copy it before corrupting it)."""
    del out_dir
    key = "tiny-llama-" + _source_hash(str(seed).encode(), _file_hash(tokenizer_model))
    return _cached(key, lambda tmp: _build_tiny_llama(tmp, tokenizer_model, seed))


def _build_smollm2_hf(out_dir: Path, gguf_path: Path, dtype: str) -> None:
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # transformers looks for tokenizer files beside the GGUF; give it a folder holding only the GGUF so it cannot
    # pick up another fixture (the fixtures folder also holds Llama-3's tokenizer.model).
    with tempfile.TemporaryDirectory() as alone:
        (Path(alone) / gguf_path.name).symlink_to(gguf_path.resolve())
        loaded = AutoModelForCausalLM.from_pretrained(alone, gguf_file=gguf_path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(alone, gguf_file=gguf_path.name)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    config = LlamaConfig.from_dict(cfg)
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied model has no lm_head tensor of its own; anything else missing would leave random weights behind.
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.to(getattr(torch, dtype)).save_pretrained(out_dir, safe_serialization=True)
    # The GGUF says `tokenizer.ggml.pre = smollm`: single digits split off, then GPT-2's byte-level regex. That is
    # SmolLM2's hub tokenizer.json; transformers' GGUF loader drops the digit split, so put it back.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.save_pretrained(out_dir)
    if (out_dir / "chat_template.jinja").exists():
        _put_chat_template_in_config(out_dir, (out_dir / "chat_template.jinja").read_text())


def build_smollm2_hf(out_dir: Path, gguf_path: Path, dtype: str = "bfloat16") -> Path:
    """An HF-format SmolLM2-135M-Instruct checkpoint made from the fixture GGUF; cached like the tiny Llama.
    `dtype` is torch's name: bfloat16 (like ToolACE-8B's checkpoint) or float32 (the dequantized values exactly)."""
    del out_dir
    key = "smollm2-hf-" + _source_hash(_file_hash(gguf_path), *([dtype.encode()] if dtype != "bfloat16" else []))
    return _cached(key, lambda tmp: _build_smollm2_hf(tmp, gguf_path, dtype))
