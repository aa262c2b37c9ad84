"""The layers hold: the sans-I/O core imports no I/O, and every module documents itself."""

from __future__ import annotations

import ast
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import switchboard

PACKAGE_DIR = Path(switchboard.__file__).parent
CORE_DIR = PACKAGE_DIR / "core"

FORBIDDEN_IN_CORE = frozenset(
    {
        "asyncio",
        "socket",
        "ssl",
        "sqlite3",
        "threading",
        "concurrent",
        "selectors",
        "websockets",
        "uvicorn",
        "fastapi",
        "httpx",
        "redis",
        "asyncpg",
    }
)

CORE_MODULES = ["wire", "rules", "meeting", "records", "tokens", "codes", "limits"]


def all_modules() -> list[tuple[str, Path]]:
    """Every module of the package as (dotted name, file), found without importing it."""
    found: list[tuple[str, Path]] = [("switchboard", PACKAGE_DIR / "__init__.py")]

    def walk(directory: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(directory)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found.append((name, directory / info.name / "__init__.py"))
                walk(directory / info.name, name)
            elif (directory / f"{info.name}.py").is_file() or not (
                directory / f"{info.name}.pyx"
            ).is_file():
                found.append((name, directory / f"{info.name}.py"))
            # else a compiled extension built from a .pyx: see COMPILED_MODULES.

    walk(PACKAGE_DIR, "switchboard")
    return found


MODULES = all_modules()
COMPILED_MODULES = sorted(PACKAGE_DIR.rglob("*.pyx"))
"""Cython sources: checked through the module they build (not Python syntax)."""
CORE_FILES = sorted(p for p in CORE_DIR.glob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                assert node.module is not None
                target = node.module
            names.add(target)
            # ``from . import rules`` imports a module too.
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def test_the_walk_finds_the_package() -> None:
    names = {name for name, _ in MODULES}
    assert {f"switchboard.core.{m}" for m in CORE_MODULES} <= names
    assert {"switchboard.errors", "switchboard.config", "switchboard.store.sqlite"} <= names
    assert len(CORE_FILES) >= len(CORE_MODULES) + 1
    for _, path in MODULES:
        assert path.is_file(), path


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_no_io_by_ast(path: Path) -> None:
    module = "switchboard.core" + ("" if path.stem == "__init__" else f".{path.stem}")
    imports = imported_modules(path, module)
    bad = {name for name in imports if name.split(".")[0] in FORBIDDEN_IN_CORE}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_depends_only_on_core_and_errors(path: Path) -> None:
    """Dependencies point down: the core never reaches up into adapters or the app."""
    module = "switchboard.core" + ("" if path.stem == "__init__" else f".{path.stem}")
    for name in imported_modules(path, module):
        if name.split(".")[0] != "switchboard":
            continue
        assert (
            name == "switchboard.errors"
            or name.startswith("switchboard.errors.")
            or (name == "switchboard.core" or name.startswith("switchboard.core."))
        ), f"{path.name} imports {name}"


def test_errors_module_imports_no_io() -> None:
    # The core imports switchboard.errors, so it is held to the same rule.
    path = PACKAGE_DIR / "errors.py"
    for name in imported_modules(path, "switchboard.errors"):
        assert name.split(".")[0] not in FORBIDDEN_IN_CORE, name
        if name.startswith("switchboard"):
            assert name.startswith("switchboard.core"), name


def test_ast_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    # The checker itself must see every form of import.
    source = (
        "import os\nimport asyncio.events\nfrom concurrent import futures\n"
        "from ..relay import hub\nfrom . import wire\n"
        "def f():\n    import socket\n"
    )
    path = tmp_path / "sample.py"
    path.write_text(source)
    names = imported_modules(path, "switchboard.core.sample")
    assert {"asyncio.events", "concurrent", "socket", "switchboard.relay"} <= names
    assert "switchboard.relay.hub" in names
    assert "switchboard.core.wire" in names


_IMPORT_CHECK = """
import importlib, sys
modules, forbidden = sys.argv[1].split(","), set(sys.argv[2].split(","))
for module in modules:
    importlib.import_module(module)
print(sys.modules["switchboard"].__file__)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


def modules_loaded_by_importing(modules: list[str]) -> list[str]:
    """Import ``modules`` in a fresh interpreter; the forbidden modules that got loaded."""
    # The child must import the very package these tests inspect, whatever the install.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, ",".join(modules), ",".join(FORBIDDEN_IN_CORE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    where, loaded = result.stdout.splitlines()
    assert Path(where).parent == PACKAGE_DIR
    return [m for m in loaded.split(",") if m]


def test_importing_the_core_loads_no_io_modules() -> None:
    loaded = modules_loaded_by_importing([f"switchboard.core.{m}" for m in CORE_MODULES])
    assert loaded == [], f"importing the core loaded {loaded}"


def test_subprocess_check_would_see_a_forbidden_import() -> None:
    # The same harness on an adapter that does use I/O must notice it.
    loaded = modules_loaded_by_importing(["switchboard.core.wire", "switchboard.store.sqlite"])
    assert {"asyncio", "sqlite3", "concurrent"} <= set(loaded)


# --- every module documents itself ---------------------------------------------


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[n for n, _ in MODULES])
def test_module_has_docstring(name: str, path: Path) -> None:
    doc = ast.get_docstring(parse(path))
    assert doc, f"{name} has no module docstring"
    assert len(doc.strip()) >= 10, f"{name} has a token docstring"


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()

    def bind(target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                bind(element)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    bind(target)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                bind(node.target)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return names


def declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, ast.List | ast.Tuple), "__all__ must be a literal list"
            items = []
            for element in value.elts:
                assert isinstance(element, ast.Constant), "__all__ must list strings"
                assert isinstance(element.value, str)
                items.append(element.value)
            return items
    return None


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[n for n, _ in MODULES])
def test_module_has_all_naming_only_defined_names(name: str, path: Path) -> None:
    tree = parse(path)
    exported = declared_all(tree)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}: duplicates in __all__"
    missing = set(exported) - top_level_names(tree)
    assert not missing, f"{name}: __all__ names undefined {sorted(missing)}"


@pytest.mark.parametrize("path", COMPILED_MODULES, ids=lambda p: p.stem)
def test_a_compiled_module_documents_itself_and_has_a_python_twin(path: Path) -> None:
    """A .pyx module has the docstring, __all__ and pure-Python twin the relay falls back to."""
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    name = ".".join(relative.parts)
    twin = path.with_name(f"_pure{path.stem.lstrip('_')}.py")  # _core.pyx: _purecore.py
    assert twin.is_file(), f"{name} has no pure-Python twin {twin.name}"
    source = path.read_text(encoding="utf-8")
    assert source.split("\n", 1)[1].lstrip().startswith('"""'), f"{name} has no module docstring"
    twin_all = declared_all(parse(twin))
    assert twin_all is not None
    found = re.search(r"^__all__ = (\[.*?\])$", source, re.MULTILINE | re.DOTALL)
    assert found is not None, f"{name} has no __all__"
    assert ast.literal_eval(found.group(1)) == twin_all, f"{name}: __all__ differs"
