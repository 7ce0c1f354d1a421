"""pyproject.toml: `pip install .` gives an importable qsnn package with requirements.txt's dependencies.

Offline and in seconds: the sources are copied to a temporary folder (so no build/ or egg-info lands
in the checkout) and installed with --no-deps --no-build-isolation into a --target folder, using the
setuptools of the running environment.

Installed use for real: a wheel built from that copy, and an editable install of the checkout, each go
into a fresh virtual environment (`python -m venv --system-site-packages --without-pip`; the pip it runs
is this environment's). torch and the other dependencies come from the running environment through a
.pth file, so nothing is downloaded; the new environment's own site-packages comes first, so its qsnn is
the one imported. A run.py copied to a temporary folder then runs the demo there.
"""
import json
import os
import shutil
import site
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import ROOT

SOURCES = ["pyproject.toml", "requirements.txt", "README.md", "LICENSE", "qsnn"]


def requirement_lines():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def copy_sources(folder):
    """The files a build reads, copied to folder (so no build/ or egg-info lands in the checkout)."""
    shutil.copytree(ROOT / "qsnn", folder / "qsnn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SOURCES[:-1]:
        shutil.copy2(ROOT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed from a copy of the sources: (target folder, its METADATA headers)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source, target = copy_sources(tmp / "src"), tmp / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, cwd=tmp)
    (metadata,) = target.glob("qsnn-*.dist-info/METADATA")
    return target, Parser().parsestr(metadata.read_text())


def test_wheel_holds_the_package_and_nothing_else(installed):
    target, _ = installed
    top_level = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"qsnn"}
    expected = {p.name for p in (ROOT / "qsnn").glob("*.py")}
    assert {p.name for p in (target / "qsnn").glob("*.py")} == expected


def test_dependencies_are_those_of_requirements_txt(installed):
    _, metadata = installed
    assert metadata["Name"] == "qsnn"
    assert metadata.get_all("Requires-Dist") == requirement_lines()
    assert "torch>=2.2" in metadata.get_all("Requires-Dist")  # a lower bound, no pin


def test_installed_package_imports_outside_the_checkout(installed, tmp_path):
    target, _ = installed
    # -I ignores PYTHONPATH and the current folder; sys.path gets the target in front of site-packages.
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); import qsnn, qsnn.core.models, qsnn.core.loop; "
            "print(qsnn.__file__)")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            check=True)
    assert result.stdout.strip() == str(target / "qsnn" / "__init__.py")


def clean_env():
    """This process's environment without PYTHONPATH or an activated venv, as a fresh shell would have it."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def make_venv(folder):
    """A fresh venv at folder whose dependencies (torch, ...) come from this environment; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)],
                   check=True, env=clean_env())
    python = folder / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
    # Plain path lines: the folders join sys.path after the venv's own, their .pth files are not run
    # (so an editable qsnn of this environment stays out).
    (Path(own) / "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def pip_install(python, *args):
    """Install into the venv of python, offline, without dependencies (its pip is this environment's)."""
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", *args], check=True, env=clean_env())


def run_in(python, folder, *args):
    """Run the venv's python in folder as a user would (no PYTHONPATH); the CompletedProcess."""
    return subprocess.run([str(python), *args], cwd=folder, capture_output=True, text=True,
                          env={**clean_env(), "OMP_NUM_THREADS": "1"}, timeout=300)


def qsnn_seen_by(python, folder):
    """(qsnn.__file__, the base of relative config paths, sys.path) for the venv's python run in folder."""
    code = ("import json, sys, qsnn, qsnn.paths as c; "
            "print(json.dumps([qsnn.__file__, str(c.path_base()), sys.path]))")
    result = run_in(python, folder, "-c", code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_demo(python, folder, *overrides):
    """Copy mnist/run.py into folder and run its demo for one epoch there; the CompletedProcess."""
    shutil.copy2(ROOT / "mnist" / "run.py", folder / "run.py")
    result = run_in(python, folder, "run.py", "--demo", "--epochs", "1", "--device", "cpu", *overrides)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_path_base_is_the_checkout_here_and_the_working_folder_when_installed(monkeypatch, tmp_path):
    from qsnn import paths

    assert paths.from_checkout() and paths.path_base() == ROOT
    assert paths.resolve_path("runs") == ROOT / "runs"
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")  # no pyproject.toml beside qsnn
    monkeypatch.chdir(tmp_path)
    assert not paths.from_checkout()
    assert paths.resolve_path("runs") == tmp_path / "runs"
    assert paths.resolve_path(tmp_path / "abs") == tmp_path / "abs"


def test_installed_wheel_runs_a_copied_run_py_where_it_is_run(tmp_path):
    """`pip install .` then a run.py elsewhere: its run folder lands under the working folder; export works."""
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(wheels), str(copy_sources(tmp_path / "src"))],
                           capture_output=True, text=True, env=clean_env())
    if built.returncode != 0:
        pytest.skip(f"the wheel cannot be built offline here: {built.stderr.strip().splitlines()[-1:]}")
    (wheel,) = wheels.glob("qsnn-*.whl")
    python = make_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    qsnn_file, base, path = qsnn_seen_by(python, work)
    site_packages = Path(qsnn_file).parents[1]
    assert Path(qsnn_file).is_relative_to(tmp_path / "venv") and site_packages.name == "site-packages"
    assert str(ROOT) not in path and not any(Path(p) == ROOT for p in path if p)  # the checkout is not seen
    assert Path(base) == work
    run_demo(python, work, "--output_dir", "runs")
    run_dir = work / "runs" / "digits_4bit_cosine"
    assert (run_dir / "config.json").is_file()
    assert json.loads((run_dir / "config.json").read_text())["config"]["output_dir"] == "runs"
    assert not (site_packages / "runs").exists() and not (site_packages / "data").exists()
    shutil.copy2(ROOT / "export.py", work / "export.py")  # a copy: it imports the installed qsnn
    exported = run_in(python, work, "export.py", "runs/digits_4bit_cosine", "--out", "bundle")
    assert exported.returncode == 0, exported.stderr
    assert (work / "bundle.npz").is_file() and (work / "bundle.json").is_file()


def test_editable_install_imports_the_checkout_and_runs_a_copied_run_py(tmp_path):
    """`pip install -e .`: qsnn comes from the checkout, so relative paths stay from the repository root."""
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", str(ROOT))
    work = tmp_path / "work"
    work.mkdir()
    qsnn_file, base, _ = qsnn_seen_by(python, work)
    assert Path(qsnn_file) == ROOT / "qsnn" / "__init__.py" and Path(base) == ROOT
    run_demo(python, work, "--output_dir", str(tmp_path / "runs"))  # absolute: nothing lands in the checkout
    assert (tmp_path / "runs" / "digits_4bit_cosine" / "config.json").is_file()
