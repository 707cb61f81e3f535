# The two commands a fresh machine needs: `make demo` and `make test`. Both set up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow"

demo: setup
	$(VENV)/bin/craft inspect

bench: setup
	$(PY) bench/watertight.py

clean:
	rm -rf $(VENV) .pytest_cache demo_out bench_out
