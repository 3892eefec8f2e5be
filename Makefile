# Two commands for a newcomer: `make demo` runs the main job, `make test` runs every check.
# Both create .venv and install what they need (the Debian packages in tests/tools.txt via
# apt-get when missing).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-pi lint typecheck pytest tools mosquitto clean

# One editable install of the three distributions (shared/, device/, host/) and the tools.
$(STAMP): pyproject.toml shared/pyproject.toml device/pyproject.toml host/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes edgefleet 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ./shared -e './device[litert]' -e './host[gpr]' -e '.[dev]'
	touch $(STAMP)

# The external commands the tests run are listed in tests/tools.txt with their Debian
# packages: install the missing ones, then fail naming any command that is still absent.
TOOLS_FILE := tests/tools.txt
have = command -v $(1) >/dev/null 2>&1 || [ -x /usr/sbin/$(1) ] || \
	ls /usr/lib/postgresql/*/bin/$(1) >/dev/null 2>&1

tools:
	@missing=$$(grep -v '^\#' $(TOOLS_FILE) | while read -r cmd pkg _; do \
		[ -n "$$cmd" ] || continue; $(call have,$$cmd) || echo "$$pkg"; done | sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing(external commands the tests run, see $(TOOLS_FILE))"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@grep -v '^\#' $(TOOLS_FILE) | while read -r cmd pkg _; do \
		[ -n "$$cmd" ] || continue; \
		if ! { $(call have,$$cmd); }; then \
			echo "missing command '$$cmd': 'make tools' installs it with apt-get install $$pkg" >&2; \
			exit 1; fi; done

# `make demo` needs only the broker.
mosquitto:
	@$(call have,mosquitto) || { echo "installing mosquitto (the demo starts its own broker)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

demo: $(STAMP) mosquitto
	$(BIN)/edgefleet demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict -p edgefleet.shared -p edgefleet.device -p edgefleet.host

# The fleet load test runs at a reduced size here (10 agents); run it by hand with
# EDGEFLEET_LOAD_AGENTS=100 for the full figure (see docs/testing.md).
# The suite runs in TEST_WORKERS processes (pytest-xdist): most tests wait on brokers, agents
# and child processes, so 3 workers keep 2 cores busy. TEST_WORKERS=0 runs it in one process.
# The 20 slowest tests are listed, so a test that slows the whole run down is seen.
TEST_WORKERS ?= 3
pytest: $(STAMP) tools
	$(BIN)/pytest -m "not load" -n $(TEST_WORKERS) --durations=20 $(PYTEST_ARGS)
	EDGEFLEET_LOAD_AGENTS=$${EDGEFLEET_LOAD_AGENTS:-10} $(BIN)/pytest -m load tests/load

test: lint typecheck pytest

# The Raspberry Pi path (docs/testing.md): the agent installed from a real bundle into arm64
# Debian 12 under qemu-user, updated from this host and checked against x86. Needs root;
# without it (or binfmt) it skips, unless CI=true: then it fails. .ci/run runs it.
PI_TOOLS := tests/pi/tools.txt
test-pi: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory tools TOOLS_FILE=$(PI_TOOLS); fi
	$(BIN)/python tests/pi/pi_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
