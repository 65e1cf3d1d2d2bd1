"""Shim: ``python scripts/bench.py ARGS`` is ``loraprune-bench ARGS`` (see loraprune/cli/bench.py)."""

from loraprune.cli.bench import main

if __name__ == "__main__":
    main()
