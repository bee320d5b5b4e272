"""The house rules as tests: the library knows no screen, layers import only downwards, no import cycles.

Layers in the order data flows (a module may import its own layer and those before it):
files and vocabulary -> imaging -> study (series, geometry) -> models -> inference -> evaluation -> ui.
``train`` may use every layer but ui.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS: tuple[tuple[str, ...], ...] = (
    ("spinecad", "spinecad.atomic", "spinecad.labels", "spinecad.logs", "spinecad.examples"),
    ("spinecad.imaging",),
    ("spinecad.study",),
    ("spinecad.models",),
    ("spinecad.inference",),
    ("spinecad.evaluation",),
    ("spinecad.ui",),
)
PRESENTATION = ("spinecad.ui", "gradio", "plotly")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (a function-level import is still a dependency).

    ``from package import module`` depends on that module, not on the package's ``__init__``.
    """
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {base}
    return found


def import_graph(root: Path, packages: tuple[str, ...] = ("spinecad", "train")) -> dict[str, set[str]]:
    """Module -> every module it imports, for every module of ``root``'s packages."""
    files = {module_name(path, root): path for package in packages for path in (root / package).rglob("*.py")}
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int | None:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "spinecad" and module.startswith(prefix + ".")):
                best = rank
    return best


def rule_breaks(root: Path) -> list[str]:
    """Every import that breaks a house rule, in words."""
    problems = []
    for module, everything in import_graph(root).items():
        own = layer_of(module)
        for target in sorted(everything):
            is_presentation = any(target == p or target.startswith(p + ".") for p in PRESENTATION)
            if module.startswith("train") and is_presentation:
                problems.append(f"{module} imports {target}: train never stands on the presentation")
            if own is None or module.startswith("spinecad.ui"):
                continue
            if is_presentation:
                problems.append(f"{module} imports {target}: the library below spinecad.ui knows no screen")
            elif (rank := layer_of(target)) is not None and target.startswith("spinecad") and rank > own:
                problems.append(f"{module} imports {target}: a layer imports only the layers before it")
    return problems


def cycles(root: Path) -> list[list[str]]:
    """Import cycles among the project's modules (each found once, as a path that returns to its start)."""
    everything = import_graph(root)
    graph = {name: {other for other in deps if other in everything and other != name}
             for name, deps in everything.items()}
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for other in sorted(graph.get(node, ())):
            if state.get(other) == "open":
                found.append([*path[path.index(other):], other] if other in path else [node, other])
            elif other not in state:
                visit(other, [*path, other])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_no_module_breaks_the_layer_rules():
    assert rule_breaks(REPO) == []


def test_there_is_no_import_cycle():
    assert cycles(REPO) == []


def test_the_checks_catch_a_screen_import_a_wrong_way_import_and_a_cycle(tmp_path):
    (tmp_path / "spinecad" / "models").mkdir(parents=True)
    (tmp_path / "train").mkdir()
    for init in ("spinecad/__init__.py", "spinecad/models/__init__.py", "train/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "spinecad" / "models" / "model.py").write_text(
        "import gradio as gr\nfrom spinecad.models import card\nfrom spinecad.evaluation import metrics\n")
    (tmp_path / "spinecad" / "models" / "card.py").write_text("def f():\n    from spinecad.models import model\n")
    (tmp_path / "train" / "cli.py").write_text("from spinecad.ui import charts\n")
    problems = rule_breaks(tmp_path)
    assert any("spinecad.models.model imports gradio" in p for p in problems)
    assert any("spinecad.models.model imports spinecad.evaluation" in p for p in problems)
    assert any("train.cli imports spinecad.ui" in p for p in problems)
    assert cycles(tmp_path) == [["spinecad.models.card", "spinecad.models.model", "spinecad.models.card"]] or \
        cycles(tmp_path) == [["spinecad.models.model", "spinecad.models.card", "spinecad.models.model"]]


def test_the_library_and_train_import_with_gradio_and_plotly_unimportable():
    script = """
import importlib, pkgutil, sys
sys.modules["gradio"] = None  # any import of it now fails
sys.modules["plotly"] = None
import spinecad, train
failed = []
for package in (spinecad, train):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.startswith("spinecad.ui") or module.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(module.name)
        except Exception as error:
            failed.append(f"{module.name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("package", ["spinecad", "train"])
def test_no_module_is_over_four_hundred_lines(package):
    long = {str(path.relative_to(REPO)): n for path in (REPO / package).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
