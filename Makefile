# mammut-search: set-up, tests and the demo. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INDEX ?= data/cache/demo.index

.PHONY: setup test test-all demo clean

$(BIN)/mammut: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,train]'
	touch $(BIN)/mammut

setup: $(BIN)/mammut

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/mammut index build data/demo/images --out $(INDEX)
	$(BIN)/mammut ui --index $(INDEX)

clean:
	rm -rf $(VENV) .pytest_cache
