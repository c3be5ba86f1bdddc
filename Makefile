# One command each: `make test` (sets up .venv and runs the suite), `make lint`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test matrix lint typecheck format docs dist bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP) typecheck
	$(PY) runtests.py

# The version matrix (noxfile.py): the cells CI runs; `$(VENV)/bin/nox -s matrix` runs all twelve.
matrix: $(STAMP)
	$(VENV)/bin/nox -s ci

# An sdist and a wheel in dist/, checked by twine. Built without isolation from the test environment's hatchling.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lint: $(STAMP) typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy with django-stubs over the package; the scheduler core (django_rq_scheduled/core) strictly. See pyproject.toml.
typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

# Benchmarks in their own environment: the package plus its peers (rq-scheduler 0.14; rq's scheduler comes with
# rq). Each starts a private redis-server, alternates the systems over its rounds, prints markdown tables and writes
# its results to bench-results/<script>.json: about an hour in all (`--quick` runs one script in a few minutes at most).
BENCH_SCRIPTS := core scale cron_lateness sync_cost reconcile_cost admin_cost runs alerts capacity burst
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e . 'rq-scheduler==0.14.0'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p bench-results
	set -e; for script in $(BENCH_SCRIPTS); do \
		PYTHONPATH=. $(BENCH_VENV)/bin/python -m bench.$$script --json bench-results/$$script.json; \
	done

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .nox .pytest_cache build dist *.egg-info

# The example project: admin, scheduler and worker on a private Redis; Ctrl-C stops it all (see scripts/demo.py).
.PHONY: demo
demo: $(STAMP)
	$(PY) scripts/demo.py
