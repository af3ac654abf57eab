# Two entry points: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision from the registry pins the matching torch build (the machine's local CPU-only
# torch 2.13 wheel cannot load torchvision's compiled ops), so install it first, by name.
TORCHVISION ?= torchvision==0.29.2
PYTEST_ARGS ?=

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCHVISION)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -c "import torch, torchvision; from torchvision.ops import nms; \
	  nms(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([1.]), 0.5); \
	  print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ops ok')"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(VENV)/bin/avatarkd demo

bench: $(VENV)/.installed
	$(PY) benchmarks/loss_overhead.py

clean:
	rm -rf $(VENV) runs
