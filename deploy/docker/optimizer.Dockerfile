# syntax=docker/dockerfile:1
# promptclimb optimizer: LLM-driven prompt search against a scorer; runs persist
# in SQLite under the state dir (/var/lib/promptclimb) and resume on restart.
# No torch: deploy/docker/optimizer-requirements.txt lists what it needs.
#
#   docker build -f deploy/docker/optimizer.Dockerfile -t promptclimb/optimizer:0.1.0 .
#
# The base image is a build argument: any Debian-like image with python (3.11),
# its venv module and groupadd/useradd (make image-check builds from a
# debootstrapped Debian). pip settings may be passed in as build arguments
# (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_CERT); they are unset unless given.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a venv with the optimizer's pinned dependencies, and the stubs ----
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY deploy/docker/optimizer-requirements.txt deploy/docker/optimizer-constraints.txt deploy/docker/optimizer-data-requirements.txt \
     deploy/docker/build-requirements.txt ./deploy/docker/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r deploy/docker/optimizer-requirements.txt -c deploy/docker/optimizer-constraints.txt \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip install --no-deps -r deploy/docker/optimizer-data-requirements.txt \
 && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit('torch must not be in the optimizer image' if importlib.util.find_spec('torch') else 0)" \
 && python -m venv /opt/buildtools \
 && /opt/buildtools/bin/pip install -r deploy/docker/build-requirements.txt
COPY protos ./protos
COPY setup.py ./
# The stubs, by the package's own build hook (setup.py), into /opt/gen.
RUN /opt/buildtools/bin/python -c "import pathlib, setup; setup.compile_protos(pathlib.Path('/opt/gen'))"

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 promptclimb \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin promptclimb \
 && mkdir -p /var/lib/promptclimb && chown 10001:10001 /var/lib/promptclimb
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/gen /app/gen
COPY promptclimb_common /app/promptclimb_common
COPY optimizer_service /app/optimizer_service
COPY deploy/docker/healthcheck.py /app/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    OPTIMIZER_HOST=0.0.0.0 \
    OPTIMIZER_PORT=50052 \
    OPTIMIZER_METRICS_PORT=9102 \
    OPTIMIZER_STATE_DIR=/var/lib/promptclimb \
    HEALTHCHECK_PORT=50052
WORKDIR /app
USER 10001:10001
EXPOSE 50052 9102
VOLUME ["/var/lib/promptclimb"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "optimizer_service"]
CMD ["serve"]
