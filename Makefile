# The two entry points of the README: `make repro` and `make test`. Each one creates the
# virtual environment on first use, so a fresh clone needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Extra pip options for torch. Where pip would otherwise pick a CUDA build, pass
# TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu" for the CPU build.
TORCH_PIP_OPTIONS ?=
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test clean chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the pinned CPU build, so no CUDA build is downloaded.
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_OPTIONS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The pipeline's stages up to evaluate. The continual-learning benchmark is a stage of its own:
# `dvc repro continual_benchmark`, or plain `dvc repro` for everything.
repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro evaluate

test: install chromium
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# The dashboard test drives Debian's Chromium. As root (as in CI) it is installed when missing;
# other users install it themselves, or the test is skipped (it fails instead when CI=true).
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf $(VENV)
