# Two commands on a fresh machine: `make run` (set up, open the app) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests use: real data (Fashion-MNIST) and a browser for the end-to-end test.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium

.PHONY: setup system-packages run test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

system-packages:
	@missing=""; \
	[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: install$$missing (Debian packages) for the tests that need them; they skip without"; fi; \
	fi

run: setup
	$(PY) -m streamlit run app.py

test: setup system-packages
	$(PY) -m pytest

bench: setup system-packages
	$(PY) bench/compare.py
	$(PY) bench/floor.py

clean:
	rm -rf $(VENV) workspace .pytest_cache
