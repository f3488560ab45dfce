"""Every resource limit in one place: name, unit, and why. Code imports these; nothing inlines a bound.
(Tuning constants that are not limits, e.g. the mask-first rejection rate, stay beside the code they tune.)"""

from __future__ import annotations

# --- tools and schemas -------------------------------------------------------------------------------------------
MAX_TOOLS_FILE_BYTES = 8 * 1024 * 1024  # bytes; a tools file larger than this is not a tool list, it is an attack
MAX_TOOLS = 512  # functions per request; BFCL's largest set is < 50, a 512-way alternation still compiles fast
MAX_SCHEMA_DEPTH = 32  # nesting levels of objects/arrays/anyOf; real tool schemas stay under 8
MAX_ENUM_VALUES = 4096  # alternatives in one enum; each becomes a grammar alternative
MAX_NAME_CHARS = 256  # characters in a tool or parameter name
MAX_GRAMMAR_BYTES = 4 * 1024 * 1024  # bytes of generated GBNF; keeps llama.cpp's parser and llguidance bounded
MAX_GRAMMAR_RULES = 50_000  # rules in the generated GBNF, same reason
MAX_GBNF_GROUP_DEPTH = 256  # nested parentheses followed by the left-recursion check; deeper is refused (stack)
MAX_STRING_REPEAT = 4096  # largest {m,n} bound expanded for minLength/maxLength; above it the bound is post-checked
TOOLSET_CACHE_ENTRIES = 64  # compiled tool sets kept (LRU); a desktop app sends one or a few sets over and over
MAX_INT_RANGE_DIGITS = 19  # digits handled by the exact integer-range grammar (int64); wider ranges are post-checked
RESPONSE_FORMAT_CACHE_ENTRIES = 64  # compiled response_format schemas kept (LRU), as TOOLSET_CACHE_ENTRIES

# --- call text -----------------------------------------------------------------------------------------------------
MAX_WS = 1  # spaces allowed after a separator (',' or ':'); the call language's `"," " "?`, and no spinning on blanks
MAX_CALL_TEXT_CHARS = 1_000_000  # characters of model output the parser accepts
MAX_LITERAL_DEPTH = 64  # nesting of [..]/{..} the parser follows before refusing (stack safety)

# --- chat templates ------------------------------------------------------------------------------------------------
MAX_TEMPLATE_CHARS = 256 * 1024  # characters in a chat template; Llama-3.1's is ~7 k
MAX_TEMPLATE_OUTPUT_CHARS = 4 * 1024 * 1024  # characters a render may produce
MAX_TEMPLATE_SECONDS = 2.0  # seconds a render may take; a template that loops is stopped
MAX_TEMPLATE_LOOP_STEPS = 1_000_000  # iterations over range() in one render, the sandbox's own bound per range is 100k
# Bits of an integer one `*` or `**` in a template may produce. Templates count messages and tokens (64 bits would
# do); `3 ** 100000000` (158 million bits, minutes of CPU at load) is refused before Python computes it.
MAX_TEMPLATE_INT_BITS = 4096
# Characters of a string, or items of a list, one `*` or `+` in a template may build: a value longer than the whole
# allowed output is never needed, and `'x' * 10**10` must be refused before it allocates 10 GB.
MAX_TEMPLATE_VALUE_LEN = MAX_TEMPLATE_OUTPUT_CHARS

# --- decoding ------------------------------------------------------------------------------------------------------
DEFAULT_N_CTX = 8192  # tokens; never the model's 131,072 by default (that KV cache is 16 GiB for an 8B model)
MAX_N_CTX = 131_072  # tokens; Llama-3.1's trained context
DEFAULT_MAX_TOKENS = 512  # tokens generated when the caller does not say
MAX_MAX_TOKENS = 32_768  # tokens; a larger request is refused rather than silently clipped
MAX_TEMPERATURE = 5.0  # above this sampling is noise
MAX_LOGIT_BIAS_ENTRIES = 1024  # tokens biased per request; each costs an indexed add per sampled token
MAX_LOGIT_BIAS = 100.0  # |bias| per token, OpenAI's range: ±100 already bans or forces a token
MAX_PENALTY = 2.0  # |frequency_penalty| and |presence_penalty|, OpenAI's range
MAX_FAST_FORWARD_TOKENS = 64  # forced tokens appended in one batch
# Drafted tokens verified in one decode (forced + prompt lookup, docs/speculative.md): each costs a row of logits
# (n_vocab floats) and its share of the decode; a wrong draft of 8 costs ~2 one-token decodes on 2 CPU cores.
SPEC_MAX_DRAFT_TOKENS = 8
MASK_IDS_CACHE_ENTRIES = 32  # grammar masks per generation whose token ids are kept (a model fighting the grammar
# revisits a few states: digits, string interiors); usually the smaller side of a mask, at most the whole vocabulary
# as int64 (1 MB at 128k), so <= 32 MB

# --- conversation and caches -------------------------------------------------------------------------------------
MAX_REMEMBERED_CALLS = 4096  # tool-call ids whose raw text is kept for exact re-rendering (LRU), ~100 bytes each
MAX_CACHE_FILES = 64  # KV state files kept in the disk prompt cache; oldest (by access) removed beyond this
# The disk prompt cache's default size in bytes is this many tokens of the model's KV state (`cache_max_bytes`,
# `--cache-max-bytes` override it): 4 GiB for Llama-3.1-8B (128 KiB/token), ~8 tool prompts of 4k tokens; ~720 MiB
# for SmolLM2-135M (23 KiB/token). Least recently used state files are removed beyond it.
DEFAULT_CACHE_TOKENS = 32_768
MIN_PREFIX_TOKENS = 64  # prompt prefixes shorter than this are cheaper to recompute than to load from disk

# --- parallel slots (runtime/batch.py, docs/parallel.md) ------------------------------------------------------------
MAX_PARALLEL = 64  # slots in one context; llama.cpp's own bound on sequences (LLAMA_MAX_SEQ) is 256
DEFAULT_SERVE_PARALLEL = 4  # `toolace serve` slots, as llama-server; each holds n_ctx tokens (KV pool: N x n_ctx)
# Seconds a step waits for every active sequence to hand in its next tokens (sampling and grammar work between
# decodes takes ~0.1-2 ms); one that misses it is not waited for again until it submits (a slow stream reader).
STEP_GATHER_SECONDS = 0.01
# exact: a KV stream per slot, so a greedy answer equals the same request alone; fast: one KV pool, one decode per
# step, answers may differ from alone (docs/parallel.md, "Exact and fast batching").
BATCHING_MODES = ("exact", "fast")
DEFAULT_BATCHING = "exact"

# --- HTTP server -----------------------------------------------------------------------------------------------------
MAX_BODY_BYTES = 8 * 1024 * 1024  # bytes per request body; = MAX_TOOLS_FILE_BYTES, the largest legitimate tool list
MAX_STOP_SEQUENCES = 16  # stop strings per request (OpenAI allows 4); each is checked after every token
MAX_STOP_CHARS = 1024  # characters in one stop string
# Requests waiting + running; more get 429 with Retry-After. A waiting request costs a coroutine and its body, so
# the bound is generous: stock BFCL fires 100 concurrent requests and must not see a 429.
DEFAULT_MAX_QUEUE = 128
RETRY_AFTER_SECONDS = 1  # what a 429 tells the client to wait before retrying
DISCONNECT_POLL_SECONDS = 0.5  # seconds between client-disconnect checks while a request waits for the model
SSE_PING_SECONDS = 15  # seconds between SSE keep-alive comments while the first token is awaited
MAX_STORED_RESPONSES = 256  # /v1/responses kept for previous_response_id (LRU); each holds its conversation,
# so the bound is on memory: 256 conversations of a few kB each
MAX_N_CHOICES = 8  # `n` choices per chat request; they run one after another while the client waits
MAX_ALIASES = 16  # extra model names `toolace serve --alias` answers to
# Seconds a client has to send its whole request body once the server read its headers; a client that stalls (the
# slow-body attack: Content-Length 1000, one byte, silence) is answered 408 and its queue place freed.
BODY_READ_SECONDS = 30.0
# Seconds one request may take from admission to its last byte, queue wait included (`--request-timeout`); then 504.
# Generous: a cold 8B model on a laptop CPU writes 512 tokens in a few minutes, n x max_tokens can be 32k tokens.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 600.0
MAX_REQUEST_TIMEOUT_SECONDS = 24 * 3600.0  # a larger deadline is no deadline; refused as a typo
# Threads compiling request tool sets and response formats off the event loop; more requests wait their turn, so
# one request with 512 tools x 4,096-value enums never stalls /health and the other clients.
COMPILE_THREADS = 2
MAX_ALLOWED_HOSTS = 64  # `--allowed-host` names and `--cors-origin` origins, each; a longer list is a config error
MAX_API_KEY_FILE_CHARS = 4096  # characters read from `--api-key-file`; a key is a line, not a document
PARENT_POLL_SECONDS = 0.5  # how often `--parent-pid` is checked; the server exits within this of its parent
# Seconds open connections get to finish once the server is told to stop (their generations are already cancelled),
# so SIGTERM ends the process within ~2 s, as an app stopping its sidecar expects.
SHUTDOWN_GRACE_SECONDS = 1
CORS_MAX_AGE_SECONDS = 600  # how long a browser may cache an allowed preflight

# --- budget and runaway values (docs/budget.md) ---------------------------------------------------------------------
MAX_COMPLETION_BYTES = 16 * 1024  # bytes of one planned shortest completion; a grammar whose shortest call is longer
# cannot be guarded (its calls would not fit a sane max_tokens anyway) and the request is refused in required mode
LOOP_MAX_PERIOD_TOKENS = 32  # longest token cycle recognised as a runaway value (the Lisbon loop's is ~6)
LOOP_MIN_REPEATS = 3  # copies of the cycle before the value is cut back to its first copy
LOOP_MIN_SPAN_TOKENS = 16  # ... and at least this many tokens in all, so short legitimate repeats ("aaa") stay
START_PLAN_CACHE_ENTRIES = 64  # grammars per model whose shortest complete call is kept (one walk per tool)
BYTE_MATCHER_CACHE_ENTRIES = 64  # compiled byte-level grammars the guard copies per request (LRU), as the tool sets
MAX_LOOP_CUTS = 8  # runaway values cut per generation; each costs the tokens it rolled back, this bounds the waste
# A text answer ends once its last lines and sentences are PROSE_LOOP_REPEATS copies in a row of one block of at most
# PROSE_LOOP_MAX_PERIOD of them (on by default, `stop_loops`): three copies in a row are a loop, not an answer. A
# block needs one unit of at least PROSE_LOOP_MIN_CHARS characters, since short lines ("Yes.", "```") repeat
# legitimately.
PROSE_LOOP_REPEATS = 3
PROSE_LOOP_MAX_PERIOD = 8
PROSE_LOOP_MIN_CHARS = 12
PROSE_LOOP_MIN_SPAN_TOKENS = 32  # a phrase going round inside one sentence: its repeats must span this many tokens

# --- structured outputs: numbers a sane length (docs/budget.md, "Sane numbers") -------------------------------------
# An integer whose schema gives no bounds is one a 64-bit client can read: [-2^63, 2^63 - 1]; a one-sided bound gets
# the other side from here. A schema's own minimum/maximum wins (beyond int64 it is post-checked, not narrowed).
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**63 - 1
JSON_NUMBER_INT_DIGITS = 19  # digits before a number's point (int64's width); larger magnitudes use the exponent
JSON_FRACTION_DIGITS = 17  # digits after the point: 17 significant digits identify any double

# --- files ---------------------------------------------------------------------------------------------------------
MAX_GGUF_KV = 1_000_000  # metadata entries in one GGUF; llama.cpp's own files have < 100
MAX_GGUF_TENSORS = 1_000_000  # tensors in one GGUF; an 8B Llama has 292
MAX_GGUF_STRING_BYTES = 64 * 1024 * 1024  # bytes in one GGUF string (chat templates, merges entries are small)
GGML_MAX_DIMS = 4  # dimensions of one tensor (ggml.h)
MAX_KEPT_ARRAY = 1024  # GGUF array values kept in the returned header; longer arrays are checked, only counted
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
# Importance matrices (`toolace imatrix`, eval/imatrix.py, docs/quantize.md).
IMATRIX_DEFAULT_LIMIT = 200  # calibration transcripts by default: ~100k tokens, llama.cpp's usual 100+ chunks of 512
MAX_IMATRIX_TRANSCRIPTS = 100_000  # transcripts one run may take (--limit); BFCL v4 has ~5k questions in all
IMATRIX_CONTEXT_TOKENS = 4096  # tokens of one transcript kept (longer ones are cut): BFCL's longest tool lists fit
# Tokens decoded per llama.cpp batch while measuring: every one of them produces logits (so the last layer's FFN
# sees every token, as llama.cpp's imatrix does), and the logits buffer is this times the vocabulary in floats.
IMATRIX_BATCH_TOKENS = 512
# Batches narrower than this many tokens are not counted, as in llama.cpp's tools/imatrix ("small batches ignored"):
# a transcript's last few tokens would otherwise weigh in with their own, unrepresentative statistics.
IMATRIX_MIN_BATCH_TOKENS = 16
# Peak RSS budget of a conversion above its largest tensor (docs/design.md, "Conversion").
CONVERT_MEMORY_HEADROOM_BYTES = 512 * 1024 * 1024

# --- the tool loop (toolace.agent) ---------------------------------------------------------------------------------
DEFAULT_MAX_STEPS = 8  # model turns that call tools before a run stops without an answer
MAX_STEPS = 100  # upper bound on max_steps; a loop longer than this is a model stuck calling the same tool
TOOL_CALL_SECONDS = 60.0  # seconds one tool call (Python or MCP) may run; then the model gets a timeout error result
TOOL_CALL_GRACE_SECONDS = 1.0  # seconds past a call's limit before the loop stops waiting for a tool that ignores it
MAX_TOOL_RESULT_CHARS = 8_000  # characters of one result fed back (~2k tokens: two fit the default 8k context);
# longer results are cut, with a note the model sees
MAX_TOOL_WORKERS = 8  # calls of one step run at once; more wait for a free worker
# Seconds a typed answer (approval, tool result, chat line) is waited for between checks for a signal: SIGTERM or
# Ctrl-C landing just before a blocking read would otherwise wait for the next typed line (a stopped sidecar hangs).
PROMPT_POLL_SECONDS = 0.2
MCP_START_SECONDS = 30.0  # seconds an MCP server has to start, answer initialize and list its tools
MCP_CLOSE_SECONDS = 10.0  # seconds closing all servers may take (the SDK itself: stdin close, 2 s, SIGTERM, 2 s, KILL)
MAX_MCP_CONFIG_BYTES = 1024 * 1024  # bytes in an mcpServers config file; real ones are < 10 KB
MAX_MCP_SERVERS = 32  # servers in one config; each is a process
MAX_MCP_TOOL_PAGES = 100  # tools/list pages followed per server; a server that pages forever is cut off here
MAX_MCP_STDERR_CHARS = 2_000  # characters of a failed server's stderr quoted in the error message

# --- remote servers (toolace.remote, docs/scale-out.md) ------------------------------------------------------------
REMOTE_TIMEOUT_SECONDS = 600.0  # seconds one remote request may take; a cold 8B on CPU answers 512 tokens in minutes
# Seconds a vLLM truncation note (serve/vllm/meta.py) waits for its request's response; one whose client left is
# then removed, so the notes folder holds at most the notes of the last ten minutes' cut requests (empty files).
VLLM_NOTE_SECONDS = 600.0

# --- the model store and pulls (convert/store.py, convert/pull_gguf.py, docs/models.md) ------------------------------
MAX_MODEL_NAME_CHARS = 64  # characters in a store name (`--name`); a file name part, and a column of `toolace list`
MAX_GGUF_PARTS = 256  # files of one split GGUF (-00001-of-0000N); the largest published models ship < 50
MAX_REPO_FILES = 100_000  # files listed for one hub repo before toolace stops reading the listing
# Free disk space a pull keeps beyond the bytes it still has to download: the registry, logs, and the rest of the
# machine must still be able to write when the model has landed.
PULL_FREE_SPACE_MARGIN_BYTES = 512 * 1024 * 1024
# `pull --max-ram` reads one GGUF header from the hub before choosing (convert/pick_quant.py): the first bytes of the
# file, with one Range request. Llama-3's header is ~8 MB (its 128 k-token vocabulary), the largest known ~20 MB.
GGUF_HEADER_PROBE_BYTES = 32 * 1024 * 1024
HUB_PROBE_TIMEOUT_SECONDS = 60.0  # seconds that header read may take
# RAM left free beyond a model's memory estimate (runtime/memory.py) when deciding whether it may load: the estimate
# is within ~15% of the measured resident size, and the rest of the machine must keep running.
MEMORY_MARGIN_BYTES = 256 * 1024 * 1024
