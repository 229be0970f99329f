# Build skeleton for trickles-kit.  Everything runs inside ./.venv.

SHELL := /bin/bash

VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LABSTAMP := $(VENV)/.installed-lab

# Interpreter used to create the venv: prefer python3.11, fall back to python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)

.PHONY: venv lab-venv lab demo test test-native native clean sysdeps

venv: $(STAMP)

# Create the virtualenv (only if it does not exist yet).
$(VPY):
	@if [ -z "$(PYTHON)" ]; then \
	    echo "error: no python3.11 or python3 found on PATH (Python >= 3.11 required)" >&2; \
	    exit 1; \
	fi
	@if ! "$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	    echo "error: $(PYTHON) is Python $$("$(PYTHON)" -c 'import platform; print(platform.python_version())'); trickles-kit needs Python >= 3.11" >&2; \
	    echo "       install python3.11 or run: make PYTHON=/path/to/python3.11 venv" >&2; \
	    exit 1; \
	fi
	@echo "creating $(VENV) with $(PYTHON)"
	@if ! "$(PYTHON)" -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    if [ "$${CI:-}" = "true" ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "python3 -m venv failed (ensurepip missing?); CI=true and root: installing python3-venv" >&2; \
	        apt-get update && apt-get install -y python3-venv && \
	        "$(PYTHON)" -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
	    else \
	        echo "error: '$(PYTHON) -m venv' failed; the venv/ensurepip module is probably missing." >&2; \
	        echo "       on Debian/Ubuntu fix it with:  apt-get install -y python3-venv" >&2; \
	        echo "       (or python3.X-venv matching your interpreter), then re-run make." >&2; \
	        exit 1; \
	    fi; \
	fi

# (Re)install only when pyproject.toml changes. `lab-venv` (what test, lab and demo use) installs
# the dev, lab, quic and parquet extras (quic: aioquic, the QUIC baseline; parquet: pyarrow and
# duckdb for decoded captures) in one pip run straight from the bare venv and marks both stamps, so a
# fresh `make test` installs once.
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -e '.[dev]'
	touch $@

lab-venv: $(LABSTAMP) $(VENV)/.plotly-basic

# plotly.js's basic bundle (npm) for the live views: the page starts in ~0.2 s instead of ~0.9 s.
# Without npm the views use the full plotly.js; the stamp is made only when the fetch worked.
$(VENV)/.plotly-basic: $(LABSTAMP)
	@if $(VPY) -m trickles_kit.viz.plotly_bundle; then touch $@; else \
	    echo "(the live views will use the full plotly.js: slower to start, nothing else differs)"; fi

$(LABSTAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -e '.[dev,lab,quic,parquet]'
	touch $(STAMP) $@

# The optional compiled build (setup.py says what): `pip install -e` above already builds the C
# helpers when it can; this also compiles trickles_kit/native/mypyc_modules.txt with mypyc (mypy
# is in the dev extra) and rebuilds after an edit. Without a C compiler it does nothing, quietly:
# the package is complete in pure Python. TRICKLES_PURE=1 runs pure Python whatever is built;
# `trickles doctor` says which build is active.
MYPYC_SRC := $(shell sed 's/\#.*//' trickles_kit/native/mypyc_modules.txt 2>/dev/null)
native: $(VENV)/.native

$(VENV)/.native: $(LABSTAMP) setup.py trickles_kit/native/speedups.c \
		trickles_kit/native/mypyc_modules.txt $(MYPYC_SRC)
	@if command -v cc >/dev/null 2>&1; then \
	    m=0; if $(VPY) -c 'import mypyc' 2>/dev/null; then m=1; fi; \
	    find trickles_kit -name '*.so' -delete; \
	    if TRICKLES_MYPYC=$$m $(VPY) setup.py -q build_ext --inplace >$(VENV)/native.log 2>&1; \
	    then find trickles_kit -name '*.so' -exec touch {} +; touch $@; else echo "(no compiled build: pure Python; see $(VENV)/native.log)"; fi; \
	fi

# The main job: JupyterLab at the tour (127.0.0.1 only; the URL with its token is printed).
# As root (the live runs of 06 and 07 need it) JupyterLab refuses to start without --allow-root.
# LAB_ARGS: more JupyterLab options, e.g. make lab LAB_ARGS=--ServerApp.port=8890
lab: lab-venv
	@allow=; if [ "$$(id -u)" = 0 ]; then allow=--allow-root; \
	    echo "make lab: running as root, passing --allow-root to JupyterLab"; fi; \
	exec $(VENV)/bin/jupyter lab $$allow --ServerApp.ip=127.0.0.1 --no-browser $(LAB_ARGS) \
	    notebooks/01-tour.ipynb

# The tour's steps headless: a live transfer, its figures in reports/demo.html.
demo: lab-venv
	$(VENV)/bin/trickles demo --out reports/demo.html

# System tools the tests use (tcpdump, tshark, iptables, nftables, ...): installs what is missing
# when run as root, otherwise prints the command to run. `make test` runs it first (as root it
# installs, printing what; as a user it only says what is missing): SYSDEPS=no skips that.
sysdeps:
	bash scripts/install-system-deps.sh
	bash scripts/install-browser-deps.sh

# The suite in pure Python (what a machine without a compiler runs, and what the notebooks
# teach from), then, when the compiled build is there, the wire, core and end-to-end suites
# again against it (test-native).
# Both pytest runs log their skips to one file (TRICKLES_SKIP_LOG, exported to the sub-make) and
# tests/skipline.py prints one line for both at the end. ($(MAKE) stays alone on its line:
# `make -n` runs such lines.)
test: export TRICKLES_SKIP_LOG := $(CURDIR)/.pytest_cache/trickles-skips.log
test: $(if $(filter no,$(SYSDEPS)),,sysdeps) lab-venv native
	$(VENV)/bin/ruff check .
	@mkdir -p .pytest_cache && rm -f $(TRICKLES_SKIP_LOG)
	TRICKLES_PURE=1 $(VPY) -m pytest -n 2 || { $(VPY) tests/skipline.py $(TRICKLES_SKIP_LOG); exit 1; }
	@$(MAKE) --no-print-directory test-native
	@$(VPY) tests/skipline.py $(TRICKLES_SKIP_LOG)

# the engines, the codec and end-to-end transfers over real sockets (not the storms and
# worker-kill runs: minutes each, and they add no compiled code path of their own)
NATIVE_TESTS := tests/wire tests/core tests/net/test_native_io.py tests/net/test_wire_e2e.py \
	tests/net/test_faults_wire.py tests/apps/test_aio_gateway.py
test-native: native
	@if $(VPY) -c 'import sys, trickles_kit.native as n; sys.exit(n.speedups is None)'; then \
	    $(VPY) -m trickles_kit.cli doctor --json | $(VPY) -c 'import json,sys; print("build:", json.load(sys.stdin)["build"])'; \
	    $(VPY) -m pytest -n 2 $(NATIVE_TESTS); \
	elif [ "$${CI:-}" = "true" ]; then \
	    echo "test-native: CI=true and no compiled build (is cc there?)" >&2; exit 1; \
	else echo "test-native: no compiled build here (no C compiler): skipped"; fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find trickles_kit -name '*.so' -delete; rm -f ./*__mypyc*.so .mypy_cache -r
