# toolace: `make demo` and `make test` work on a fresh machine (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LLAMA_CPP_PIN := llama-cpp-python==0.3.36
export TOOLACE_HOME ?= $(CURDIR)/.cache/toolace
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install install-cuda install-metal fixtures demo test lint bench stress clean

install: $(STAMP)

# llama-cpp-python compiles from source (~10 min) the first time; pip's wheel cache makes later installs fast.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
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
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install fixtures
	$(BIN)/python bench/run.py

# Long fuzz and adversarial-sampling runs (>= 10,000 inputs each), with hypothesis's example counts printed.
# (The full BFCL validity set on SmolLM2 is `toolace eval`: bench/results/eval_smollm2.json.)
stress: install fixtures
	TOOLACE_STRESS=1 $(BIN)/python -m pytest -q -s --hypothesis-show-statistics \
		tests/test_fuzz.py tests/test_grammar_properties.py tests/test_adversarial.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
