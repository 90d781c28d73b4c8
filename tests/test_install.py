"""A non-editable install: the wheel holds the built-in task YAMLs, and an installed copy finds and runs them."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from retrieval_icl.data.tasks import TASKS_DIR

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"  # hand-made: 40 train and 8 validation reviews


def run(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`args` in `cwd` without PYTHONPATH, so nothing points the child at the checkout; a failure shows its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import setuptools
    from packaging.version import Version

    if Version(setuptools.__version__) < Version("77"):  # pyproject's build requirement; offline, none is fetched
        pytest.skip(f"the offline wheel build uses the installed setuptools {setuptools.__version__}; it needs >= 77")
    """The project's wheel, built offline from a fresh copy of the sources (a build/ left in the checkout by an
    earlier build may still hold files that the package data no longer declares)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "retrieval_icl", src / "retrieval_icl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist"], cwd=tmp)
    (built,) = (tmp / "dist").glob("retrieval_icl-*.whl")
    return built


def running_site_packages() -> list[str]:
    """The site-packages of the interpreter running the tests, where the dependencies are: a venv's own when the tests
    run in one (its base Python has none of them), the system's otherwise, and the user site when it is on."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and Path(site.getusersitepackages()).is_dir():
        dirs.append(site.getusersitepackages())
    return dirs


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """The python of a fresh venv with the wheel installed in it. A .pth file puts the running interpreter's
    site-packages after the venv's own, for the dependencies: a plain path line, so the .pth files there (this
    checkout's editable install among them) are not run and the venv's copy of the package is the one found."""
    tmp = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", tmp / "venv"], cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    own = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).stdout.strip()
    (Path(own) / "running_interpreter.pth").write_text("\n".join(running_site_packages()) + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    return python


def test_the_wheel_holds_every_task_yaml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(TASKS_DIR.glob("*.yaml"))
    assert {p.name for p in shipped} >= {"_base.yaml", "sst2.yaml", "agnews.yaml", "trec.yaml", "mnli.yaml"}
    missing = [p.name for p in shipped if f"retrieval_icl/task_configs/{p.name}" not in names]
    assert not missing, f"task YAMLs not in {wheel.name}: {missing}"


def test_the_installed_copy_lists_the_builtin_tasks(venv, tmp_path):
    code = "import retrieval_icl.data.tasks as t; print(t.__file__); print(t.TASKS_DIR)"
    module, tasks_dir = run([venv, "-c", code], cwd=tmp_path).stdout.split("\n")[:2]
    site = venv.parent.parent / "lib"
    assert Path(module).is_relative_to(site) and Path(tasks_dir).is_relative_to(site), (module, tasks_dir)
    assert not Path(module).is_relative_to(ROOT)
    listed = run([venv, "-m", "retrieval_icl", "tasks"], cwd=tmp_path).stdout
    for name in ("sst2", "agnews", "trec", "mnli"):
        assert f"│ {name} " in listed, listed


@pytest.mark.lm  # the packaged SmolLM2 scores the prompts
def test_the_installed_ricl_compares_on_a_builtin_task(venv, tmp_path):
    config = {"task": "sst2", "data_dir": str(DATA), "n_queries": 8, "k": 2, "batch_size": 8,
              "index_root": str(tmp_path / "index"), "output_dir": str(tmp_path / "out")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    proc = run([venv.parent / "ricl", "compare", "exp.yaml"], cwd=tmp_path, timeout=300)
    assert "knn-seed0" in proc.stdout and "random-seed0" in proc.stdout, proc.stdout
    assert (tmp_path / "out" / "summary.md").is_file()
