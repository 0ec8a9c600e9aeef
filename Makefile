# radnode — set-up and test entry points.
#   make demo   create .venv, install, build the demo model, run the node
#   make test   the whole test suite (installs what it needs first)

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
RADNODE   := $(VENV)/bin/radnode
DEMO_MODEL := var/models/demo/manifest.json
APT_PACKAGES := dcmtk dicom3tools orthanc chromium chromium-driver docker-compose systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps demo-model lint typecheck bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test]"
	touch $@

# Debian tools the integration tests drive: DCMTK, dicom3tools, Orthanc, Chromium, and the
# validators of the deployment files (docker-compose, systemd-analyze).
system-deps:
	@missing=""; \
	for tool in storescu dciodvfy Orthanc chromium docker-compose systemd-analyze; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

demo-model: $(DEMO_MODEL)

$(DEMO_MODEL): $(VENV)/.installed
	$(RADNODE) model synth var/models/demo

test: system-deps install demo-model
	$(PY) -m pytest

demo: install demo-model
	$(RADNODE) demo

lint: install
	$(VENV)/bin/ruff check node workers tests bench
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

bench: install demo-model
	$(PY) bench/ingest.py

clean:
	rm -rf var test-artifacts .pytest_cache
