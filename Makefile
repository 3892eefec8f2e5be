# Two commands for a newcomer: `make demo` runs the main job, `make test` runs every check.
# Both create .venv and install what they need (mosquitto via apt-get when missing).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck pytest mosquitto clean

# One editable install of the three distributions (shared/, device/, host/) and the tools.
$(STAMP): pyproject.toml shared/pyproject.toml device/pyproject.toml host/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes edgefleet 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ./shared -e './device[litert]' -e './host[gpr]' -e '.[dev]'
	touch $(STAMP)

mosquitto:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (the tests start their own broker on loopback)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; \
	fi

demo: $(STAMP) mosquitto
	$(BIN)/edgefleet demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict -p edgefleet.shared -p edgefleet.device
	$(BIN)/mypy -p edgefleet.host

# The fleet load test runs at a reduced size here (10 agents); run it by hand with
# EDGEFLEET_LOAD_AGENTS=100 for the full figure (see docs/testing.md).
pytest: $(STAMP) mosquitto
	$(BIN)/pytest -m "not load" $(PYTEST_ARGS)
	EDGEFLEET_LOAD_AGENTS=$${EDGEFLEET_LOAD_AGENTS:-10} $(BIN)/pytest -m load tests/load

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
