# cloudsigma-ccm — the targets the README names.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup lock realenv image lint test unit demo bench soak docs reliability-doc clean

## setup: a virtualenv with the package and its dev tools, exactly the hashed pins of requirements/dev.txt
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --only-binary=:all: -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## lock: regenerate requirements/{runtime,build,dev}.txt from pyproject.toml (UPGRADE=1: newest allowed versions)
lock: setup
	UPGRADE=$(UPGRADE) bash scripts/lock.sh

## realenv: build the test kube-apiserver, kustomize, Helm and promtool, fetch MetalLB's CRDs (Go module proxy) and Keycloak (Maven Central); cached per machine
realenv:
	bash scripts/build-kube-apiserver.sh
	bash scripts/build-kustomize.sh
	bash scripts/build-helm.sh
	bash scripts/build-promtool.sh
	bash scripts/fetch-metallb-crds.sh
	bash scripts/fetch-keycloak.sh

## image: build the container image with buildah on a base assembled from Debian packages (cached; see the script)
image:
	bash scripts/build-image.sh localhost/cloudsigma-ccm:dev

## lint: ruff, mypy --strict and the import layers (lint-imports: [tool.importlinter] in pyproject.toml)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

## test: everything CI runs — set up, prepare the real parts, lint, and the whole suite against them
test: setup realenv lint
	$(BIN)/pytest -q -p no:cacheprovider

## unit: only the fast tests without real parts
unit: setup
	$(BIN)/pytest -q tests/unit

## demo: a kube-apiserver, Keycloak and the emulator with a handful of tainted nodes, and the CCM initializing them
demo: setup realenv
	$(BIN)/python -m tests.demo

## docs: regenerate README's settings table from ccm/config.py and the chart README's values table from its
## values.yaml (unit tests fail while either is out of date)
docs: setup
	$(BIN)/python -m ccm.docs
	$(BIN)/python -m ccm.chartdocs

## reliability-doc: run the reliability suite and rewrite docs/reliability.md from it (tests never write it)
reliability-doc: setup realenv
	CCM_WRITE_RELIABILITY_DOC=1 $(BIN)/pytest -q -p no:cacheprovider tests/reliability tests/unit/test_properties.py

## bench: the benchmark (see docs/benchmarks.md), then the fleet scenario (docs/benchmarks-fleet.md), then the soak
bench: setup realenv
	$(BIN)/python -m bench
	$(BIN)/python -m bench.fleet
	$(MAKE) soak

## soak: the robustness run for SOAK_MINUTES (30) with a random seed (SEED=N replays one), going on past violations (listed at the end); RSS slope, rates, checks
SOAK_MINUTES ?= 30
soak: setup realenv
	$(BIN)/python -m tests.robustness --minutes $(SOAK_MINUTES) --keep-going $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
