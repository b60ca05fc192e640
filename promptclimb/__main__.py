"""`python -m promptclimb`: the `promptclimb` command (promptclimb.cli)."""

from promptclimb.cli import main

raise SystemExit(main())
