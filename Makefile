# Set-up lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo demo-detection test test-seams test-all integrations lint format clean

# The environment is rebuilt whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST: use $ANN2SNN_DATA or Debian's package if present; else install the
# package where apt is available and we are root; else torchvision downloads it.
data:
	@if [ -n "$$ANN2SNN_DATA" ] || [ -f $(DEBIAN_FMNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "data: Fashion-MNIST found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "data: installing Debian package dataset-fashion-mnist"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "data: apt failed; ann2snn will try torchvision's download"; \
	else \
		echo "data: not found locally; ann2snn will try torchvision's download"; \
	fi

demo: venv data
	$(BIN)/ann2snn demo

# Spiking object detection end to end (yolo_tiny on Fashion-MNIST scenes, mAP per T).
demo-detection: venv data
	$(BIN)/ann2snn demo --task detection

test: venv
	$(BIN)/python -m pytest -q

# The differential harness over generated networks with 300 networks per property
# (make test runs 40).
test-seams: venv
	ANN2SNN_SEAM_EXAMPLES=300 $(BIN)/python -m pytest -q tests/test_seams.py

# Optional integrations, for the tests that cross-check against them (they skip without
# them): timm models, and SpikingJelly's SynOp counter. SpikingJelly goes in without its
# dependencies: they pin a torchaudio that does not match our torch, and its op_counter
# needs only torch.
integrations: venv
	$(BIN)/python -m pip install -q -e ".[dev,integrations]"
	$(BIN)/python -m pip install -q --no-deps "spikingjelly==2.0.0"

# Everything, including slow real-data runs and the integrations (GPU tests skip without a GPU).
test-all: venv data integrations
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: venv
	$(BIN)/ruff check ann2snn tests benchmarks
	$(BIN)/ruff format --check ann2snn tests benchmarks

format: venv
	$(BIN)/ruff format ann2snn tests benchmarks
	$(BIN)/ruff check --fix ann2snn tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
