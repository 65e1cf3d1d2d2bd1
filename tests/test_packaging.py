"""The built wheel is complete and its ``loraprune`` command runs, configs included, outside the repo.

What this checks, and why it is built the way it is:

* The wheel is built with ``pip wheel --no-deps --no-build-isolation`` from a copy of the working tree
  in a temporary directory (version control, build and run folders left out). Building in the checkout
  itself would write ``build/`` and ``*.egg-info`` into a tree other people are editing, and setuptools
  never cleans ``build/lib``: a module deleted from the source would still ship from a stale build.
* The wheel must hold every file of the package directory (all modules of every subpackage, all config
  YAML, the reference JSON). A directory with Python files but no ``__init__.py`` is reported on its
  own: ``packages.find`` (``include = ["loraprune*"]``) does not see it, so it would be left out.
* The wheel is installed with ``--no-deps`` into a fresh venv made with ``--system-site-packages``, so
  torch, transformers, hydra... come from the outer environment and nothing is downloaded (the venv is
  made ``--without-pip``; the outer pip installs into it with ``--python``, which saves most of the
  time ``ensurepip`` takes). When the outer environment is itself a venv its site-packages are added
  through a ``.pth`` file, since ``--system-site-packages`` only reaches the base interpreter's.
* The outer environment normally has loraprune installed *editable*. setuptools' editable install
  puts an ``_EditableFinder`` on ``sys.meta_path`` from a ``__editable__.loraprune-*.pth`` file in the
  outer site-packages, and ``--system-site-packages`` runs that ``.pth`` in the venv too. The finder sits
  after the normal ``PathFinder``, so ``import loraprune`` does find the venv's copy first, but any
  submodule *missing* from the wheel falls through to the finder and is loaded from the repo: a wheel
  without ``loraprune/core`` still "works" (tried: ``loraprune.core.__file__`` was the repo's).
  ``python -I`` does not help (it ignores ``PYTHON*`` variables and the user site, not ``.pth`` files),
  no environment variable turns the finder off, and ``python -S`` drops the outer site-packages (and
  torch with it) and cannot be used with the console script. What works: the ``.pth`` line is
  ``import __editable___loraprune_<ver>_finder; ...install()``, resolved on ``sys.path``, where the
  venv's site-packages comes first; a module of that name in the venv that does nothing shadows the
  outer one, so the finder is never installed in the venv. The probe then asserts that no editable
  finder is on ``sys.meta_path`` and that ``loraprune`` resolves to the venv's site-packages
  (``importlib.util.find_spec(...).origin``: the ``__file__`` that ``import loraprune`` would get, without
  the seconds-long import of torch). Submodules are found through ``loraprune.__path__``, the venv's
  directory, so with the finder gone every ``loraprune.*`` module the run imports comes from the wheel.
* The console script runs from a temporary working directory outside the repo, offline, with
  ``debug=tiny``; it must exit 0 and write ``metrics.json``, which also shows that Hydra found the
  configs inside the installed package.
* The configs have one source: ``loraprune/conf`` (shipped in the wheel as package data); ``conf`` at the
  top of the repository is a link to it. ``loraprune --help`` lists the config groups Hydra resolves:
  the editable install, the installed wheel and a user's ``--config-dir`` (a copy of ``conf/`` with one
  preset added) must list the same ones.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "loraprune"
TOP_CONF = REPO / "conf"
SUBPACKAGES = ("core", "criteria", "data", "evaluation", "pruners", "report", "run")
NOT_SOURCE = (
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "outputs",
    "multirun",
    "wandb",
    ".venv",
    ".pytest_cache",
    ".ruff_cache",
)
FINDER_STUB = (
    '"""Stands in for the outer editable finder of loraprune (see tests/test_packaging.py)."""\n\n\n'
    "def install():\n    pass\n"
)

PROBE = """
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("loraprune")
print(json.dumps({
    "origin": spec.origin,
    "purelib": sysconfig.get_paths()["purelib"],
    "meta_path": [repr(f) for f in sys.meta_path],
}))
"""


def _config_groups(help_text: str) -> dict[str, list[str]]:
    """The ``== Configuration groups ==`` section of ``loraprune --help``: group -> its options."""
    section = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {}
    for line in section.splitlines():
        if (m := re.fullmatch(r"([\w/]+): (.+)", line.strip())) is not None:
            groups[m.group(1)] = m.group(2).split(", ")
    assert groups, help_text[:2000]
    return groups


def _help_groups(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    return _config_groups(_run([*command, "--help"], cwd=cwd, env=env or _clean_env(), timeout=120).stdout)


@pytest.fixture(scope="module")
def editable_groups(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The groups ``python -m loraprune --help`` lists from this checkout (the editable install)."""
    return _help_groups([sys.executable, "-m", "loraprune"], cwd=tmp_path_factory.mktemp("editable"))


def test_top_level_conf_is_the_package_conf(editable_groups: dict[str, list[str]]):
    assert TOP_CONF.is_symlink() and TOP_CONF.resolve() == (PACKAGE / "conf").resolve()
    assert os.readlink(TOP_CONF) == "loraprune/conf"  # relative: the link survives a moved checkout
    for group in (d for d in TOP_CONF.iterdir() if d.is_dir() and d.name != "hydra"):
        options = sorted(p.stem for p in group.glob("*.yaml"))
        assert editable_groups[group.name] == options, group.name


def test_a_user_config_dir_resolves_the_same_groups(editable_groups, tmp_path: Path):
    user = tmp_path / "myconf"
    shutil.copytree(TOP_CONF, user)  # a user's copy of conf/, one preset added
    (user / "model" / "my_model.yaml").write_text((TOP_CONF / "model" / "tiny_llama.yaml").read_text())
    got = _help_groups([sys.executable, "-m", "loraprune", "--config-dir", str(user)], cwd=tmp_path)
    assert got == {**editable_groups, "model": sorted([*editable_groups["model"], "my_model"])}


def _package_files() -> set[str]:
    """Every file the package directory holds, as wheel names (``loraprune/...``)."""
    return {
        p.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and not any(part.startswith(".") for part in p.relative_to(PACKAGE).parts)
    }


def _clean_env(**extra: str) -> dict[str, str]:
    """The current environment without anything that would point Python at the repo."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return {**env, **extra}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the working tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        env=_clean_env(),
    )
    (whl,) = (tmp / "dist").glob("loraprune-*.whl")
    return whl


def test_wheel_ships_every_package_file(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "loraprune/conf/config.yaml" in names
    assert {f"loraprune/{sub}/__init__.py" for sub in SUBPACKAGES} <= names
    no_init = sorted(
        d.relative_to(REPO).as_posix()
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir()
        and "__pycache__" not in d.parts
        and any(d.glob("*.py"))
        and not (d / "__init__.py").is_file()
    )
    assert not no_init, f"Python files in directories without __init__.py (not packaged): {no_init}"
    source_yaml = {n for n in _package_files() if n.startswith("loraprune/conf/") and n.endswith(".yaml")}
    wheel_yaml = {n for n in names if n.startswith("loraprune/conf/") and n.endswith(".yaml")}
    assert wheel_yaml == source_yaml
    top_yaml = {f"loraprune/conf/{p.relative_to(TOP_CONF).as_posix()}" for p in TOP_CONF.rglob("*.yaml")}
    assert wheel_yaml == top_yaml  # the top-level conf/ is what ships
    missing = sorted(_package_files() - names)
    assert not missing, f"in loraprune/ but not in the wheel (package-data in pyproject.toml?): {missing}"


def _block_outer_editable_finders(venv_site: Path) -> list[str]:
    """Shadow the outer editable install's finder modules inside the venv; returns their names."""
    outer = [Path(d) for d in [*site.getsitepackages(), site.getusersitepackages()]]
    blocked = []
    for pth in (p for d in outer if d.is_dir() for p in d.glob("__editable__*loraprune*.pth")):
        for line in pth.read_text().splitlines():
            if m := re.match(r"import\s+(\w+)", line):
                (venv_site / f"{m.group(1)}.py").write_text(FINDER_STUB)
                blocked.append(m.group(1))
    return blocked


def _make_venv(root: Path, wheel: Path) -> tuple[Path, Path]:
    """A venv over the outer site-packages with the wheel installed; returns (bin dir, site-packages)."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=_clean_env()
        ).stdout.strip()
    )
    if sys.prefix != sys.base_prefix:  # the outer environment is a venv: reach its packages too
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        (purelib / "_outer_env.pth").write_text("\n".join(lines) + "\n")
    _block_outer_editable_finders(purelib)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        env=_clean_env(),
    )
    return bindir, purelib


def test_installed_wheel_runs_outside_the_repo(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory, editable_groups: dict[str, list[str]]
):
    tmp = tmp_path_factory.mktemp("installed")
    bindir, purelib = _make_venv(tmp, wheel)
    cwd = tmp / "cwd"
    cwd.mkdir()
    env = _clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    probe = json.loads(_run([str(bindir / "python"), "-c", PROBE], cwd=cwd, env=env).stdout)
    assert Path(probe["origin"]).resolve() == (purelib / "loraprune" / "__init__.py").resolve()
    assert Path(probe["purelib"]).resolve() == purelib.resolve()
    assert not [f for f in probe["meta_path"] if "loraprune" in f], probe["meta_path"]

    entry_points = configparser.ConfigParser()
    with zipfile.ZipFile(wheel) as zf:
        (ep,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points.read_string(zf.read(ep).decode())
    scripts = set(entry_points["console_scripts"])
    assert "loraprune" in scripts
    assert all((bindir / script).is_file() for script in scripts), sorted(scripts)
    assert _help_groups([str(bindir / "loraprune")], cwd=cwd, env=env) == editable_groups
    out = tmp / "run"
    _run([str(bindir / "loraprune"), "debug=tiny", f"output_dir={out}"], cwd=cwd, env=env, timeout=300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["ppl"]
