#!/usr/bin/env python
"""Where runs put their cuts, per layer, side by side; see :mod:`loraprune.cli.cuts`.

python scripts/compare_cuts.py results/compare/mask_fisher_r0.2_s42 results/compare/wanda_sp-budget_r0.2_s42
"""

from loraprune.cli.cuts import main

if __name__ == "__main__":
    raise SystemExit(main())
