# radnode — set-up and test entry points.
#   make demo   create .venv, install, build the demo model, run the node
#   make test   the whole test suite (installs what it needs first)
#   make ohif   install the pinned OHIF Viewer that the node serves at /viewer/

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
RADNODE   := $(VENV)/bin/radnode
DEMO_MODEL := var/models/demo/manifest.json
# The OHIF Viewer served at /viewer/: the npm package @ohif/app, pinned by version and by
# the SHA-512 the registry publishes for it (`npm view @ohif/app@VERSION dist.integrity`).
# To upgrade, change both lines and run `make ohif` (see docs/web.md).
OHIF_VERSION   := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIST      ?= var/ohif/dist
# Each tool the tests run, and the Debian package that provides it. Only the packages of
# missing tools are installed: a machine may already have a tool from elsewhere (Node.js
# from another repository brings its own npm, which conflicts with Debian's).
APT_TOOLS := storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc chromium:chromium \
             chromedriver:chromium-driver docker-compose:docker-compose \
             systemd-analyze:systemd npm:npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps demo-model ohif lint typecheck bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test]"
	touch $@

# Debian tools the integration tests drive: DCMTK, dicom3tools, Orthanc, Chromium, the
# validators of the deployment files (docker-compose, systemd-analyze), and npm (fetches
# the OHIF Viewer).
system-deps:
	@missing=""; \
	for pair in $(APT_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

demo-model: $(DEMO_MODEL)

$(DEMO_MODEL): $(VENV)/.installed
	$(RADNODE) model synth var/models/demo

# Fetched once (npm pack), checked against OHIF_INTEGRITY, unpacked into OHIF_DIST; a
# later run with the same pin does nothing. Never fetched while the node runs.
ohif: $(OHIF_DIST)/.radnode-ohif-$(OHIF_VERSION)

$(OHIF_DIST)/.radnode-ohif-$(OHIF_VERSION):
	deploy/ohif/install.sh $(OHIF_VERSION) $(OHIF_INTEGRITY) $(OHIF_DIST)
	touch $@

test: system-deps install demo-model ohif
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
