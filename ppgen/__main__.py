"""``python -m ppgen`` runs the command-line interface."""

from ppgen.cli import main

raise SystemExit(main())
