"""Groundwork for `make demo`: the embedded LLM and the demo data set.

Everything here installs from the package registries (PyPI, Debian), so the
demo runs on a machine with no other network access.
"""
