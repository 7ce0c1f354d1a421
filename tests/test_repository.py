"""The repository's promises to a new user: the README's commands are the ones CI runs."""
from conftest import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if "pytest" in line]
    assert len(ci_command) == 1 and ci_command[0] in readme.splitlines()
    assert "pip install -r requirements.txt && python mnist/run.py --demo" in readme


def test_generated_files_are_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"/data/", "/runs/", "*.pt"} <= set(ignored)
