"""The layers' import contract, read from every module's syntax tree (no module is imported).

features is the bottom layer (shared by training and serving, so it depends on neither, nor on
recsys); recsys is the engine and reaches the applications above it (serving, training) only from
its command line module, which wires them together; serving never imports training, so a server
does not carry the training stack.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("features", "recsys", "serving", "training")

# (importing package, imported package) -> the only modules allowed to make that import
FORBIDDEN: dict[tuple[str, str], frozenset[str]] = {
    ("features", "recsys"): frozenset(),
    ("features", "serving"): frozenset(),
    ("features", "training"): frozenset(),
    ("recsys", "serving"): frozenset({"recsys/cli.py"}),
    ("recsys", "training"): frozenset({"recsys/cli.py"}),
    ("serving", "training"): frozenset(),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, those inside functions and
    `importlib.import_module("...")` calls with a literal name included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            found.append((node.lineno, node.args[0].value))
    return found


def contract_violations(root: Path) -> list[str]:
    """One line per import that breaks the contract: 'file:line imports module'."""
    violations = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for line, target in imported_modules(path, root):
                top = target.split(".")[0]
                allowed = FORBIDDEN.get((layer, top))
                if allowed is not None and relative not in allowed:
                    violations.append(f"{relative}:{line} imports {target}")
    return violations


def test_every_layer_keeps_the_import_contract():
    assert contract_violations(ROOT) == []


def test_the_contract_covers_every_package():
    """A new top-level package would otherwise be outside the contract without anyone noticing."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("layer,source,expected", [
    ("features", "import recsys.atomic_files\n", "features/bad.py:1 imports recsys.atomic_files"),
    ("features", "def f():\n    from serving import main\n", "features/bad.py:2 imports serving"),
    ("serving", "from training.pipeline import train\n",
     "serving/bad.py:1 imports training.pipeline"),
    ("recsys", "import importlib\nimportlib.import_module('training.retrain')\n",
     "recsys/bad.py:2 imports training.retrain"),
    ("features", "from ..recsys import io\n", "features/bad.py:1 imports recsys"),
])
def test_the_check_finds_a_forbidden_import(tmp_path, layer, source, expected):
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / layer / "bad.py").write_text(source)
    assert contract_violations(tmp_path) == [expected]


def test_the_check_allows_the_command_line_module(tmp_path):
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "recsys" / "cli.py").write_text("from serving.main import run\nimport training\n")
    (tmp_path / "serving" / "ok.py").write_text("from recsys.recommender import Recommender\n")
    assert contract_violations(tmp_path) == []
