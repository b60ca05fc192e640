# syntax=docker/dockerfile:1
# promptclimb scorer: CLIP on a GPU behind gRPC ("templates in, accuracy out").
#
# Build from the repository root:
#   docker build -f deploy/docker/scorer.Dockerfile -t promptclimb/scorer:0.1.0 .
# Bake a model in at build time (the only step that reaches the network; the
# revision must be a commit so the image is reproducible):
#   docker build -f deploy/docker/scorer.Dockerfile \
#     --build-arg MODEL_ID=openai/clip-vit-base-patch32 --build-arg MODEL_REVISION=<commit sha> \
#     -t promptclimb/scorer:0.1.0-vitb32 .
#   (MODEL_ID=random:tiny bakes a random-weight checkpoint, for smoke tests only.)
# Otherwise mount a Hugging Face checkpoint directory at /models/clip (read-only).
#
# The base image is a build argument. The default brings CUDA and torch; its
# torch must be the torch pinned in constraints.txt (the build fails if it is
# not; deploy/check.py checks the tag against the pin). A base without torch
# (any Debian-like image with python 3.11, its venv module and
# groupadd/useradd) takes TORCH_REQUIREMENT=torch==<the pin>, installed into
# the venv; make image-check does this from a debootstrapped Debian with the
# CPU wheel. pip settings may be passed in as build arguments (PIP_INDEX_URL,
# PIP_FIND_LINKS, PIP_CERT); they are unset unless given.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

# ---- build: dependencies into a venv that sees the base image's torch ----
FROM ${PYTORCH_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_REQUIREMENT=""
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv --system-site-packages /opt/venv \
 && if [ -n "${TORCH_REQUIREMENT}" ]; then /opt/venv/bin/pip install "${TORCH_REQUIREMENT}"; fi \
 && /opt/venv/bin/python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else f'torch {v} in the image, constraints.txt pins ${TORCH_VERSION}')"
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY deploy/docker/build-requirements.txt deploy/docker/scorer-data-requirements.txt ./deploy/docker/
# The base and [scorer] requirements of pyproject.toml at constraints.txt's pins, except torch, which the base
# image provides.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(d for d in p['dependencies'] + x['serving'] + x['scorer'] if not d.startswith(('torch', 'promptclimb['))))" > /tmp/scorer-requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/scorer-requirements.txt -c constraints.txt \
 && /opt/venv/bin/pip install --no-deps -r deploy/docker/scorer-data-requirements.txt \
 && python -m venv /opt/buildtools \
 && /opt/buildtools/bin/pip install -r deploy/docker/build-requirements.txt
COPY protos ./protos
COPY setup.py ./
# The stubs, by the package's own build hook (setup.py), into /opt/gen.
RUN /opt/buildtools/bin/python -c "import pathlib, setup; setup.compile_protos(pathlib.Path('/opt/gen'))"

# ---- model: optionally baked in; an empty /models/clip otherwise ----
FROM build AS model
ARG MODEL_ID=""
ARG MODEL_REVISION=""
COPY promptclimb_common /app/promptclimb_common
COPY scorer_service /app/scorer_service
COPY testbed /app/testbed
WORKDIR /app
RUN mkdir -p /models/clip && set -e; \
    case "${MODEL_ID}" in \
      "") echo "no model baked in: mount one at /models/clip" ;; \
      random:*) /opt/venv/bin/python -m testbed.random_clip /models/clip --shape "${MODEL_ID#random:}" ;; \
      *) test -n "${MODEL_REVISION}" || { echo "MODEL_REVISION (a commit sha) is required with MODEL_ID" >&2; exit 1; }; \
         /opt/venv/bin/python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], revision=sys.argv[2], local_dir='/models/clip', allow_patterns=['*.json', '*.txt', '*.safetensors'])" \
           "${MODEL_ID}" "${MODEL_REVISION}" ;; \
    esac

# ---- runtime ----
FROM ${PYTORCH_IMAGE} AS runtime
RUN groupadd --system --gid 10001 promptclimb \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin promptclimb \
 && mkdir -p /var/cache/promptclimb /var/lib/promptclimb \
 && chown 10001:10001 /var/cache/promptclimb /var/lib/promptclimb
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/gen /app/gen
COPY --from=model /models /models
COPY promptclimb_common /app/promptclimb_common
COPY scorer_service /app/scorer_service
# testbed builds the random smoke-test checkpoints (cpu-dev overlay); the scorer never imports it.
COPY testbed /app/testbed
COPY deploy/docker/healthcheck.py /app/healthcheck.py
# Offline at run time: the model comes from /models/clip, never from the hub.
# Writable places are /tmp, the feature cache and the state (evaluation counts);
# the root filesystem can be read-only. Every path is absolute: a relative
# default would land in the read-only /app. It listens on 0.0.0.0, so it refuses
# to start without tokens (SCORER_TOKENS_FILE or PROMPTCLIMB_TOKENS) unless
# SCORER_ALLOW_UNAUTHENTICATED=true says to serve everyone.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    SCORER_HOST=0.0.0.0 \
    SCORER_PORT=50051 \
    SCORER_METRICS_PORT=9101 \
    SCORER_MODEL=/models/clip \
    SCORER_CACHE_DIR=/var/cache/promptclimb \
    SCORER_STATE_DIR=/var/lib/promptclimb \
    HEALTHCHECK_PORT=50051
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9101
VOLUME ["/var/cache/promptclimb", "/var/lib/promptclimb"]
STOPSIGNAL SIGTERM
# Loading the model and encoding the images takes a while on first start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "scorer_service"]
