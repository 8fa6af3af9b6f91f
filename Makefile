# ciliumlite. The two commands (README): `sudo make demo` and `sudo make test`.
# Each one first runs scripts/bootstrap.sh, which installs whatever is missing (Debian packages,
# bpffs/cgroup2 mounts, .venv with ciliumlite editable + [dev], the BPF objects) and is quiet
# when nothing is.
#
#   make bootstrap   set everything up (idempotent)
#   make build       (re)build the BPF objects: csrc/*.c -> ciliumlite/objects/, tests/bpf/progs -> tests/bpf/objects/
#   make test        bootstrap, then the whole pytest suite (PYTEST_ARGS="-m unit -x" to narrow it)
#   make lint        ruff + mypy (strict)
#   make demo        bootstrap, then the demo
#   make bench       bootstrap, then the benchmarks
#   make fuzz        bootstrap, then fuzz every datapath program in every configuration
#                    (FRAMES per program per configuration, default 1,000,000; FUZZ_TIME s bound)
#   make soak        bootstrap, then a 3-node lab under traffic and churn for SOAK_SECONDS (default 600)
#   make clean       remove build outputs (keeps .venv; `make distclean` removes it too)

SHELL := /bin/bash
MAKEFLAGS += --no-print-directory
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
FRAMES ?= 1000000
FUZZ_TIME ?= 2400
FUZZ_OUT ?= benchmarks/results/fuzz.md
SOAK_SECONDS ?= 600
SOAK_OUT ?= benchmarks/results/soak.md
LINT_PATHS = $(wildcard ciliumlite tests benchmarks examples)

.DEFAULT_GOAL := build
.PHONY: bootstrap sysdeps build test lint demo bench fuzz soak clean distclean

bootstrap:
	@bash scripts/bootstrap.sh

# System packages only (root installs them; otherwise just check).
sysdeps:
	@if [ "$$(id -u)" -eq 0 ]; then bash scripts/install-system-deps.sh; \
	else bash scripts/install-system-deps.sh --check || { echo "make: run as root: sudo make $(MAKECMDGOALS)" >&2; exit 1; }; fi

build: sysdeps
	cmake -S . -B build
	cmake --build build

# pytest's exit code is make's; exit 5 (no tests collected) is a failure too.
test: bootstrap
	@set +e; \
	$(PY) -m pytest tests $(PYTEST_ARGS); rc=$$?; \
	echo; \
	if [ $$rc -eq 0 ]; then echo "make test: PASSED"; \
	elif [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit 5)" >&2; \
	else echo "make test: FAILED (pytest exit code $$rc)" >&2; fi; \
	exit $$rc

lint: bootstrap
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy ciliumlite

# The CLI's demo once ciliumlite/cli exists; until then the quickstart example.
demo: bootstrap
	@if [ -e ciliumlite/cli ] || [ -e ciliumlite/cli.py ]; then \
		$(VENV)/bin/ciliumlite demo; \
	elif [ -f examples/quickstart.py ]; then \
		$(PY) examples/quickstart.py; \
	else \
		echo "make demo: neither ciliumlite/cli nor examples/quickstart.py exists yet" >&2; exit 1; \
	fi

bench: bootstrap
	@if [ -f benchmarks/run.py ]; then \
		$(PY) benchmarks/run.py $(BENCH_ARGS) && $(PY) docs/gen_benchmarks.py; \
	else \
		echo "make bench: benchmarks/run.py does not exist yet" >&2; exit 1; \
	fi

# ciliumlite.testing.fuzz: BPF_PROG_TEST_RUN only (no traffic); writes $(FUZZ_OUT) and .json.
# Exit 1 if an invariant failed (docs/testing.md, Fuzzing).
fuzz: bootstrap
	$(PY) -m ciliumlite.testing.fuzz --frames $(FRAMES) --time-limit $(FUZZ_TIME) --out $(FUZZ_OUT)

# ciliumlite.testing.soak: churn under traffic, sampled every 10 s; writes $(SOAK_OUT) and .json.
# Exit 1 if a rule failed (docs/testing.md, Soak).
soak: bootstrap
	$(PY) -m ciliumlite.testing.soak --seconds $(SOAK_SECONDS) --out $(SOAK_OUT)

clean:
	rm -rf build tests/bpf/objects ciliumlite/objects/*.o *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
