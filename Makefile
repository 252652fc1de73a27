# cubeless: every target sets itself up; `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Python 3.12 to match the Lambda python3.12 runtime (pyenv reads .python-version).
PYTHON ?= $(shell command -v pyenv >/dev/null 2>&1 && pyenv which python3.12 2>/dev/null || command -v python3.12 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# MapLibre GL for the web map of `cubeless serve`, copied from npm into the package (no CDN).
WEB_VENDOR := cubeless/web/vendor/maplibre-gl.js

.PHONY: setup demo test test-fast synth bench lint clean browser

setup: $(STAMP) $(NODE_STAMP) $(WEB_VENDOR)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if v==(3,12) else "cubeless needs Python 3.12 (the Lambda runtime); found %d.%d: install it (pyenv install 3.12) or set PYTHON=" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_VENDOR): $(NODE_STAMP)
	mkdir -p cubeless/web/vendor
	cp node_modules/maplibre-gl/dist/maplibre-gl.js node_modules/maplibre-gl/dist/maplibre-gl.css cubeless/web/vendor/
	cp node_modules/maplibre-gl/LICENSE.txt cubeless/web/vendor/MAPLIBRE-LICENSE.txt

# Headless Chromium from Debian's packages for the browser tests of the web map (tests/map).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: $(STAMP) $(WEB_VENDOR)
	$(BIN)/cubeless demo

test: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow"

synth: setup
	npx cdk synth --quiet

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules cdk.out .cache
