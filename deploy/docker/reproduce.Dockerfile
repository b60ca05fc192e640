# syntax=docker/dockerfile:1
# promptclimb reproduce: `python -m reproduce` (the grid's cells, its gather step, or all of it) on top of
# the scorer image, which has the model stack; used by the Indexed Jobs of deploy/k8s/reproduce.
#
#   docker build -f deploy/docker/reproduce.Dockerfile --build-arg SCORER_IMAGE=promptclimb/scorer:0.1.0 \
#     -t promptclimb/reproduce:0.1.0 .
ARG SCORER_IMAGE=promptclimb/scorer:0.1.0
FROM ${SCORER_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
USER root
# The optimizer runs in-process here: pyproject.toml's [optimizer] requirements at constraints.txt's pins (the
# scorer image has the base and [serving] ones). The CLIP authors' hand-engineered templates (the reference rows):
# data files only, installed without dependencies.
COPY pyproject.toml constraints.txt deploy/docker/optimizer-data-requirements.txt /tmp/reproduce/
RUN python -c "import tomllib; x = tomllib.load(open('/tmp/reproduce/pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(d for d in x['optimizer'] if not d.startswith('promptclimb[')))" > /tmp/reproduce/optimizer-requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/reproduce/optimizer-requirements.txt -c /tmp/reproduce/constraints.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/reproduce/optimizer-data-requirements.txt \
 && rm -r /tmp/reproduce
COPY optimizer_service /app/optimizer_service
COPY reproduce /app/reproduce
USER 10001:10001
# A Job, not a server: the scorer's health check does not apply.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "reproduce"]
CMD ["--help"]
