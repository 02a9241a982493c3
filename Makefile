# Two commands do everything on a fresh machine:
#   make quickstart   create .venv, install, run the quickstart suite on polydigits, print the report
#   make test         create .venv, install, run the tests
#   make lock         re-resolve requirements.lock (exact versions + hashes) after editing pyproject.toml
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements.lock
# torch and torchvision must be a matching pair; these are PyPI's default (CUDA) builds, which run on the CPU.
# `make lock` holds them to this pair; every other version comes from the resolver and stays pinned in $(LOCK).
TORCH  := torch==2.14.1 torchvision==0.29.1
# The platform the lock is resolved for (CI and the developers' machines: CPython 3.11, glibc >= 2.28, x86-64).
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: install quickstart test report clean lock

# Exactly the locked versions (hash-checked), then mmbench itself without resolving anything again; the check
# fails the install (and CI) when pyproject.toml was edited without `make lock`.
$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m mmbench.lockfile check $(LOCK)
	touch $(STAMP)

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	printf '%s\n' $(TORCH) > $(VENV)/torch-constraints.txt
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes $(LOCK_PLATFORM) \
		-c $(VENV)/torch-constraints.txt --custom-compile-command 'make lock' --quiet -o $(LOCK)
	$(BIN)/python -m mmbench.lockfile stamp $(LOCK)

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
