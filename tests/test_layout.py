"""The package's shape: layers import downward only, every module has its tests, and code stays readable.

These are the house rules of DESIGN.md and issue 19, checked on the source so that a change that
breaks one fails here with the file and line to fix.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ulmed"

#: Layers from the bottom up; a module may import its own layer and those below it.
LAYERS: dict[str, int] = {
    "errors": 0, "choices": 0,
    "io": 1,
    "core": 2,
    "baselines": 3, "medical": 3, "segmentation": 3,
    "eval": 4,
    "pipeline": 5,
    "api": 6, "cli": 6, "cli_argv": 6, "__init__": 6, "__main__": 6,
}

#: Modules whose tests live in a file not named after them: module -> the test file that covers it.
COVERED_BY: dict[str, str] = {
    "ulmed/__main__.py": "tests/test_cli.py",  # test_version runs python -m ulmed
}

#: The bar of issue 19; typer commands take one parameter per command-line option.
MAX_LINES, MAX_PARAMS, MAX_MODULE_LINES = 60, 10, 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _ulmed_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, first part below ulmed)`` of every top-level and function-level ulmed import."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ulmed" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layers_import_downward_only(path):
    own = LAYERS[_layer(path)]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    upward = [(line, name) for line, name in _ulmed_imports(tree) if LAYERS.get(name, 0) > own]
    assert not upward, f"{path.relative_to(ROOT)} imports from a higher layer: {upward}"


def test_every_module_has_a_test_file():
    missing = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" or rel in COVERED_BY:
            continue
        sub = path.relative_to(PACKAGE).parent
        if not (ROOT / "tests" / sub / f"test_{path.stem}.py").exists():
            missing.append(rel)
    assert not missing, f"modules without tests/<subpackage>/test_<module>.py (or an entry in COVERED_BY): {missing}"
    for module, test in COVERED_BY.items():
        assert (ROOT / module).exists() and (ROOT / test).exists(), (module, test)


def _is_typer_command(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in node.decorator_list)


def test_functions_and_modules_stay_small():
    too_big = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            args = node.args
            params = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
            if args.args and args.args[0].arg in ("self", "cls"):
                params -= 1
            if lines > MAX_LINES:
                too_big.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
            if params > MAX_PARAMS and not _is_typer_command(node):
                too_big.append(f"{rel}:{node.lineno} {node.name}: {params} parameters")
    bar = "functions <= 60 lines, <= 10 parameters; modules <= 400 lines"
    assert not too_big, f"over the bar ({bar}): " + "; ".join(too_big)


def test_the_layout_rules_catch_a_violation(tmp_path):
    bad = "from ulmed.pipeline.protect import protect_path\n\n\ndef f(a, b, c, d, e, f, g, h, i, j, k):\n    pass\n"
    tree = ast.parse(bad)
    assert _ulmed_imports(tree) == [(1, "pipeline")] and LAYERS["pipeline"] > LAYERS["io"]
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert len(fn.args.args) == 11 and not _is_typer_command(fn)
