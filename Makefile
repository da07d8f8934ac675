# The two commands of the README: `make demo` and `make test`.
# Both install what is missing (Debian packages, a virtualenv) and are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= /usr/bin/python3
VENV        := .venv
VPY         := $(VENV)/bin/python
DEB_PKGS    := python3 python3-venv ca-certificates iproute2 libseccomp2 busybox-static \
               runc crun umoci podman conmon uidmap skopeo hyperfine time tini \
               nftables conntrack debootstrap curl docker-registry apache2-utils
# Only for `make bench` (the docker peer of the benchmarks, wrk for bench/port_throughput.py,
# buildah for bench/build.py);
# `make test` does not install them.
BENCH_PKGS  := docker.io wrk buildah
CACHE       ?= /var/cache/dockyard-test
PYTEST_ARGS ?=

.PHONY: help deps bench-deps venv bytecode demo test lint images bench clean

help:
	@echo "make demo   install what is missing, then run the demo"
	@echo "make test   install what is missing, then run lint, types and the test suite"

# Debian packages: only the missing ones are installed, so a second run is fast.
deps bench-deps:
	@missing=""; for p in $(if $(filter bench-deps,$@),$(BENCH_PKGS),$(DEB_PKGS)); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	# setuptools' .pth adds an import to every interpreter start; nothing here needs it.
	$(VPY) -m pip uninstall -q -y setuptools 2>/dev/null || true
	touch $@

venv: deps $(VENV)/.installed

# Bytecode ahead of time: with PYTHONDONTWRITEBYTECODE set, every CLI start
# would otherwise compile its modules again (milliseconds on each command).
bytecode: venv
	$(VPY) -m compileall -q src

images: venv
	$(VPY) scripts/build_test_images.py --cache $(CACHE)
	$(VPY) scripts/debian_images.py --cache $(CACHE)

demo: venv bytecode images
	$(VPY) scripts/demo.py --cache $(CACHE)
	$(VPY) scripts/demo_engine.py --cache $(CACHE)
	$(VPY) scripts/demo_walkthrough.py --cache $(CACHE)

lint: venv
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

test: venv bytecode images lint
	DOCKYARD_TEST_CACHE=$(CACHE) $(VENV)/bin/pytest $(PYTEST_ARGS)

bench: venv bytecode images bench-deps
	$(VPY) bench/runtime_start.py --cache $(CACHE)
	$(VPY) bench/run_latency.py --cache $(CACHE)
	$(VPY) bench/port_throughput.py --cache $(CACHE)
	$(VPY) bench/network_setup.py --cache $(CACHE)
	$(VPY) bench/pull.py --cache $(CACHE)
	$(VPY) bench/registry_serve.py
	$(VPY) bench/build.py --cache $(CACHE)

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache
