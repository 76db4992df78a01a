# Quick start: `make demo` and `make test` on a fresh machine (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROVIDER_DIRS := $(sort $(dir $(wildcard providers/*/pyproject.toml)))
# provider packages (never build artefacts such as *.egg-info)
PROVIDER_PKGS := $(sort $(patsubst %/__init__.py,%,$(wildcard providers/*/caa_provider_*/__init__.py)))
STAMP := $(VENV)/.installed

.PHONY: install deps protos lint test unit demo bench deploy-sync podvm kube clean

$(STAMP): pyproject.toml $(wildcard providers/*/pyproject.toml) scripts/system-deps.sh scripts/apt-packages.txt
	bash scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]' $(foreach d,$(PROVIDER_DIRS),-e '$(d)[test]')
	# the ARM schema the Azure tests validate against (from PyPI, cached outside the clone)
	$(PY) providers/azure/tests/armfake/schema.py
	touch $(STAMP)

install: $(STAMP)

deps:
	bash scripts/system-deps.sh

protos: $(STAMP)
	PYTHON=$(PY) bash scripts/gen-protos.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy conftest.py cloud_api_adaptor $(PROVIDER_PKGS) tests benchmarks tools podvm
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test: $(STAMP) lint kube
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/cloud-api-adaptor demo

bench: $(STAMP)
	$(PY) -m benchmarks

# The pod VM image (docs/podvm.md), cached under ~/.cache/cloud-api-adaptor/podvm; needs root.
# PODVM_FORMATS=qcow2,raw,vhd,gcp (or all) adds the clouds' formats; PODVM_KATA_AGENT=path etc.
PODVM_FORMATS ?= qcow2
podvm: $(STAMP)
	$(PY) -m podvm.build --formats $(PODVM_FORMATS)

# kube-apiserver + kube-controller-manager for tests/k8s, built from the Go module proxy into
# ~/.cache/cloud-api-adaptor/k8s/ (cold: 5-10 min on 2 cores; cached: instant).
kube:
	nice bash scripts/build-kube.sh

deploy-sync: $(STAMP)
	$(PY) -m tools.deploysync

clean:
	rm -rf $(VENV) build *.egg-info
