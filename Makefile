# Everything here sets itself up: a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# An editable install has no compiled bytecode, and a confined agent cannot
	# write any: compile it once, as pip does for an installed package
	# (docs/performance.md: it is most of what confinement adds to a start).
	$(BIN)/python -m compileall -q supervisor agents validators
	# mypy cannot follow setuptools' editable finder for mapped folders, so it
	# reads the sources through a capsup/ tree of links that lives in the venv.
	mkdir -p $(VENV)/typecheck/capsup
	for d in supervisor agents validators; do ln -sfn "$(CURDIR)/$$d" $(VENV)/typecheck/capsup/$$d; done
	touch $(STAMP)

demo: $(STAMP)
	rm -rf /tmp/capsup-demo && cp -r examples/workspace /tmp/capsup-demo
	$(BIN)/python -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(open(sys.argv[2]).read())' \
		/tmp/capsup-demo/papers.db examples/papers.sql
	$(BIN)/capsup run --config configs/demo.toml examples/researcher.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	cd $(VENV)/typecheck && MYPYPATH=. $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		-p capsup.supervisor -p capsup.agents -p capsup.validators

# The Prometheus integration test scrapes a running supervisor with a real
# Prometheus server (Debian's package); promtool checks the exposition format.
# The SQL broker's tests start a PostgreSQL cluster of their own, in a
# temporary directory on a free port, with the server binaries of Debian's
# postgresql package; the cluster Debian may create and start plays no part.
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's prometheus (for promtool and the scrape test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "warning: prometheus/promtool missing and cannot be installed here: those tests will skip"; \
	  fi; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql (for the SQL broker's tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends postgresql >/dev/null; \
	  else \
	    echo "warning: PostgreSQL missing and cannot be installed here: its tests will skip"; \
	  fi; }

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/kernel.py
	$(BIN)/python benchmarks/validators.py
	$(BIN)/python benchmarks/protocol.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
