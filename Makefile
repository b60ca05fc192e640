# promptclimb: every target sets up its own environment (.venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ENV_STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.generated

.PHONY: all env gen test test-fast demo bench clean

all: test

# The CPU build of torch comes first: a plain resolver run would pull the
# multi-GB CUDA build. On a GPU machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
$(ENV_STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing pinned dependencies"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3 || $(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

env: $(ENV_STAMP) $(GEN_STAMP)

# Generated gRPC code lives in gen/ (ignored by git, never edited by hand) and
# reaches the venv through a .pth file.
$(GEN_STAMP): $(PROTOS) $(ENV_STAMP)
	@echo ">> generating gRPC stubs from protos/"
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	$(PY) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "promptclimb_gen.pth").write_text(str(pathlib.Path("gen").resolve()) + "\n")'
	@touch $@

test: env
	$(PY) -m pytest -q

test-fast: env
	$(PY) -m pytest -q -m "not e2e"

demo: env
	$(PY) -m scorer_service.demo

bench: env
	$(PY) -m bench.text_encoder

clean:
	rm -rf gen $(VENV) .pytest_cache
