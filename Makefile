# lambexp — every target installs what it needs first (a .venv in this folder).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/adam_vs_lamb.yaml
SEEDS ?= 3

.PHONY: install install-test run reproduce-all test test-fast test-install docs bench bench-optim bench-stack bench-watch bench-models profile gpu-pack tensorboard clean

# Two stamps, one per install: running needs lambexp alone; the tests and benchmarks also need the
# test extras (Ray, submitit, Lightning, Transformers, timm, JAX, optax...), which a first run should
# not wait for. The test install holds the run install, so it stamps both; `make test` after `make run`
# still installs the extras, as its own stamp is missing.
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check

install: $(VENV)/.installed-run  ## create .venv and install lambexp (editable): what running needs

install-test: $(VENV)/.installed-test  ## create .venv and install lambexp (editable) with its test extras

$(VENV)/.installed-run: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: install  ## the main job: fetch MNIST if needed, run $(CONFIG) (Adam vs LAMB)
	$(VENV)/bin/lambexp run $(CONFIG)

reproduce-all: install  ## the post's experiments (E1-E6), $(SEEDS) seeds (default 3), then runs/reproduce/REPORT.md
	$(VENV)/bin/lambexp reproduce --seeds $(SEEDS)

test: install-test  ## lint, the layers' import contract (pyproject.toml), then the whole test suite
	$(VENV)/bin/ruff check lambexp tests benchmarks examples
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q

test-install:  ## a plain `pip install .` (no test extras) in a fresh venv, used from an empty folder
	rm -rf .venv-plain
	$(PYTHON) -m venv .venv-plain
	.venv-plain/bin/pip install --quiet --disable-pip-version-check .
	cd "$$(mktemp -d)" && L=$(CURDIR)/.venv-plain/bin/lambexp \
	  && $$L --version && $$L --help > /dev/null && $$L configs > /dev/null \
	  && $$L validate adam_vs_lamb && $$L run adam_vs_lamb epochs=1 --quiet

docs: install  ## write docs/config.md's key tables again from lambexp/config/schema.py (tests/test_docs.py checks them)
	$(PY) -m lambexp.config.reference

test-fast: install-test  ## the suite without tests marked slow
	$(VENV)/bin/pytest -q -m "not slow"

bench: install-test  ## training samples/s: the seed's pipeline vs lambexp's trainer, side by side
	$(PY) benchmarks/bench_train.py

profile: install-test  ## where a training step's time goes (torch.profiler), by op, against the FLOPs
	$(PY) benchmarks/profile_train.py

bench-stack: install-test  ## N trainings stacked (one vmap'd model) against one after another, samples/s
	$(PY) benchmarks/bench_stack.py

bench-optim: install-test  ## ms per optimizer step, side by side, against torch's fused Adam
	$(PY) benchmarks/bench_optim.py

bench-models: install-test  ## each model's training step (batch 512, LAMB), samples/s side by side, against LeNet's
	$(PY) benchmarks/bench_models.py

bench-watch: install-test  ## lambexp.watch's cost: step time and peak memory, watched against not (LeNet, a 10M transformer)
	$(PY) benchmarks/bench_watch.py

GPU_WHEELS := pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  torch-optimizer==0.3.0 pytorch-ranger==0.1.1 submitit==1.5.4

gpu-pack: install-test  ## .gpu/: what benchmarks/gpu_check.sh needs on a GPU machine with no network (wheels, MNIST)
	rm -rf .gpu && mkdir -p .gpu
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform any -d .gpu $(GPU_WHEELS)
	$(VENV)/bin/lambexp data fetch
	for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do \
	  gzip -c "$$($(PY) -c 'from lambexp.data.fetch import default_data_dir; print(default_data_dir())')/MNIST/raw/$$f" \
	    > .gpu/$$f.gz; done
	du -sh .gpu

tensorboard: install  ## TensorBoard on runs/
	$(VENV)/bin/lambexp tensorboard

clean:  ## remove the virtualenv and caches (runs/ is kept)
	rm -rf $(VENV) .venv-plain .pytest_cache .ruff_cache *.egg-info
