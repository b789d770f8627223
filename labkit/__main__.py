"""``python -m labkit``: the command line lives in :mod:`labkit.cli`."""

import sys

from labkit.cli import main, parse_number

__all__ = ["main", "parse_number"]

if __name__ == "__main__":
    sys.exit(main())
