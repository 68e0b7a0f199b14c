# Every target creates .venv on first use. Torch: an already installed torch (e.g. a CUDA build)
# is reused through --system-site-packages; otherwise the CPU build torch==2.13.0 is installed
# (an unpinned torch would download a multi-GB CUDA build).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= configs/dw4.yaml

.PHONY: setup test demo train bench clean

$(VENV)/.done: pyproject.toml
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "reusing installed torch"; $(PY) -m venv --system-site-packages $(VENV); \
	else \
	  $(PY) -m venv $(VENV) && $(VPY) -m pip install -q torch==2.13.0; \
	fi
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.done

test: setup
	$(VPY) -m pytest -q tests

demo: setup
	$(VPY) scripts/demo.py

train: setup
	$(VPY) scripts/train_eq.py --config $(CONFIG)

bench: setup
	$(VPY) scripts/bench_divergence.py

clean:
	rm -rf $(VENV) *.egg-info
