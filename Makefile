# tailcast — the two commands: `make demo` and `make test`. Both create .venv and install from scratch.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DURATION ?= 60
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench system-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on local disk here; anything else pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tailcast demo --duration $(DURATION)

# Two pytest workers, then, one at a time, the tests that measure time or CPU or run the whole demo (`alone`).
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist worksteal -m "not alone"
	$(VENV)/bin/pytest -q -m alone

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not integration and not e2e"

bench: $(STAMP)
	$(PY) -m benchmarks.run --out bench-results.json

# Real Prometheus (promtool) for the infra and dashboard tests; Debian/Ubuntu, needs root.
system-deps:
	command -v promtool >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null)

clean:
	rm -rf $(VENV) var out bench-results.json
