# Two commands do everything on a fresh machine:
#   make quickstart   create .venv, install, run the quickstart suite on polydigits, print the report
#   make test         create .venv, install, run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch and torchvision must be a matching pair; these are PyPI's default (CUDA) builds, which run on the CPU.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart test report clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/mmbench run suites/quickstart.yaml
	$(BIN)/mmbench report --out report/quickstart.md --plots report/

test: install
	$(BIN)/python -m pytest

report: install
	$(BIN)/mmbench report --compare reference_results/ --allow-missing --out report/report.md

clean:
	rm -rf $(VENV) report build *.egg-info
