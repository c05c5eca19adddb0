# Entry points: `make demo` (embedded default job) and `make test` (whole suite).
# Both install what they need into .venv first; reruns are incremental.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_CACHE ?= $(HOME)/.cache/pip

.PHONY: venv services demo demo-serve test unit clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --cache-dir $(PIP_CACHE) -q --upgrade pip
	$(PY) -m pip install --cache-dir $(PIP_CACHE) -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/topk demo

# The demo, then its output served: the API and the live leaderboard page.
demo-serve: venv
	$(VENV)/bin/topk demo --serve

# Prism (Beam's portable local runner, built from the Go module proxy once
# and cached) runs the unbounded streaming tests; Kafka is started by the
# tests themselves (deploy/kafka/kafka.sh).
services:
	deploy/kafka/kafka.sh install
	deploy/prism/prism.sh install
	deploy/bigquery/emulator.sh install
	deploy/flink/flink.sh install
	deploy/chromium/chromium.sh install

test: venv services
	$(PY) -m pytest -p no:cacheprovider tests

unit: venv
	$(PY) -m pytest -p no:cacheprovider -m "not integration" tests

clean:
	rm -rf $(VENV) demo-output
