# Lockstep: `make demo` runs the main job, `make test` runs every check CI runs.
PYTHON ?= python3
FAKE_NVML_DIR := build/fake-nvml

DEPS_STAMP := build/.deps-installed

.PHONY: help install demo test lint typecheck pytest fake-nvml bench clean

help:
	@echo "make demo        local cluster, real training job, injected fault, detected and acted on"
	@echo "make test        lint, type check and the whole test suite (what CI runs)"
	@echo "make install     install Lockstep with its test dependencies (pip) and build the probe's kernel"
	@echo "make fake-nvml   build the fake libnvidia-ml.so.1 used by tests and the demo"
	@echo "make bench       run the benchmarks in benchmarks/"

# Debian packages, the Python package with test extras and the probe's compiled kernel; re-run when they change.
install: $(DEPS_STAMP)

$(DEPS_STAMP): pyproject.toml setup.py agent/_nicsample.c agent/probe/allreduce_kernel.cpp tools/install-deps.sh
	PYTHON=$(PYTHON) bash tools/install-deps.sh
	mkdir -p $(dir $@) && touch $@

demo: $(DEPS_STAMP) fake-nvml
	$(PYTHON) -m controller.cli demo

lint: $(DEPS_STAMP)
	$(PYTHON) -m ruff check .
	lint-imports

typecheck: $(DEPS_STAMP)
	$(PYTHON) -m mypy

# pytest exit code 5 means no test ran: that is a failure, not a pass.
pytest: $(DEPS_STAMP)
	$(PYTHON) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test: lint typecheck pytest

# The fake NVML library tests and the demo load instead of NVIDIA's (see tools/fake-nvml/README.md).
fake-nvml: $(FAKE_NVML_DIR)/libnvidia-ml.so.1

$(FAKE_NVML_DIR)/libnvidia-ml.so.1: tools/fake-nvml/build.sh tools/fake-nvml/fake_nvml.c tools/fake-nvml/fake_json.c tools/fake-nvml/fake_json.h
	PYTHON=$(PYTHON) tools/fake-nvml/build.sh $(FAKE_NVML_DIR)

bench:
	for b in benchmarks/*.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
