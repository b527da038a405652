# Two commands on a fresh machine: `make demo` (ProxyAno on the embedded brain-MRI demo) and `make test`.
# Both create $(VENV) when it is missing. Set VENV=... to use another folder.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.proxyano-installed

.PHONY: setup demo test test-fast lint figure clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, on its own: on CPU-only machines pick your wheel here (see README, Quick start).
	$(BIN)/python -m pip install --quiet "torch>=2.2,<3" "torchvision>=0.17"
	$(BIN)/python -m pip install --quiet ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/anomalib train --config configs/model/proxyano.yaml --config configs/model/proxyano_demo.yaml --config configs/data/brain_mri_demo.yaml
	@echo "Images with anomaly maps: results/ProxyAno/BrainMRIDemo/latest/images"

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

figure: $(STAMP)
	$(BIN)/python scripts/make_figure.py --ckpt results/ProxyAno/BrainMRIDemo/latest/weights/lightning/model.ckpt

clean:
	rm -rf $(VENV) results build dist
