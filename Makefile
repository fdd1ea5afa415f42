# One place for the dev loop. `make run` and `make test` work on a fresh machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo-drift test lint typecheck unit bench venv clean mosquitto chromium wheelhouse wheelhouse-sensors components

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found " + sys.version.split()[0] + ")")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<26.3"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP) wheelhouse mosquitto
	$(BIN)/nacelle demo

# The field loop: drift on two turbines, drift alerts, captured data, retraining, canary-only approval, fleet.
demo-drift: $(STAMP) wheelhouse mosquitto
	$(BIN)/nacelle demo drift

test: $(STAMP) wheelhouse wheelhouse-sensors mosquitto chromium lint typecheck
	@# a file's tests on one worker, in order (some build on each other); bytecode caches on even where the
	@# environment turns them off (PYTHONDONTWRITEBYTECODE): pytest then rewrites the tests' asserts once, not every run
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2 --dist loadfile

# The local stack's broker (and its tests) need mosquitto: installed here as root, else a clear message.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "mosquitto is required: sudo apt-get install -y mosquitto (Debian/Ubuntu) or brew install mosquitto" >&2; \
	    exit 1; \
	  fi; }

# The console's browser tests drive the distribution's headless Chromium (never a downloaded browser build):
# installed here as root, else a clear message.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is required for the console's browser tests: sudo apt-get install -y chromium (Debian/Ubuntu)" >&2; \
	    exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo

# Every package and the tests: the detector's src is its own root (`detector`, `main`), as on the device.
typecheck: $(STAMP)
	$(BIN)/mypy shared training_jobs nacelle services benchmarks greengrass_components/nacelle.detector/src train_entry.py \
	  tests greengrass_components/nacelle.detector/tests
	cd greengrass_components/nacelle.sensors && ../../$(BIN)/mypy src tests  # its own `main`, like the detector's

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .nacelle out .venv-sam .aws-sam build

# The detector's wheels, downloaded once (PyPI at build time); devices install from them offline.
DETECTOR_REQS := greengrass_components/nacelle.detector/requirements.txt
WHEELHOUSE_STAMP := build/wheelhouse/.downloaded

wheelhouse: $(WHEELHOUSE_STAMP)

$(WHEELHOUSE_STAMP): $(DETECTOR_REQS) | $(STAMP)
	@rm -rf build/wheelhouse && mkdir -p build/wheelhouse  # no stale wheels of older requirements
	$(BIN)/pip download --quiet --only-binary=:all: -d build/wheelhouse -r $(DETECTOR_REQS)
	@touch $(WHEELHOUSE_STAMP)

# The sensors component's wheels (pymodbus, asyncua...), in a wheelhouse of their own: `make components`, `nacelle up
# --source modbus|opcua` (its devices' nucleus installs the component from them) and its test need them.
SENSORS_REQS := greengrass_components/nacelle.sensors/requirements.txt
SENSORS_WHEELHOUSE_STAMP := build/wheelhouse-sensors/.downloaded

wheelhouse-sensors: $(SENSORS_WHEELHOUSE_STAMP)

$(SENSORS_WHEELHOUSE_STAMP): $(SENSORS_REQS) | $(STAMP)
	@rm -rf build/wheelhouse-sensors && mkdir -p build/wheelhouse-sensors
	$(BIN)/pip download --quiet --only-binary=:all: -d build/wheelhouse-sensors -r $(SENSORS_REQS)
	@touch $(SENSORS_WHEELHOUSE_STAMP)

# build/components/<name>/<VERSION>/: <package>.zip, wheels/, recipe.json (nacelle.detector, nacelle.sensors)
components: wheelhouse wheelhouse-sensors
	$(BIN)/python -m nacelle.components --component all

include deploy/Makefile.deploy
