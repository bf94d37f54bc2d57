# BerryChat: `make demo` builds a virtual Pi fleet and deploys the stack on it;
# `make test` runs every check. Both install what they need and are quick when it is there.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Empty: each scenario on the architecture molecule/ci.yml gives it (arm64 = the real target
# under emulation). MOLECULE_ARCH=native runs all natively (fast iteration), =arm64 all emulated.
MOLECULE_ARCH ?=
export MOLECULE_ARCH
# Scenarios run in parallel; each is bounded by a memory limit per container.
MOLECULE_JOBS ?= 3
# Empty = every scenario under molecule/; or a space-separated list.
SCENARIOS ?=

.PHONY: help venv host images lint test test-server test-browser test-molecule test-install bench demo demo-down lock clean

help:
	@echo "make demo         build 3 virtual arm64 Pis and deploy BerryChat on them"
	@echo "make demo-down    remove the virtual fleet"
	@echo "make test         lint + server tests + Molecule scenarios (MOLECULE_ARCH=native for speed)"
	@echo "make lint         yamllint, ansible-lint (production profile), ruff"
	@echo "make test-server  the BerryChat server's test suite"
	@echo "make test-browser the web client in headless Chromium"
	@echo "make test-molecule [SCENARIOS='a b']  Molecule scenarios"
	@echo "make test-install install.sh twice in a native virtual Pi (not part of make test)"
	@echo "make images       build the virtual Pi images (arm64 and native)"
	@echo "make bench [SCENARIO=idle|fanout|direct|storm]  load benchmarks (table + bench/results/)"
	@echo "make fuzz         fuzz the parsers, config loader and HTTP handlers (>= 100,000 inputs)"
	@echo "make soak         faults under load on a real cluster, several rounds (bench/soak.py)"

# Controller virtualenv: pinned tools (requirements/controller.lock) + the server package.
$(BIN)/.stamp: requirements/controller.in requirements/controller.lock server/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/controller.in -c requirements/controller.lock
	$(BIN)/pip install -q -e 'server[test,fast]' -c requirements/controller.lock
	touch $@
venv: $(BIN)/.stamp

host:
	@bash scripts/setup-host.sh

images: host
	@bash images/build.sh native
	@bash images/build.sh arm64

lint: venv
	$(BIN)/yamllint -s .
	cd . && PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --profile production --offline -q
	$(BIN)/ruff check server molecule tests plugins
	$(BIN)/ruff format --check server molecule tests plugins

test-server: venv host
	$(BIN)/python -m pytest -q server/tests

# Real headless Chromium (Debian's) against a real server; skipped while tests/browser is absent.
test-browser: venv host
	@if [ -d tests/browser ]; then $(BIN)/python -m pytest -q tests/browser; else echo "no browser tests yet"; fi

test-molecule: venv images
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests/test_secret_scan.py tests/test_scheduling.py tests/test_molecule.py \
	  -n $(MOLECULE_JOBS) --dist loadgroup $(if $(SCENARIOS),--scenarios "$(SCENARIOS)")

test: lint test-server test-browser test-molecule

# install.sh end to end in a native virtual Pi container, run twice (tests/test_install_sh.py).
# Not part of `make test`: a whole site.yml on one container takes longer than CI's share.
test-install: venv images
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -s tests/test_install_sh.py

# Load benchmarks on loopback: server pinned to CPU 0, generator to CPU 1; table + JSON under
# bench/results/ (see bench/README.md). Not part of `make test`: figures, not pass/fail.
bench: venv
	$(BIN)/berrychat bench --scenario $(or $(SCENARIO),all)

# Fuzzing at full size with a fixed seed (make test runs a small derandomized sample of the same
# tests): WebSocket and JSON frame parsers, config loader, HTTP parser and handlers, live sockets.
.PHONY: fuzz soak
FUZZ_TESTS := $(wildcard server/tests/test_fuzz_*.py)
fuzz: venv
	@report=$$(mktemp); \
	BERRYCHAT_FUZZ=full BERRYCHAT_FUZZ_REPORT=$$report $(BIN)/python -m pytest -q -s $(FUZZ_TESTS); \
	status=$$?; $(BIN)/python server/tests/harness_fuzz.py $$report; rm -f $$report; exit $$status

# Faults under load, long version of server/tests/test_faults.py: private MariaDB, Redis, three
# server processes and nginx on loopback; table + JSON under bench/results/. SOAK_ARGS="--rounds 5"
# Then losing the primary Pi on a real fleet: the fleet scenario (site.yml on three virtual Pis,
# rolling deploy and promote.yml under client traffic; 25-60 min).
soak: venv
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
	$(MAKE) test-molecule SCENARIOS=fleet

demo: venv images
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh up

demo-down:
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh down

# Re-resolve the controller tools and rewrite the lock file.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements/controller.in './server[test,fast]'
	{ echo "# Generated by 'make lock' from controller.in and server/pyproject.toml: every fresh"; \
	  echo "# controller gets these versions."; \
	  .venv-lock/bin/pip freeze | grep -v -e '^-e' -e '^berrychat' ; } > requirements/controller.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache
