# Two commands on a fresh clone:  make demo  ·  make test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
APP ?= starlette

.PHONY: demo demo-flask demo-django test lint typecheck pytest bench services interop clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# make demo [PORT=8000] [APP=starlette|flask|django]; PORT=0 picks a free port.
demo: $(STAMP)
	$(VENV)/bin/clerk-tinybird demo --app $(APP) --port $(PORT)

demo-flask: $(STAMP)
	$(VENV)/bin/clerk-tinybird demo --app flask --port $(PORT)

demo-django: $(STAMP)
	$(VENV)/bin/clerk-tinybird demo --app django --port $(PORT)

# Services the suite uses: redis-server + redis-cli (tests start their own servers and
# clusters on free loopback ports), Debian's chromium (browser tests), wrk (the benchmark's
# load generator). Installed with apt-get when missing and running as root.
services:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then \
		echo "not installed:$$missing (tests needing them will skip)"; \
	fi

# The official clients that judge the fakes (npm ci from committed lockfiles; a separate venv
# for Tinybird's Python clients, whose pins clash with ours).
interop: $(STAMP)
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		for setup in tests/interop/*/setup.sh; do bash $$setup || exit 1; done; \
	else echo "not installed: node/npm (the official-client tests will skip)"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing (e.g. a -k filter): report it, do not fail.
# Three workers (pytest-xdist), one test file each at a time: many tests wait on sockets,
# servers and real timeouts, so three processes keep two cores busy.
PYTEST_ARGS ?= -n 3 --dist loadfile --durations=10
pytest: $(STAMP)
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected (exit 5)"; rc=0; fi; exit $$rc

test: services interop lint typecheck pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
	rm -rf tests/interop/*/node_modules tests/interop/*/.venv
