"""The checks of `make deploy-check` (deploy/check.py), one module per thing checked."""
