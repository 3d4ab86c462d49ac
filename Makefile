# Two set-up commands: `make demo` and `make test`. Each creates the virtual environment when it is
# absent and reuses it otherwise. BNSWEEP_VENV points at a venv to reuse (CI keeps one outside the
# clone so a run need not reinstall PyTorch); the default is .venv in the repository.
VENV ?= $(if $(BNSWEEP_VENV),$(BNSWEEP_VENV),.venv)
PY := $(VENV)/bin/python
PYTHON ?= python3
# Installed dependencies are keyed by the content of pyproject.toml: edit it and they reinstall.
DEPS_STAMP := $(VENV)/.bnsweep-deps-$(shell sha1sum pyproject.toml | cut -c1-12)
DEMO_DB ?= sqlite:///out/demo.db

.PHONY: demo test test-fast test-cluster lint bench venv clean

# A strict editable install: `bnsweep` is a tree of links to this checkout's files in
# build/__editable__.*, which a .pth file puts on sys.path. mypy, editors and code-map tools
# read it as an ordinary package (a plain editable install is an import hook they cannot
# follow). Each file is linked on its own, so a new module is importable after the next
# `make venv` (`make test` and `make lint` run it first).
EDITABLE := --config-settings editable_mode=strict

venv: $(DEPS_STAMP)
	@# The editable install is re-pointed at this checkout every time (a few seconds), so a venv
	@# shared between clones always runs the code in front of it, new and removed files included.
	@# Its output (setuptools' notes on editable installs) is shown only when it fails.
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . $(EDITABLE) \
		>$(VENV)/.bnsweep-editable.log 2>&1 || { cat $(VENV)/.bnsweep-editable.log; exit 1; }

$(DEPS_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[all,test]' $(EDITABLE)
	@rm -f $(VENV)/.bnsweep-deps-*
	@touch $@

demo: venv
	@mkdir -p out
	$(VENV)/bin/bnsweep launch configs/demo.yaml --db $(DEMO_DB)

# Every test, the full architecture x formulation cross product included (about 20 s of it on a
# quiet 2-core machine).
test: venv lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not engines"

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not exhaustive and not engines" -p no:cacheprovider

# The cluster lane (about 15 minutes): the shipped recipes run for real. It starts a Docker engine
# and builds the CPU image from a locally made Debian base, runs the compose cluster, starts
# munged, slurmctld and two slurmd and submits deploy/slurm/bnsweep.sbatch, and validates the
# KubeRay manifests. Run as root; every daemon it starts is stopped and everything it created is
# removed. Where an engine cannot start, its tests skip with one line saying why.
test-cluster: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy

# ruff's lint rules and its formatting, then mypy (configured in pyproject.toml). mypy finds
# `bnsweep` through the strict editable install (EDITABLE above); its messages name the files
# through the link tree (build/__editable__.*/bnsweep/...), each a link to service/, workers/
# or analysis/.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: venv
	$(PY) bench/throughput.py

clean:
	rm -rf out runs .pytest_cache
