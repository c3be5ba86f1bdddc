# One command each: `make test` (sets up .venv and runs the suite), `make lint`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint format docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) runtests.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

# The example project: admin, scheduler and worker on a private Redis; Ctrl-C stops it all (see scripts/demo.py).
.PHONY: demo
demo: $(STAMP)
	$(PY) scripts/demo.py
