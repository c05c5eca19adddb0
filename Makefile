# Entry points: `make demo` (embedded default job) and `make test` (whole suite).
# Both install what they need into .venv first; reruns are incremental.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_CACHE ?= $(HOME)/.cache/pip

.PHONY: venv demo test unit bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --cache-dir $(PIP_CACHE) -q --upgrade pip
	$(PY) -m pip install --cache-dir $(PIP_CACHE) -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/topk demo

test: venv
	$(PY) -m pytest -p no:cacheprovider tests

unit: venv
	$(PY) -m pytest -p no:cacheprovider -m "not integration" tests

clean:
	rm -rf $(VENV) demo-output
