# Everything here sets itself up: a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# mypy cannot follow setuptools' editable finder for mapped folders, so it
	# reads the sources through a capsup/ tree of links that lives in the venv.
	mkdir -p $(VENV)/typecheck/capsup
	for d in supervisor agents validators; do ln -sfn "$(CURDIR)/$$d" $(VENV)/typecheck/capsup/$$d; done
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/capsup run --config configs/demo.toml examples/researcher.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	cd $(VENV)/typecheck && MYPYPATH=. $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		-p capsup.supervisor -p capsup.agents -p capsup.validators

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/kernel.py
	$(BIN)/python benchmarks/validators.py
	$(BIN)/python benchmarks/protocol.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
