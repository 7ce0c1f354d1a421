"""pyproject.toml: `pip install .` gives an importable qsnn package with requirements.txt's dependencies.

Offline and in seconds: the sources are copied to a temporary folder (so no build/ or egg-info lands
in the checkout) and installed with --no-deps --no-build-isolation into a --target folder, using the
setuptools of the running environment.
"""
import shutil
import subprocess
import sys
from email.parser import Parser

import pytest
from conftest import ROOT

SOURCES = ["pyproject.toml", "requirements.txt", "README.md", "LICENSE", "qsnn"]


def requirement_lines():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed from a copy of the sources: (target folder, its METADATA headers)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source, target = tmp / "src", tmp / "target"
    shutil.copytree(ROOT / "qsnn", source / "qsnn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SOURCES[:-1]:
        shutil.copy2(ROOT / name, source / name)
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
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); import qsnn, qsnn.models, qsnn.train; "
            "print(qsnn.__file__)")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            check=True)
    assert result.stdout.strip() == str(target / "qsnn" / "__init__.py")
