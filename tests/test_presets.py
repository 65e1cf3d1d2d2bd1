"""Every preset and every README command composes, validates and runs (issue #9).

The net: every option of every config group (``loraprune/conf/<group>/*.yaml``), every experiment preset
and every ``loraprune ...`` line of the bash blocks of the README and docs/usage.md (sweeps included, so a
new README command is covered without touching this file) is composed, resolved as written (``resolve``:
every check, the model's own config read, no weights) and run for two steps.

- README commands run through the real CLI (``python -m loraprune``), one process per command, a sweep
  with its jobs in that process; the processes run one after another in a background thread from the
  start of the module (``CliLane``), beside the in-process runs. A sweep runs every job, unless it
  evaluates zero-shot or has more than ``MAX_SWEEP_JOBS`` jobs (over 30 s): then its first job.
- An option a README command selects (``eval=paper``, ``logger=wandb``, ``experiment=...``) is run by
  that command; every other option runs in this process (``pipeline.run``), the groups' defaults
  together in one run, ``defaults``. Every job of every experiment's sweep is resolved.
- A model preset too big for the CPU (LLaMA-7B, ...) resolves with ``model.source=shape`` (its known
  geometry, no download); runs use the tiny model in its place.
- A config on ``cuda`` must be refused on a machine without CUDA at the device check: through the CLI,
  exit code 2 and one ``loraprune: error:`` line; it then runs here with ``trainer.device=cpu``.

Test size (``shrink``): the tiny random LLaMA on the CPU (``SHRINK``: 2 steps of 2 × 32 tokens, 2
evaluation windows of 32 tokens, 2 examples per zero-shot task), and, unless the option under test is
the text itself (the ``defaults`` run), the embedded news corpus in place of the embedded Wikipedia
excerpt (same code, a seventh of the text to tokenize). Zero-shot evaluates one task on the pruned model
(``eval.dense=false``; the dense model is evaluated as the pruned one is, and every task is run by
tests/test_zeroshot.py). The hub is replaced by a fixture mirror in the hub's own layout
(:func:`loraprune.data.mirror.write_fixture_mirror`), so LaMini, alpaca, WikiText-2 and PTB go through
the real loading, prompt and tokenizing code; the README's placeholder model directory
(``model.path=/data/my-llama``) becomes a tiny checkpoint saved on disk.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CONF, OFFLINE_ENV, REPO, compose, run_cli
from omegaconf import DictConfig, OmegaConf

from loraprune.data.mirror import MIRROR_ENV, write_fixture_mirror
from loraprune.models import shapes
from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError, RunPlan, resolve

CUDA = torch.cuda.is_available()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "local"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

TINY_MODEL = "model=tiny_llama"  # the test model: every run covers it
SHRINK = (
    "trainer.device=cpu",
    "trainer.steps=2",
    "trainer.batch_size=2",
    "trainer.micro_batch_size=1",
    "data.nsamples=16",
    "data.cutoff_len=32",
    "eval.seq_len=32",
    "eval.max_windows=2",
    "eval.zeroshot.limit=2",
    "prune.prune_freq=1",
    "logger.wandb.mode=disabled",
)
BIG_TEXT, SMALL_TEXT = "wiki_embedded", "news_embedded"
ONE_TASK = "arc_challenge"  # the smallest split: lm-eval builds every document of a task, whatever the limit

# Options that cannot run alone, and what they need: SparseGPT prunes N:M patterns only (its preset says
# so); alone it must be refused with a message that names the fix.
NEEDS = {"method=sparsegpt": (("prune=nm",), "use prune=nm")}

# A README sweep whose jobs evaluate zero-shot, or one of more than MAX_SWEEP_JOBS jobs, takes over 30 s
# even at test size (a job: ~3 s, twice that with lm-eval): it runs one job, the first value of each
# swept key (every job is still listed by Hydra's own sweeper, composed and resolved).
MAX_SWEEP_JOBS = 4


COMMAND_DOCS = ("README.md", "docs/usage.md")  # the README and the usage guide its commands moved to


def readme_commands() -> list[list[str]]:
    """The arguments of every ``loraprune ...`` line in the ``bash`` blocks of :data:`COMMAND_DOCS`
    (comments dropped; a command in both, once)."""
    commands: list[list[str]] = []
    for doc in COMMAND_DOCS:
        in_bash = False
        for line in (REPO / doc).read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_bash = not in_bash and line.strip() == "```bash"
            elif in_bash and line.startswith("loraprune "):
                args = shlex.split(line, comments=True)[1:]
                if args not in commands:
                    commands.append(args)
    return commands


README_COMMANDS = readme_commands()
# The options a README command selects for all its jobs (``group=option``, not swept): it runs them.
README_OPTIONS = {
    arg
    for args in README_COMMANDS
    for arg in args
    if arg.split("=")[0] in (*GROUPS, "experiment") and "," not in arg
}


def default_choices() -> dict[str, str]:
    """Each group's default option, from the root config's defaults list."""
    choices = {}
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, DictConfig):
            choices.update({k: v for k, v in entry.items() if v is not None and "/" not in k})
    return choices


def is_tiny(model_preset: Path) -> bool:
    """A model preset the CPU runs (a tiny random model)."""
    return OmegaConf.load(model_preset).get("source") == "tiny"


def option_cases() -> dict[str, tuple[str, ...]]:
    """The in-process runs: ``defaults`` (every group's default, with its own text), then every option
    no README command runs (a model preset that is not tiny is resolved with its shape instead)."""
    defaults = default_choices()
    cases: dict[str, tuple[str, ...]] = {"defaults": ()}
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            option = f"{group}={path.stem}"
            if defaults.get(group) == path.stem or option == TINY_MODEL or option in README_OPTIONS:
                continue
            if group != "model" or is_tiny(path):
                cases[option] = (option, *NEEDS.get(option, ((), ""))[0])
    return cases


OPTION_CASES = option_cases()
MODEL_PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not is_tiny(p))
RESOLVED: dict[tuple[str, ...], RunPlan] = {}  # each config resolved once (README sweeps repeat presets)
NEEDS_CUDA: set[tuple[str, ...]] = set()  # the configs refused at the device check on this machine


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def test_machine(tmp_path_factory) -> dict[str, str]:
    """The hub mirror and an offline, W&B-less environment for this module (restored after); the CLI
    runs get the same, as a dict. One thread: tiny models only lose time to more."""
    mirror = write_fixture_mirror(tmp_path_factory.mktemp("hub_mirror"))
    env = {
        MIRROR_ENV: str(mirror),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        for var, value in env.items():
            mp.setenv(var, value)
        yield {**OFFLINE_ENV, **env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    """A tiny LLaMA checkpoint (weights, config, tokenizer) in a directory, as ``model.source=hub`` reads."""
    from loraprune.models.loading import TinySpec, load_model

    model, tokenizer = load_model("tiny", tiny=TinySpec(), dtype="float32", device="cpu")
    path = tmp_path_factory.mktemp("hub_dir") / "my-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------ helpers
def jobs_of(args: list[str]) -> list[list[str]]:
    """The override list of every job ``loraprune ARGS`` runs: one without ``-m``; with it, the
    product of the config's ``hydra.sweeper.params`` and the command line, built by Hydra's own sweeper."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from loraprune.config.schema import register_configs

    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if len(overrides) == len(args):
        return [overrides]
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=fixed, return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    swept = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
    return BasicSweeper.split_arguments(swept, None)[0]


def is_placeholder(path: str | None) -> bool:
    """A local model directory (as ``model_location`` tells them from hub ids) that is not there."""
    return bool(path) and path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir()


def check_resolves(overrides, out: Path, local_model: Path) -> RunPlan:
    """``resolve`` of the config as given, its model made readable here (offline): a hub id by its known
    shape, a missing directory (the README's placeholder) by the tiny checkpoint. A CUDA config on a
    machine without CUDA must be refused at the device check; it is then resolved for the CPU."""
    key = tuple(overrides)
    if key in RESOLVED:
        return RESOLVED[key]
    cfg = to_config(compose(*overrides, f"output_dir={out}"))
    if cfg.model.source == "hub" and is_placeholder(cfg.model.path):
        cfg.model.path = str(local_model)
    elif cfg.model.source == "hub" and not Path(cfg.model.path).expanduser().is_dir():
        cfg.model.source = "shape"
    if cfg.trainer.device.startswith("cuda") and not CUDA:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve(cfg)
        cfg.trainer.device = "cpu"
        NEEDS_CUDA.add(key)
    RESOLVED[key] = resolve(cfg)
    return RESOLVED[key]


def shrink(
    plan: RunPlan, *, keep_text: bool = False, device: bool = True, local_model: Path | None = None
) -> list[str]:
    """The overrides that make the config resolved as ``plan`` a test-size run (module docstring)."""
    cfg = plan.cfg
    if cfg.model.source == "tiny":
        out = []
    elif cfg.model.source == "hub":  # a checkpoint directory (the tiny one): run it from there
        out = [f"model.path={cfg.model.path}"]
    elif cfg.trainer.device_map and local_model is not None:  # dispatched by accelerate: a checkpoint
        out = ["model.source=hub", f"model.path={local_model}"]
    else:  # the tiny preset, whatever the command set in model.* after its own model=
        out = [TINY_MODEL, "model.source=tiny"]
    out += [s for s in SHRINK if device or not s.startswith("trainer.device=")]
    if not keep_text:
        if cfg.data.name == BIG_TEXT:
            out.append(f"data.name={SMALL_TEXT}")
        sets = list(dict.fromkeys(SMALL_TEXT if s == BIG_TEXT else s for s in cfg.eval.ppl_sets))
        if sets != list(cfg.eval.ppl_sets):
            out.append(f"eval.ppl_sets=[{','.join(sets)}]")
    tasks = cfg.eval.zeroshot.tasks
    if cfg.eval.zeroshot.enabled:
        out += [f"eval.zeroshot.tasks=[{ONE_TASK if ONE_TASK in tasks else tasks[0]}]", "eval.dense=false"]
    return out


def check_run(run_dir: Path) -> dict:
    """A finished two-step run (none for a retraining-free method): its metrics agree with the config it
    recorded."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = (run_dir / "steps.jsonl").read_text().splitlines()
    assert cfg.trainer.steps == 2
    assert metrics["run"]["steps"] == len(steps) == (2 if cfg.method.finetune else 0)
    for tag in ("dense", "pruned") if cfg.eval.dense else ("pruned",):
        ppl = metrics[tag]["ppl"]
        assert list(ppl) == list(cfg.eval.ppl_sets) and all(math.isfinite(v) and v > 1 for v in ppl.values())
        if cfg.eval.zeroshot.enabled:
            tasks = metrics[tag]["zeroshot"]["tasks"]
            assert list(tasks) == list(cfg.eval.zeroshot.tasks)
            assert all(0 <= t["acc"] <= 1 and t["n"] == cfg.eval.zeroshot.limit for t in tasks.values())
    if cfg.prune.pattern is None:
        assert metrics["params"]["total_after"] < metrics["params"]["total_before"]
    else:
        assert metrics["semistructured"]["pattern"] == cfg.prune.pattern
        assert metrics["semistructured"]["exact"]
    return metrics


def run_in_process(overrides, out: Path, local_model: Path, *, keep_text: bool = False) -> dict:
    """``overrides`` resolved as given, then run at test size through ``pipeline.run``; its metrics."""
    plan = check_resolves(overrides, out.parent / "resolved", local_model)
    run(compose(*overrides, *shrink(plan, keep_text=keep_text, local_model=local_model), f"output_dir={out}"))
    return check_run(out)


def check_device_error(args, tmp_path: Path, env: dict) -> None:
    """``python -m loraprune ARGS`` (a CUDA config, on a machine without CUDA): refused at the device
    check with exit code 2 and one ``loraprune: error:`` line on stderr; no traceback, no run written."""
    out = tmp_path / "refused"
    proc = subprocess.run(
        [sys.executable, "-m", "loraprune", *args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loraprune: error: "), proc.stderr[-3000:]
    assert "CUDA is not available" in lines[0]
    assert not list(out.rglob("metrics.json"))


@dataclass
class ReadmeCommand:
    """A README command at test size: the jobs it runs, the CLI's arguments, where it writes."""

    jobs: list[list[str]]
    cli: list[str]
    out: Path
    device_check: bool  # a CUDA config without CUDA: the CLI must stop at the device check


def readme_command(args: list[str], tmp: Path, local_model: Path) -> ReadmeCommand:
    """Resolve every job of ``loraprune ARGS`` as written, then its test-size CLI arguments."""
    jobs = jobs_of(args)
    plans = [check_resolves(job, tmp / f"job{n}", local_model) for n, job in enumerate(jobs)]
    shrinks = [shrink(plan) for plan in plans]
    extra = [s for s in shrinks[0] if all(s in other for other in shrinks)]
    sweep = "-m" in args or "--multirun" in args
    reduced = sweep and (any(p.cfg.eval.zeroshot.enabled for p in plans) or len(jobs) > MAX_SWEEP_JOBS)
    ran = jobs[:1] if reduced else jobs
    cli = [*args, *(jobs[0] if reduced else []), *extra]  # reduced: the first value of each swept key
    out = tmp / "out"
    if any(tuple(job) in NEEDS_CUDA for job in ran):
        return ReadmeCommand(ran, [a for a in cli if not a.startswith("trainer.device=")], out, True)
    where = [f"hydra.sweep.dir={out}"] if sweep else [f"output_dir={out}", f"hydra.run.dir={tmp}/hydra"]
    return ReadmeCommand(ran, cli + where, out, False)


class CliLane:
    """README commands through the CLI in a background thread, one process at a time, beside the
    in-process runs (each process spends ~10 s of CPU importing torch and transformers: the ten README
    commands are most of this module's time). Configs are composed and resolved in the calling thread
    only; a second process at a time was slower on a busy 2-core machine."""

    def __init__(self, tmp_factory, local_model: Path, env: dict[str, str]):
        self.tmp_factory, self.local_model, self.env = tmp_factory, local_model, env
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraprune-cli")
        self.started: dict[tuple[str, ...], tuple[ReadmeCommand, Future]] = {}

    def start(self, args: list[str]) -> None:
        key = tuple(args)
        if key in self.started:
            return
        tmp = self.tmp_factory.mktemp("readme")
        command = readme_command(args, tmp, self.local_model)
        if command.device_check:
            future = self.pool.submit(check_device_error, command.cli, tmp, self.env)
        else:
            future = self.pool.submit(run_cli, *command.cli, cwd=tmp, env=self.env)
        self.started[key] = command, future

    def result(self, args: list[str]) -> ReadmeCommand:
        """The finished command (its CLI run's assertion errors raised here)."""
        self.start(args)
        command, future = self.started[tuple(args)]
        future.result()
        return command

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def readme_lane(request, tmp_path_factory, local_model, test_machine):
    """Starts the selected README commands when the module starts; a command whose configs fail to
    resolve is left to its own test, which fails there."""
    lane = CliLane(tmp_path_factory, local_model, test_machine)
    for item in request.session.items:
        if item.path == Path(__file__) and item.originalname == "test_readme_command_resolves_and_runs":
            try:
                lane.start(item.callspec.params["args"])
            except (Exception, pytest.skip.Exception, pytest.fail.Exception):
                continue
    yield lane
    lane.close()


# -------------------------------------------------------------------------------------------- tests
def test_the_net_covers_every_option_and_the_readme():
    assert README_COMMANDS and any("-m" in command for command in README_COMMANDS)
    run_here = {o for case in OPTION_CASES.values() for o in case}
    covered = run_here | README_OPTIONS | {TINY_MODEL} | {f"model={m}" for m in MODEL_PRESETS}
    defaults = default_choices()
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            assert f"{group}={path.stem}" in covered or defaults.get(group) == path.stem, path


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_option_resolves_and_runs(case, tmp_path, local_model, test_machine):
    overrides = OPTION_CASES[case]
    if case in NEEDS:  # refused alone, with the fix in the message
        with pytest.raises(ConfigError, match=NEEDS[case][1]):
            check_resolves([case], tmp_path / "alone", local_model)
    plan = check_resolves(overrides, tmp_path / "resolved", local_model)
    if tuple(overrides) in NEEDS_CUDA:  # down to the device check through the CLI, then on the CPU here
        check_device_error([*overrides, *shrink(plan, device=False)], tmp_path, test_machine)
    run_in_process(overrides, tmp_path / "run", local_model, keep_text=case == "defaults")


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_model_preset_resolves_with_its_shape(preset, tmp_path, local_model):
    """A model too big for the CPU: its known shape resolves (geometry, exclusions, parameter count);
    the embedded default also resolves from its own converted config. Runs: the tiny model, above."""
    if compose(f"model={preset}").model.source == "embedded":
        check_resolves([f"model={preset}"], tmp_path, local_model)
    plan = check_resolves([f"model={preset}", "model.source=shape"], tmp_path, local_model)
    config = shapes.shape_config(shapes.shape_of(plan.cfg.model))
    assert plan.geometry.num_layers == config.num_hidden_layers
    assert plan.prunable and plan.params_total > 10**8


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_resolves_every_job_and_runs(experiment, tmp_path, local_model):
    """Every job of the preset's sweep resolves; the preset runs here unless a README command runs it."""
    for n, job in enumerate(jobs_of(["-m", f"experiment={experiment}"])):
        check_resolves(job, tmp_path / f"job{n}", local_model)
    if f"experiment={experiment}" not in README_OPTIONS:
        run_in_process([f"experiment={experiment}"], tmp_path / "run", local_model)


@pytest.mark.parametrize("args", README_COMMANDS, ids=" ".join)
def test_readme_command_resolves_and_runs(args, readme_lane, local_model):
    """Every job resolves as written; the command runs through the CLI at test size (in the lane)."""
    command = readme_lane.result(args)
    if command.device_check:  # the CLI stopped at the device check: the jobs run here, on the CPU
        for n, job in enumerate(command.jobs):
            run_in_process(job, command.out / f"run{n}", local_model)
        return
    runs = sorted(p.parent for p in command.out.rglob("metrics.json"))
    assert len(runs) == len(command.jobs)
    for run_dir in runs:
        check_run(run_dir)
