# mammut-search: set-up, tests and the demo. `make test` runs the fast tests, `make test-all` (what CI runs) all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# one FAISS build, chosen by whether an NVIDIA driver answers: faiss-gpu-cu12 with a GPU, faiss-cpu without
FAISS ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
OTHER_FAISS := $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu-cu12)

.PHONY: setup test test-all demo clean

$(BIN)/mammut: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip uninstall --quiet --yes $(OTHER_FAISS) 2>/dev/null || true  # never both builds at once
	$(BIN)/pip install --quiet -e '.[dev,train,$(FAISS)]'
	# the CLIP BPE vocabulary that `mammut convert open-clip` and its tests read as a file (open_clip itself is
	# never imported: its dependencies would bring another torch)
	$(BIN)/pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $(BIN)/mammut

setup: $(BIN)/mammut

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/mammut demo

clean:
	rm -rf $(VENV) .pytest_cache
