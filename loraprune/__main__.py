"""``python -m loraprune [overrides]``: the same command as ``loraprune`` (:mod:`loraprune.cli.main`)."""

from loraprune.cli.main import main

if __name__ == "__main__":
    main()
