"""The house rules of workbench/: wings import downward only, no import cycle, small modules and functions."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
WINGS = ("utils", "models", "data", "train", "report", "deploy", "plan", "recipe", "bench")  # lower to higher
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # body only: signature and docstring excluded


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The workbench modules `path` imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("workbench"):
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("workbench"))
    return found


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


TOP = ("workbench", "workbench.__main__")  # the public API and its command line, above every wing


def test_every_module_is_in_a_wing():
    loose = [m for m in MODULES if m not in TOP and _wing(m) not in WINGS]
    assert not loose, f"modules outside the wings {WINGS}: {loose}"


def test_wings_import_downward_only():
    upward = [f"{m} -> {d}" for m, path in MODULES.items() if _wing(m) in WINGS for d in _imports(path)
              if _wing(d) in WINGS and WINGS.index(_wing(d)) > WINGS.index(_wing(m))]
    upward += [f"{m} -> workbench" for m, path in MODULES.items()
               if _wing(m) in WINGS[:-1] and "workbench" in _imports(path)]  # the public API is the top
    assert not upward, "a lower wing imports a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = {m: {d for d in _imports(p) if d in MODULES and d != "workbench"} for m, p in MODULES.items()}
    done, cycles = set(), []

    def visit(module, path):
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for dep in graph[module]:
            visit(dep, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            if body:
                yield node.name, node.lineno, body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (at most {MAX_MODULE_LINES}): split it"
    long = [f"{name} (line {line}): {n} lines" for name, line, n in _function_lengths(path) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {long}"


def test_the_rules_see_a_violation(tmp_path):
    """The checks above fire on code that breaks them (so a green run means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from workbench.plan import planner\n" + "    x = 1\n" * 61)
    assert _imports(bad) == {"workbench.plan.planner"}
    assert [n for _, _, n in _function_lengths(bad)] == [62]
    assert WINGS.index(_wing("workbench.plan.planner")) > WINGS.index(_wing("workbench.data.pipeline"))
