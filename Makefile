# The two commands: `make demo` and `make test`. Both create the venv first.
# GPU machines: `make venv FBGEMM=gpu` installs fbgemm-gpu in place of fbgemm-gpu-cpu.
PYTHON ?= python3.11
FBGEMM ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(FBGEMM)
PIN_TORCH := torch==2.14.1 torchvision==0.29.1
# MovieLens-100k ships in recbole's wheel; --no-deps: only its data files are read (make real-data)
PIN_RECBOLE := recbole==1.2.1
REAL_STAMP := $(VENV)/.installed-real
ifeq ($(FBGEMM),gpu)
PIN_FBGEMM := fbgemm-gpu==1.9.0
else
PIN_FBGEMM := fbgemm-gpu-cpu==1.9.0
endif
export PATH := $(abspath $(BIN)):$(PATH)
# Headless Chromium renders the evaluation's HTML report in a test; Debian's package, installed once (as root).
CHROMIUM := /usr/bin/chromium

.PHONY: venv test demo bench clean real-data

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIN_TORCH) $(PIN_FBGEMM)
	$(BIN)/python -m pip install -q --no-deps torchrec==1.9.2
	$(BIN)/python -m pip install -q -e ".[$(FBGEMM),test]"
	rm -f $(VENV)/.installed-*
	touch $@

test: venv $(CHROMIUM)
	$(BIN)/python -m pytest -q

# Runs only when /usr/bin/chromium is missing (a file target with no prerequisites).
$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core

demo: venv
	$(BIN)/mmctr pipeline --preset small --out runs/demo

bench: venv
	$(BIN)/python -m bench.loader

# A real public log and a real text encoder, offline: MovieLens-100k as a dataset, its titles
# embedded by all-MiniLM-L6-v2 (README, "A real public log: MovieLens-100k").
real-data: venv $(REAL_STAMP)
	$(BIN)/mmctr import-ml100k --out runs/ml100k/world
	$(BIN)/mmctr validate runs/ml100k/world --quiet
	$(BIN)/mmctr embed-text --world runs/ml100k/world --out runs/ml100k/minilm

$(REAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(PIN_RECBOLE)
	$(BIN)/python -m pip install -q -e ".[$(FBGEMM),test,real]"
	touch $@

clean:
	rm -rf $(VENV) runs
