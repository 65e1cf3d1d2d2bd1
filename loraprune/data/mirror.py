"""A local mirror of the hub datasets: the real loading code runs, only the download is replaced.

Point loraprune at a mirror with the environment variable ``LORAPRUNE_HUB_MIRROR=/path`` or the
``mirror=`` parameter of the loading functions (the run passes the config field ``data.mirror``); the
parameter wins over the variable. With a mirror in effect every hub set (``wikitext2``, ``ptb``,
``lamini``, ``alpaca``) is read from it and never from the network; a set missing from the mirror is an
error that names the folder expected and the command that fills it.

Layout: ``<mirror>/<repo id>/<config>/<split>/NNNN.parquet``, the layout of the hub's own parquet export
(git branch ``refs/convert/parquet``), which exists for every public dataset, including those whose
main branch is a loading script (PTB). One command per set therefore makes a mirror::

    huggingface-cli download MBZUAI/LaMini-instruction --repo-type dataset \\
        --revision refs/convert/parquet --include "default/train/*" \\
        --local-dir $LORAPRUNE_HUB_MIRROR/MBZUAI/LaMini-instruction
    # yahma/alpaca-cleaned: "default/train/*"; Salesforce/wikitext: "wikitext-2-raw-v1/test/*";
    # ptb-text-only/ptb_text_only: "penn_treebank/validation/*"

(``hf download`` with the same arguments on newer ``huggingface_hub``). ``datasets`` reads such a folder
natively: ``load_dataset(<mirror>/<repo id>, data_dir=<config>, split=<split>)`` finds the split from the
folder name, and ``.jsonl`` / ``.json`` / ``.csv`` files in the same place work as well as parquet. A
snapshot of a repository's main branch (no ``--revision``) works too, except PTB's (a loading script):
wikitext's has the ``<config>/`` folder, and for one without it (LaMini's ``data/train-*.parquet``,
alpaca's single JSON file) ``load_dataset(<mirror>/<repo id>, <config>, split=<split>)`` follows the
repository's README configs and file names, as on the hub. The older ids ``wikitext`` and
``ptb_text_only`` are accepted as folder names as well.

:func:`write_fixture_mirror` writes a small mirror of all four sets (a few dozen records each) for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraprune.data.errors import first_line
from loraprune.data.hub import EVAL_HUB_SOURCES, INSTRUCTION_HUB_SOURCES, HubSource

MIRROR_ENV = "LORAPRUNE_HUB_MIRROR"
"""Environment variable naming the mirror folder (used when no ``mirror=`` is passed)."""

MirrorPath = str | os.PathLike[str] | None
"""A mirror folder argument: None (or ``""``) means ``$LORAPRUNE_HUB_MIRROR``, then the hub."""


def mirror_root(mirror: MirrorPath = None) -> Path | None:
    """The mirror folder in effect: ``mirror`` if given, else ``$LORAPRUNE_HUB_MIRROR``, else None (the hub).

    An empty string counts as not given.

    Raises:
        ValueError: The folder named does not exist.
    """
    origin = "mirror="
    if mirror is None or not str(mirror).strip():
        mirror, origin = os.environ.get(MIRROR_ENV, ""), MIRROR_ENV
    if not str(mirror).strip():
        return None
    root = Path(mirror).expanduser()
    if not root.is_dir():
        raise ValueError(f"hub mirror {root} (from {origin}) is not a directory")
    return root


def download_command(source: HubSource, root: Path | str, split: str | None = None) -> str:
    """The ``huggingface-cli`` command that puts ``source``'s split into the mirror at ``root``."""
    include = f"{source.export_config}/{split or source.split}/*"
    return (
        f"huggingface-cli download {source.path} --repo-type dataset --revision refs/convert/parquet "
        f'--include "{include}" --local-dir {Path(root) / source.path}'
    )


def mirror_repo_dir(source: HubSource, root: Path) -> Path:
    """The folder of ``source`` in the mirror (its repository id, or an older alias).

    Raises:
        ValueError: The mirror has no folder for ``source``.
    """
    for repo_id in (source.path, *source.aliases):
        if (root / repo_id).is_dir():
            return root / repo_id
    raise ValueError(
        f"hub mirror {root} has no copy of {source.path} (expected "
        f"{root / source.path / source.export_config / source.split}/*.parquet); "
        f"fetch it with: {download_command(source, root)}"
    )


def _layout(source: HubSource, repo: Path) -> tuple[Path, dict[str, Any]]:
    """The folder holding the split files and the ``load_dataset`` arguments that select the config."""
    export_dir = repo / source.export_config
    if export_dir.is_dir():
        return export_dir, {"data_dir": source.export_config}
    return repo, {"name": source.config}


def check_mirror(source: HubSource, root: Path, split: str | None = None) -> None:
    """Cheap check that the mirror at ``root`` holds ``split`` of ``source`` (lists files, reads none).

    Raises:
        ValueError: No folder for the set, or no data files for the split.
    """
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    split = split or source.split
    data_dir, _ = _layout(source, mirror_repo_dir(source, root))
    try:
        found = sorted(str(s) for s in get_data_patterns(str(data_dir)))
    except EmptyDatasetError:
        found = []
    if split not in found:
        raise ValueError(
            f"mirror copy of {source.path} at {data_dir} has no {split!r} split "
            f"(found: {', '.join(found) or 'no data files'}); fetch it with: "
            f"{download_command(source, root, split)}"
        )


def load_from_mirror(source: HubSource, root: Path, split: str | None = None) -> Any:
    """``split`` of ``source`` read from the mirror with ``datasets.load_dataset`` (a ``datasets.Dataset``).

    Raises:
        ValueError: The set or split is missing from the mirror, or its files cannot be read.
    """
    import datasets

    check_mirror(source, root, split)
    repo = mirror_repo_dir(source, root)
    _, kwargs = _layout(source, repo)
    try:
        return datasets.load_dataset(str(repo), split=split or source.split, **kwargs)
    except Exception as exc:  # a broken copy: say where, in one line
        raise ValueError(
            f"cannot read the mirror copy of {source.path} at {repo}: {first_line(exc)}"
        ) from exc


# ----------------------------------------------------------------------------------- fixture mirror
def _write_parquet(path: Path, rows: list[dict[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def split_file(root: Path | str, source: HubSource, split: str | None = None) -> Path:
    """Where the mirror layout puts the first file of ``split`` of ``source``."""
    return Path(root) / source.path / source.export_config / (split or source.split) / "0000.parquet"


def write_fixture_mirror(path: Path | str) -> Path:
    """Write a small mirror of the four hub sets at ``path`` in the layout above; returns ``path``.

    Contents: LaMini (train; ``instruction``, ``response``, ``instruction_source``) and alpaca-cleaned
    (train; ``output``, ``input``, ``instruction``), 24 records each, a third of alpaca's with an input;
    WikiText-2 raw (test: three short articles in WikiText rows; train: a few rows); PTB text only
    (validation: 40 sentences; test: 8; ``sentence``) from the Lee news corpus shipped in gensim.
    """
    from loraprune.data.embedded_corpora import NEWS_FILE, gensim_test_data_dir
    from loraprune.data.fixture_records import (
        ALPACA_RECORDS,
        LAMINI_RECORDS,
        WIKITEXT_ARTICLES,
        ptb_sentences,
        wikitext_rows,
    )

    root = Path(path)
    wikitext, ptb = EVAL_HUB_SOURCES["wikitext2"], EVAL_HUB_SOURCES["ptb"]
    _write_parquet(split_file(root, INSTRUCTION_HUB_SOURCES["lamini"]), LAMINI_RECORDS)
    _write_parquet(split_file(root, INSTRUCTION_HUB_SOURCES["alpaca"]), ALPACA_RECORDS)
    test_rows = wikitext_rows(WIKITEXT_ARTICLES)
    _write_parquet(split_file(root, wikitext), [{"text": t} for t in test_rows])
    train_rows = wikitext_rows(WIKITEXT_ARTICLES[-1:])
    _write_parquet(split_file(root, wikitext, "train"), [{"text": t} for t in train_rows])
    documents = (gensim_test_data_dir() / NEWS_FILE).read_text(encoding="utf-8").splitlines()
    sentences = ptb_sentences(documents, 48)
    _write_parquet(split_file(root, ptb), [{"sentence": s} for s in sentences[:40]])
    _write_parquet(split_file(root, ptb, "test"), [{"sentence": s} for s in sentences[40:]])
    return root
