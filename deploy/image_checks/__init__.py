"""The parts of `make image-check` (deploy/image_check.py): the build, the manifests' containers, running one,
and the checks."""
