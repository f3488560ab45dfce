"""Every resource limit in one place: name, unit, and why. Code imports these; nothing inlines a bound."""

from __future__ import annotations

# --- tools and schemas -------------------------------------------------------------------------------------------
MAX_TOOLS_FILE_BYTES = 8 * 1024 * 1024  # bytes; a tools file larger than this is not a tool list, it is an attack
MAX_TOOLS = 512  # functions per request; BFCL's largest set is < 50, a 512-way alternation still compiles fast
MAX_SCHEMA_DEPTH = 32  # nesting levels of objects/arrays/anyOf; real tool schemas stay under 8
MAX_ENUM_VALUES = 4096  # alternatives in one enum; each becomes a grammar alternative
MAX_REF_EXPANSION = 4  # times one $ref may be expanded inside itself (bounds recursive schemas)
MAX_NAME_CHARS = 256  # characters in a tool or parameter name
MAX_GRAMMAR_BYTES = 4 * 1024 * 1024  # bytes of generated GBNF; keeps llama.cpp's parser and llguidance bounded
MAX_GRAMMAR_RULES = 50_000  # rules in the generated GBNF, same reason
MAX_GBNF_GROUP_DEPTH = 256  # nested parentheses followed by the left-recursion check; deeper is refused (stack)
MAX_STRING_REPEAT = 4096  # largest {m,n} bound expanded for minLength/maxLength; above it the bound is post-checked
MAX_INT_RANGE_DIGITS = 19  # digits handled by the exact integer-range grammar (int64); wider ranges are post-checked

# --- call text -----------------------------------------------------------------------------------------------------
MAX_WS = 1  # spaces allowed after a separator (',' or ':'); DESIGN.md's `"," " "?`, and no spinning on blanks
MAX_CALL_TEXT_CHARS = 1_000_000  # characters of model output the parser accepts
MAX_LITERAL_DEPTH = 64  # nesting of [..]/{..} the parser follows before refusing (stack safety)

# --- chat templates ------------------------------------------------------------------------------------------------
MAX_TEMPLATE_CHARS = 256 * 1024  # characters in a chat template; Llama-3.1's is ~7 k
MAX_TEMPLATE_OUTPUT_CHARS = 4 * 1024 * 1024  # characters a render may produce
MAX_TEMPLATE_SECONDS = 2.0  # seconds a render may take; a template that loops is stopped
MAX_TEMPLATE_LOOP_STEPS = 1_000_000  # iterations over range() in one render, the sandbox's own bound per range is 100k

# --- decoding ------------------------------------------------------------------------------------------------------
DEFAULT_N_CTX = 8192  # tokens; never the model's 131,072 by default (that KV cache is 16 GiB for an 8B model)
MAX_N_CTX = 131_072  # tokens; Llama-3.1's trained context
DEFAULT_MAX_TOKENS = 512  # tokens generated when the caller does not say
MAX_MAX_TOKENS = 32_768  # tokens; a larger request is refused rather than silently clipped
MAX_TEMPERATURE = 5.0  # above this sampling is noise
MAX_LOGIT_BIAS_ENTRIES = 1024  # tokens biased per request; each costs an indexed add per sampled token
MAX_LOGIT_BIAS = 100.0  # |bias| per token, OpenAI's range: ±100 already bans or forces a token
MAX_FAST_FORWARD_TOKENS = 64  # forced tokens appended in one batch
MASK_IDS_CACHE_ENTRIES = 32  # grammar masks per generation whose token ids are kept (a model fighting the grammar
# revisits a few states: digits, string interiors); usually the smaller side of a mask, at most the whole vocabulary
# as int64 (1 MB at 128k), so <= 32 MB

# --- files ---------------------------------------------------------------------------------------------------------
MAX_GGUF_KV = 1_000_000  # metadata entries in one GGUF; llama.cpp's own files have < 100
MAX_GGUF_TENSORS = 1_000_000  # tensors in one GGUF; an 8B Llama has 292
MAX_GGUF_STRING_BYTES = 64 * 1024 * 1024  # bytes in one GGUF string (chat templates, merges entries are small)
GGML_MAX_DIMS = 4  # dimensions of one tensor (ggml.h)
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own reader refuses headers above 100 MB
HASH_CHUNK_BYTES = 8 * 1024 * 1024  # bytes read per step when hashing model files

# --- conversion ----------------------------------------------------------------------------------------------------
MAX_CHECKPOINT_JSON_BYTES = 16 * 1024 * 1024  # bytes in config.json, tokenizer_config.json, a shard index; real: < 1 MB
MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024  # bytes in tokenizer.json; Llama-3's is 17 MB, the largest known < 40 MB
MAX_MODEL_CARD_BYTES = 4 * 1024 * 1024  # bytes of README.md read for license/base-model metadata; larger cards skipped
MAX_CHECKPOINT_SHARDS = 4096  # safetensors files in one checkpoint; 405B models ship 191
MAX_CHECKPOINT_TENSORS = 1_000_000  # tensors across all shards; same bound as MAX_GGUF_TENSORS
MAX_VOCAB_SIZE = 4 * 1024 * 1024  # tokens; the largest real vocabularies are ~260 k, this only stops absurd configs
MAX_TOKEN_BYTES = 64 * 1024  # bytes in one vocabulary entry (llama.cpp's BPE tokens are < 1 KB)
CONVERT_CHUNK_BYTES = 64 * 1024 * 1024  # bytes of F32 rows converted per step; keeps peak RSS ~ largest tensor read
QUANTIZE_POLL_SECONDS = 0.2  # how often the main thread wakes while llama.cpp quantizes, so Ctrl-C is honoured
GGUF_CHECK_READ_BYTES = 512 * 1024 * 1024  # bytes of GGUF header parsed by the pre-check; Llama-3's header is ~8 MB
CONVERT_MEMORY_HEADROOM_BYTES = 512 * 1024 * 1024  # peak RSS budget of a conversion above its largest tensor (§4)
