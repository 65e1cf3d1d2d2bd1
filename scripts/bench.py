"""Shim: ``python scripts/bench.py ARGS`` is ``loraprune-bench ARGS`` (see loraprune/bench/cli.py)."""

from loraprune.bench.cli import main

if __name__ == "__main__":
    main()
