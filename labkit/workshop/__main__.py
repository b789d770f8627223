"""``python -m labkit.workshop check FILE...``: see :func:`labkit.workshop.notebook_checks.main`."""

from labkit.workshop.notebook_checks import main

raise SystemExit(main())
