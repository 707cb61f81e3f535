# The two commands a fresh machine needs: `make demo` and `make test`. Both set up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
DEMO := outputs/demo

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow"

# Preprocess the bundled real meshes (two of them malformed) into shards on a local Ray.
demo: setup
	mkdir -p $(DEMO)
	$(PY) -m pipelines.corpora demo-list > $(DEMO)/meshes.txt
	$(VENV)/bin/craft preprocess source.path=$(DEMO)/meshes.txt output_dir=$(DEMO)/data
	@echo "demo: shards in $(DEMO)/data/shards, manifest $(DEMO)/data/manifest.parquet"

bench: setup
	$(PY) bench/watertight.py
	$(PY) bench/preprocess.py

clean:
	rm -rf $(VENV) .pytest_cache outputs
