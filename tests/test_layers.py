"""The package's layers: imports run one way (base <- data <- core <- runs <- analysis, deploy), checked on
every import statement of every module, including the ones inside functions."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qsnn"
# Rank of each layer: a module may import its own layer and lower ranks only. analysis and deploy share a
# rank but are separate: neither imports the other.
RANKS = {"base": 0, "data": 1, "core": 2, "runs": 3, "analysis": 4, "deploy": 4}
NUMPY_ONLY = ("qsnn.deploy.runtime", "qsnn.deploy.bundle_files")  # what a device loads: NumPy and the base only


def layer_of(module):
    """'core', 'data', ... for qsnn.<layer>.x; 'base' for the package's own top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else "base"


def module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path, package=None):
    """Every qsnn module a file imports (absolute names; relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "qsnn"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "qsnn":
                continue
            if base in ("qsnn", *(f"qsnn.{layer}" for layer in RANKS)):  # from qsnn.runs import runlog
                found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((base, node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_sits_in_a_known_layer():
    layers = {p.relative_to(PACKAGE).parts[0] for p in MODULES if len(p.relative_to(PACKAGE).parts) > 1}
    assert layers == set(RANKS) - {"base"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    importer = module_name(path)
    if importer == "qsnn":  # the package's facade: qsnn.main is the entry point each run.py calls, imported lazily
        return
    mine = layer_of(importer)
    wrong = []
    for target, line in imported_modules(path):
        theirs = layer_of(target)
        if target in ("qsnn", "qsnn.main"):
            continue
        if RANKS[theirs] > RANKS[mine] or (RANKS[theirs] == RANKS[mine] and theirs != mine):
            wrong.append(f"line {line}: {importer} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_integer_runtime_imports_numpy_and_the_base_only():
    for name in NUMPY_ONLY:
        path = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
        targets = [t for t, _ in imported_modules(path)]
        assert all(layer_of(t) == "base" or t.startswith("qsnn.deploy.") and t in NUMPY_ONLY for t in targets), targets
        tree = ast.parse(path.read_text())
        top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert "torch" not in top and "brevitas" not in top and "snntorch" not in top


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself: a core module importing qsnn.runs is reported, one in data importing base is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qsnn.runs import runlog\n    from ..errors import UserError\n")
    assert imported_modules(bad, package="qsnn.core") == [("qsnn.runs.runlog", 2), ("qsnn.errors", 3)]
    assert layer_of("qsnn.runs.runlog") == "runs" and layer_of("qsnn.errors") == "base"
    assert layer_of("qsnn.data") == "data" and layer_of("qsnn") == "base"
