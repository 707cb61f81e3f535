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

# Lint and format check (ruff), then the suite on two workers (pytest-xdist; tests sharing a module
# fixture stay together): its processes are mostly single-threaded; the expensive fixtures are built
# once, in the background from the start, and shared (tests/conftest.py, tests/prebuild.py).
test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	CRAFT_TEST_PREBUILD=1 $(PY) -m pytest -q -ra -n 2 --dist loadgroup

test-fast: setup
	$(PY) -m pytest -q -ra -n 2 --dist loadgroup -m "not slow"

# End to end on the bundled real meshes with captions: preprocess (local Ray) -> train a tiny VAE ->
# pack its latents (craft pack) -> train a tiny diffusion model from the pack (DeepSpeed on CPU, W&B
# offline) -> evaluate both (report.html) -> generate a mesh; then a tiny text model from the same
# pack -> a mesh from a prompt.
# The demo scores the objects it trained on: 9 objects are too few to hold any out.
demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)  # from scratch: a demo folder of an earlier version would be resumed
	$(PY) -m craftsman_platform.corpora demo-list $(DEMO)/meshes
	$(PY) -m craftsman_platform.pipelines.preprocess.tiny_shards demo-captions $(DEMO)/meshes/meshes.txt
	$(VENV)/bin/craft preprocess source.path=$(DEMO)/meshes/meshes.txt source.captions=$(DEMO)/meshes/captions.csv \
	    output_dir=$(DEMO)/data
	$(VENV)/bin/craft train experiment=vae_tiny 'data.train_shards=$(DEMO)/data/shards/*.tar' run_dir=$(DEMO)/runs/vae
	$(VENV)/bin/craft pack kind=latents source=$(DEMO)/data vae_checkpoint=$(DEMO)/runs/vae image_size=64 \
	    output_dir=$(DEMO)/packs/latents
	$(VENV)/bin/craft train experiment=diffusion_tiny data.train_shards=$(DEMO)/packs/latents \
	    model.vae_checkpoint=$(DEMO)/runs/vae run_dir=$(DEMO)/runs/diffusion trainer.max_steps=300
	$(VENV)/bin/craft evaluate checkpoint=$(DEMO)/runs/vae 'data.eval_shards=$(DEMO)/data/shards/*.tar' \
	    output_dir=$(DEMO)/eval/vae
	$(VENV)/bin/craft evaluate checkpoint=$(DEMO)/runs/diffusion 'data.eval_shards=$(DEMO)/data/shards/*.tar' \
	    output_dir=$(DEMO)/eval/diffusion data.max_objects=4 steps=20
	$(PY) -m craftsman_platform.inference.images '$(DEMO)/data/shards/*.tar' $(DEMO)/views duck
	$(VENV)/bin/craft generate checkpoint=$(DEMO)/runs/diffusion 'images=[$(DEMO)/views]' \
	    output_dir=$(DEMO)/generated name=duck depth=7
	$(VENV)/bin/craft train experiment=text_diffusion_tiny data.train_shards=$(DEMO)/packs/latents \
	    model.vae_checkpoint=$(DEMO)/runs/vae run_dir=$(DEMO)/runs/text trainer.max_steps=4000
	$(VENV)/bin/craft generate checkpoint=$(DEMO)/runs/text 'prompt=a yellow rubber duck' \
	    output_dir=$(DEMO)/generated name=duck_from_text depth=7
	@echo
	@echo "demo: shards      $(DEMO)/data/shards  (manifest $(DEMO)/data/manifest/, report $(DEMO)/data/report.html)"
	@echo "      pack        $(DEMO)/packs/latents/pack.json  (VAE latents + 64 px views, for the diffusion run)"
	@echo "      training    $(DEMO)/runs/vae/metrics.jsonl  $(DEMO)/runs/diffusion/metrics.jsonl  (W&B offline: runs/*/wandb)"
	@echo "      evaluation  $(DEMO)/eval/vae/report.html  $(DEMO)/eval/diffusion/report.html"
	@echo "      generated   $(DEMO)/generated/duck.glb  $(DEMO)/generated/duck.obj  (from $(DEMO)/views)"
	@echo "      text model  $(DEMO)/runs/text  ->  $(DEMO)/generated/duck_from_text.glb  ('a yellow rubber duck')"
	@echo "      app         $(VENV)/bin/craft app checkpoint=$(DEMO)/runs/diffusion   (or runs/text: a prompt box)"

bench: setup
	$(PY) bench/watertight.py
	$(PY) bench/preprocess.py
	$(PY) bench/models.py
	$(PY) bench/training.py
	$(PY) bench/inference.py
	$(PY) bench/object_cost.py --baseline 17d1785
	$(PY) bench/refine.py --vae $(DEMO)/runs/vae

clean:
	rm -rf $(VENV) .pytest_cache outputs
