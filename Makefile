# Two commands on a fresh clone: `make demo` and `make test`. Each creates or reuses .venv, installs the CPU
# torch wheel first (a looser spec would pull a multi-GB CUDA build), then the project with its dev extras.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean peers-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole demo, stage by stage (psfsim.demo, recon.demo, then the pipelines commands on a frame filling the lens
# field), timed, with demo_out/report.md at the end; DEMO_LENS: any preset or lens TOML (the frame is its field).
DEMO_LENS ?= microscope
demo: $(STAMP)
	$(PY) -m pipelines.demo --out demo_out --lens $(DEMO_LENS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_psf.py

# The peer venv of benchmarks/bench_peers.py (deepinv 0.5.0 beside CPU torch 2.13.0, outside the repository; by
# hand only, never CI): PEERS_VENV=/work/peers-venv by default. Then:
#   PYTHONPATH=. $(PEERS_VENV)/bin/python benchmarks/bench_peers.py
PEERS_VENV ?= /work/peers-venv
peers-venv:
	PEERS_VENV=$(PEERS_VENV) PYTHON=$(PYTHON) bash benchmarks/peers/setup_peers_venv.sh

clean:
	rm -rf demo_out bench_out .pytest_cache
