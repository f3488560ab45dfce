"""A Hugging Face byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) as GGUF tokenizer metadata.

llama.cpp does not run tokenizer.json; it re-implements each known pre-tokenizer under a name (`tokenizer.ggml.pre`).
Writing the wrong name gives a model that tokenizes differently from its training, silently. So the name is chosen by
matching the pre-tokenizer's exact content against the ones we know llama.cpp implements, and anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from toolace.errors import ModelFileError
from toolace.limits import MAX_TEMPLATE_CHARS, MAX_TOKEN_BYTES, MAX_TOKENIZER_JSON_BYTES, MAX_VOCAB_SIZE

from .checkpoint import read_json

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Pre-tokenizer pipelines (as flattened (type, settings) steps) and the llama.cpp pre-tokenizer implementing each.
KNOWN_PRE_TOKENIZERS: dict[str, tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]] = {
    "llama-bpe": (("Split", (("regex", LLAMA3_REGEX), ("behavior", "Isolated"), ("invert", False))),
                  ("ByteLevel", (("use_regex", False),))),
    "smollm": (("Digits", (("individual_digits", True),)), ("ByteLevel", (("use_regex", True),))),
    "gpt2": (("ByteLevel", (("use_regex", True),)),),
}
# Token texts llama.cpp treats as end-of-turn / end-of-message; written explicitly so no heuristic is needed.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
EOM_TEXTS = ("<|eom_id|>",)
# Added tokens shaped like these are control tokens even when not flagged special (llama.cpp's rule, simplified).
_LOOKS_SPECIAL = re.compile(r"^<\|.*\|>$|^<(?:s|/s|pad|unk|mask|bos|eos)>$")


@dataclass
class TokenizerMeta:
    """Everything the GGUF `tokenizer.*` keys carry."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/eot/eom/pad/unk -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | list[dict[str, str]] | None = None  # a list is [{"name", "template"}], "default" first

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
                  "eom": writer.add_eom_token_id, "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id}
        for kind, token_id in self.special_ids.items():
            adders[kind](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def _steps(pre: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """Flatten a tokenizers pre_tokenizer into comparable (type, settings) steps."""
    if pre is None:
        return ()
    if not isinstance(pre, dict):
        raise ModelFileError("tokenizer.json: pre_tokenizer is not an object")
    kind = pre.get("type")
    if kind == "Sequence":
        subs = pre.get("pretokenizers")
        if not isinstance(subs, list):
            raise ModelFileError("tokenizer.json: pre_tokenizer Sequence without a list")
        return tuple(step for sub in subs for step in _steps(sub))
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String")) if isinstance(pattern, dict) else None
        return (("Split", (("regex", regex), ("behavior", pre.get("behavior")), ("invert", pre.get("invert")))),)
    if kind == "ByteLevel":
        # add_prefix_space=True would prepend a space llama.cpp does not add; make it part of the signature.
        settings: tuple[tuple[str, Any], ...] = (("use_regex", pre.get("use_regex", True)),)
        if pre.get("add_prefix_space"):
            settings += (("add_prefix_space", True),)
        return (("ByteLevel", settings),)
    if kind == "Digits":
        return (("Digits", (("individual_digits", pre.get("individual_digits", False)),)),)
    return ((str(kind), ()),)


def detect_pre(tok: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for this tokenizer.json, or a ModelFileError saying why there is none."""
    if tok.get("normalizer") is not None:
        raise ModelFileError("tokenizer.json: has a normalizer; llama.cpp's byte-level BPE applies none, so this "
                             "tokenizer cannot be reproduced")
    steps = _steps(tok.get("pre_tokenizer"))
    for name, signature in KNOWN_PRE_TOKENIZERS.items():
        if steps == signature:
            return name
    shown = ", ".join(kind for kind, _ in steps) or "none"
    raise ModelFileError(f"tokenizer.json: pre-tokenizer ({shown}) is not one llama.cpp implements that toolace "
                         f"recognises ({', '.join(KNOWN_PRE_TOKENIZERS)}); refusing rather than tokenizing differently")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _template_special(post: Any) -> tuple[bool, bool, str | None]:
    """(adds a token first, adds a token last, the first one's text) from a TemplateProcessing post-processor."""
    if not isinstance(post, dict):
        return False, False, None
    if post.get("type") == "Sequence":
        for sub in post.get("processors") or []:
            found = _template_special(sub)
            if found[0] or found[1]:
                return found
        return False, False, None
    if post.get("type") != "TemplateProcessing" or not isinstance(post.get("single"), list) or not post["single"]:
        return False, False, None
    single = post["single"]
    first, last = single[0], single[-1]
    first_text = first["SpecialToken"].get("id") if isinstance(first, dict) and "SpecialToken" in first else None
    adds_last = isinstance(last, dict) and "SpecialToken" in last and len(single) > 1
    return first_text is not None, adds_last, first_text


def read_tokenizer(root: Path, config: dict[str, Any], vocab_size: int) -> TokenizerMeta:
    """Build GGUF tokenizer metadata from `root`'s tokenizer files for a model with `vocab_size` embedding rows."""
    path = root / "tokenizer.json"
    if not path.is_file():
        sentencepiece = (root / "tokenizer.model").exists()
        hint = " (only a SentencePiece tokenizer.model, which is not supported)" if sentencepiece else ""
        raise ModelFileError(f"{root}: tokenizer.json is missing{hint}")
    tok = read_json(path, MAX_TOKENIZER_JSON_BYTES)
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ModelFileError(f"tokenizer.json: tokenizer model {kind!r} is not supported (only byte-level BPE)")
    pre = detect_pre(tok)
    tok_cfg = read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    if not isinstance(tok_cfg, dict):
        raise ModelFileError("tokenizer_config.json: not a JSON object")

    if not 0 < vocab_size <= MAX_VOCAB_SIZE:
        raise ModelFileError(f"config.json: vocab_size {vocab_size} is outside 1..{MAX_VOCAB_SIZE}")
    by_id: dict[int, str] = {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ModelFileError("tokenizer.json: model.vocab is not an object")
    added = tok.get("added_tokens") or []
    if not isinstance(added, list):
        raise ModelFileError("tokenizer.json: added_tokens is not a list")
    added_kind: dict[int, int] = {}
    entries = [(text, tid, None) for text, tid in vocab.items()]
    entries += [(a.get("content"), a.get("id"), a) for a in added if isinstance(a, dict)]
    for text, tid, entry in entries:
        if not isinstance(text, str) or not isinstance(tid, int) or isinstance(tid, bool):
            raise ModelFileError(f"tokenizer.json: vocabulary entry {text!r} -> {tid!r} is not text -> id")
        if not 0 <= tid < vocab_size:
            raise ModelFileError(f"tokenizer.json: token {text!r} has id {tid}, outside the model's vocab_size "
                                 f"{vocab_size}")
        if _utf8(text, "token") > MAX_TOKEN_BYTES:
            raise ModelFileError(f"tokenizer.json: token id {tid} is over {MAX_TOKEN_BYTES} bytes")
        by_id[tid] = text
        if entry is not None:
            special = bool(entry.get("special")) or bool(_LOOKS_SPECIAL.match(text))
            added_kind[tid] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    tokens, types = [], []
    for tid in range(vocab_size):
        if tid in by_id:
            tokens.append(by_id[tid])
            types.append(added_kind.get(tid, gguf.TokenType.NORMAL))
        else:  # embedding rows beyond the tokenizer: placeholders, as llama.cpp's converter writes them
            tokens.append(f"[PAD{tid}]")
            types.append(gguf.TokenType.USER_DEFINED)
    text_to_id = {text: tid for tid, text in by_id.items()}

    meta = TokenizerMeta(pre=pre, tokens=tokens, token_types=[int(t) for t in types],
                         merges=_merges(model.get("merges")))
    _special_ids(meta, tok_cfg, config, root, text_to_id, vocab_size)
    adds_first, adds_last, first_text = _template_special(tok.get("post_processor"))
    meta.add_bos = tok_cfg["add_bos_token"] if isinstance(tok_cfg.get("add_bos_token"), bool) else adds_first
    meta.add_eos = tok_cfg["add_eos_token"] if isinstance(tok_cfg.get("add_eos_token"), bool) else adds_last
    if adds_first and first_text in text_to_id and "bos" not in meta.special_ids:
        meta.special_ids["bos"] = text_to_id[first_text]
    _chat_templates(meta, tok_cfg, root)
    return meta


def _merges(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        raise ModelFileError("tokenizer.json: model.merges is not a list")
    out = []
    for m in raw:
        if isinstance(m, str) and m.count(" ") == 1:
            out.append(m)
        elif (type(m) is list and len(m) == 2 and type(m[0]) is str and type(m[1]) is str  # noqa: E721 - hot loop
              and " " not in m[0] and " " not in m[1]):
            out.append(f"{m[0]} {m[1]}")
        else:
            raise ModelFileError(f"tokenizer.json: merge {m!r} is not a pair of tokens")
    _utf8("\n".join(out), "merges")  # one pass over all of them; a lone surrogate anywhere fails it
    return out


def _special_ids(meta: TokenizerMeta, tok_cfg: dict[str, Any], config: dict[str, Any], root: Path,
                 text_to_id: dict[str, int], vocab_size: int) -> None:
    gen = read_json(root / "generation_config.json") if (root / "generation_config.json").is_file() else {}
    for kind in ("bos", "eos", "pad", "unk"):
        text = _token_text(tok_cfg.get(f"{kind}_token"))
        if text is not None:
            if text not in text_to_id:
                raise ModelFileError(f"tokenizer_config.json: {kind}_token {text!r} is not in the vocabulary")
            meta.special_ids[kind] = text_to_id[text]
            continue
        for source in (gen, config):
            value = source.get(f"{kind}_token_id") if isinstance(source, dict) else None
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and not isinstance(value, bool):
                meta.special_ids[kind] = value
                break
    for kind, texts in (("eot", EOT_TEXTS), ("eom", EOM_TEXTS)):
        for text in texts:
            if text in text_to_id:
                meta.special_ids[kind] = text_to_id[text]
                break
    for kind, token_id in meta.special_ids.items():
        if not 0 <= token_id < vocab_size:
            raise ModelFileError(f"{kind} token id {token_id} is outside the vocabulary (size {vocab_size})")


def _chat_templates(meta: TokenizerMeta, tok_cfg: dict[str, Any], root: Path) -> None:
    raw = tok_cfg.get("chat_template")
    jinja = root / "chat_template.jinja"
    if raw is None and jinja.is_file():
        if jinja.stat().st_size > 4 * MAX_TEMPLATE_CHARS:  # UTF-8 is at most 4 bytes a character
            raise ModelFileError(f"chat_template.jinja: over {MAX_TEMPLATE_CHARS} characters")
        try:
            raw = jinja.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError("chat_template.jinja: not UTF-8") from None
    if isinstance(raw, list):  # [{"name": ..., "template": ...}]; gguf writes "default" as the main template
        for item in raw:
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and isinstance(item.get("template"), str)):
                raise ModelFileError("tokenizer_config.json: chat_template list entry is not {name, template}")
        templates = [item["template"] for item in raw]
    elif isinstance(raw, str):
        templates = [raw]
    elif raw is None:
        return
    else:
        raise ModelFileError("tokenizer_config.json: chat_template is neither text nor a list of templates")
    for template in templates:
        if len(template) > MAX_TEMPLATE_CHARS:
            raise ModelFileError(f"chat template is {len(template)} characters, over {MAX_TEMPLATE_CHARS}")
        _utf8(template, "chat template")
    meta.chat_template = raw


def _utf8(text: str, what: str) -> int:
    """Byte length of `text` in UTF-8; JSON can carry lone surrogates, which no GGUF string may hold."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ModelFileError(f"tokenizer: {what} {text[:40]!r} is not valid Unicode (lone surrogate)") from None
