"""`make reproduce`: the paper's table over a config-driven grid (see grid.py, runner.py, tables.py)."""
