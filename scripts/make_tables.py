#!/usr/bin/env python
"""Paper-style tables (and plots) from a multirun directory; see :mod:`loraprune.cli.table`.

python scripts/make_tables.py outputs/multirun/<date>/<time> [--out docs/results.md]
    [--latex docs/results.tex] [--plots docs/plots] [--paper auto|separate|none]
"""

from loraprune.cli.table import main

if __name__ == "__main__":
    raise SystemExit(main())
